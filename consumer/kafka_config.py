"""aiokafka connection options from settings (bootstrap, TLS, SASL).

A copy of ``producer/kafka_config.py``'s function: the consumer must not import the producer
package (DESIGN: parts and their rooms), and the function is too small to earn a shared module.
"""

from __future__ import annotations

import ssl
from typing import Any

from schemas.settings import Settings


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context()
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options
