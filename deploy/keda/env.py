"""``Settings`` → ``BRIGADE_*`` container env: names derived from the settings fields, never typed by hand.

Deriving the name from the field is what keeps the manifests, docker-compose and the README on one
vocabulary: a renamed setting breaks rendering here instead of silently shipping a variable nobody reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kubernetes.client import V1EnvVar, V1EnvVarSource, V1SecretKeySelector

from schemas.settings import PER_CLASS_FIELDS, Settings, class_env_name

# Read by both sides: the wire names, the class table, the model and the limits it enforces.
COMMON_FIELDS = (
    "kafka_bootstrap",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_idempotence",
    "namespace",
    "redis_url",
    "redis_cluster",
    "stream_ttl_s",
    "session_ttl_s",
    "classes",
    "class_max_cost",
    "class_partitions",
    "class_max_lag",
    "model",
    "max_prompt_tokens",
    "max_new_tokens_limit",
    "log_level",
    "log_format",
)
INGRESS_FIELDS = ("host", "port", "request_timeout_s")
WORKER_FIELDS = (
    "device",
    "max_batch_size",
    "max_batch_wait_ms",
    "queue_size",
    "drain_timeout_s",
    "metrics_port",
)
# Never rendered as literals: they come from the Kafka Secret.
SECRET_FIELDS = {"kafka_sasl_username": "username", "kafka_sasl_password": "password"}


def env_name(field: str) -> str:
    """``kafka_bootstrap`` → ``BRIGADE_KAFKA_BOOTSTRAP``; unknown fields raise, so typos cannot render.

    Per-class families have no variable of their own: ``class_env_name`` names their members.
    """
    if field not in Settings.model_fields or field in PER_CLASS_FIELDS:
        raise KeyError(f"{field!r} is not a Settings field")
    return f"BRIGADE_{field.upper()}"


def env_value(value: object) -> str:
    """A settings value as the string pydantic-settings parses back: comma lists, lower-case booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(env_value(v) for v in value)
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)


def literal_env(settings: Settings, fields: Iterable[str]) -> list[V1EnvVar]:
    """One ``V1EnvVar`` per field, skipping unset optionals (None) so the default applies in the pod."""
    out = []
    for field in fields:
        value = getattr(settings, field)
        if value is None:
            continue
        out.append(V1EnvVar(name=env_name(field), value=env_value(value)))
    return out


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def secret_env(settings: Settings, secret: str) -> list[V1EnvVar]:
    """SASL credentials from the Kafka Secret (the same keys KEDA's TriggerAuthentication reads)."""
    if not uses_sasl(settings):
        return []
    return [
        V1EnvVar(
            name=env_name(field),
            value_from=V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name=secret, key=key)),
        )
        for field, key in SECRET_FIELDS.items()
    ]


def class_model_env(settings: Settings, classes: Iterable[str]) -> list[V1EnvVar]:
    """``BRIGADE_CLASS_<NAME>_MODEL`` for each class, resolved (its own model or ``BRIGADE_MODEL``).

    Rendered even where it equals ``BRIGADE_MODEL``, so a manifest says which model each class serves.
    """
    return [V1EnvVar(name=class_env_name(c, "class_models"), value=settings.model_for(c)) for c in classes]


def ingress_env(settings: Settings, *, secret: str) -> list[V1EnvVar]:
    """The ingress counts tokens and routes by every class's model, so it gets them all."""
    common = literal_env(settings, (*COMMON_FIELDS, *INGRESS_FIELDS))
    return common + class_model_env(settings, settings.classes) + secret_env(settings, secret)


def topics_env(settings: Settings, *, secret: str) -> list[V1EnvVar]:
    """``brigade topics create`` needs the broker, the namespace and the class table: the fields both sides read."""
    return literal_env(settings, COMMON_FIELDS) + secret_env(settings, secret)


def worker_env(settings: Settings, *, cost_class: str, model_cache_dir: str, secret: str) -> list[V1EnvVar]:
    """The worker's env; its class, its class's model (and device, if the class has its own) and the cache dir
    are per Deployment."""
    pinned = [
        V1EnvVar(name=env_name("worker_class"), value=cost_class),
        *class_model_env(settings, (cost_class,)),
        V1EnvVar(name=env_name("model_cache_dir"), value=model_cache_dir),
    ]
    if cost_class in settings.class_devices:
        pinned.append(V1EnvVar(name=class_env_name(cost_class, "class_devices"), value=settings.device_for(cost_class)))
    return literal_env(settings, (*COMMON_FIELDS, *WORKER_FIELDS)) + pinned + secret_env(settings, secret)
