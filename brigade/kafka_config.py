"""aiokafka connection options from settings (bootstrap, TLS, SASL): one definition for the ingress and the workers.

``check_kafka`` authenticates once at start-up. aiokafka's bootstrap logs refused SASL credentials and then
reports the broker unreachable, so the clients would retry for ever and a typo in a password would look like an
outage; a broker that answers SCRAM with an RFC 5802 error (Tansu) makes it raise ``KeyError`` instead. Either
way it is a wrong setting, and the process ends naming it (``brigade.config_error``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from brigade.config_error import ConfigurationError
from schemas.settings import Settings

log = logging.getLogger(__name__)


class KafkaCredentialsRejected(ConfigurationError):
    """The broker refused the SASL user or password: retrying would only repeat it."""

    variable = "BRIGADE_KAFKA_SASL_USERNAME, BRIGADE_KAFKA_SASL_PASSWORD"


class KafkaMechanismUnsupported(ConfigurationError):
    """The broker does not offer ``BRIGADE_KAFKA_SASL_MECHANISM``."""

    variable = "BRIGADE_KAFKA_SASL_MECHANISM"


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


async def check_kafka(settings: Settings, *, timeout_s: float = 5.0) -> None:
    """With SASL on, authenticate once to the first bootstrap server; raise if it refuses the credentials.

    Nothing to check without SASL. An unreachable broker is logged and start-up goes on: the ingress answers
    503 and the worker retries until it is back.
    """
    if settings.kafka_sasl_mechanism is None:
        return
    host, port, _ = collect_hosts(settings.kafka_bootstrap, randomize=False)[0]
    options = kafka_client_options(settings)
    del options["bootstrap_servers"]
    who = f"user {settings.kafka_sasl_username!r} with {settings.kafka_sasl_mechanism} at {host}:{port}"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **options), timeout_s
        )
    except SaslAuthenticationFailed as exc:
        raise KafkaCredentialsRejected(f"the broker refused {who} ({exc}): check the user and the password") from None
    except KeyError:
        # aiokafka's SCRAM reads the server's final message as "v=<signature>"; a broker that answers with an
        # RFC 5802 error ("e=...") instead, as Tansu does, refused the proof, i.e. the password.
        raise KafkaCredentialsRejected(
            f"the broker refused {who} (no server signature in its final SCRAM message): check the user and "
            "the password"
        ) from None
    except UnsupportedSaslMechanismError as exc:
        raise KafkaMechanismUnsupported(
            f"the broker at {host}:{port} does not offer {settings.kafka_sasl_mechanism} ({exc}): use one it "
            "lists (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
        ) from None
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("kafka unreachable at start-up; SASL credentials not checked", extra={"error": repr(exc)})
        return
    conn.close()
