"""``BRIGADE_*`` environment variables, read once into one typed object and passed in.

Nothing else in brigade reads the environment. Validation errors name the variable and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.costs import CostClass, validate_classes
from schemas.naming import DEFAULT_NAMESPACE, Names

CommaList = Annotated[tuple[str, ...], NoDecode]
CommaInts = Annotated[tuple[int, ...], NoDecode]


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Every knob of the fleet. Documented, one row each, in the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="BRIGADE_", extra="ignore", frozen=True)

    # --- Kafka ---
    kafka_bootstrap: str = "localhost:9092"
    kafka_idempotence: bool = True  # on for real Kafka; the dev broker (Tansu) lacks InitProducerId
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=r"^[a-z0-9][a-z0-9_\-]*$")

    # --- Redis ---
    redis_url: str = "redis://localhost:6379/0"
    stream_ttl_s: int = Field(default=3600, ge=1)  # a response stream expires this long after its last event
    session_ttl_s: int = Field(default=1800, ge=1)

    # --- cost classes ---
    classes: CommaList = ("small", "medium", "large")
    class_max_cost: CommaInts = (512, 4096)  # upper bounds of all classes but the last (prompt + new tokens)
    class_partitions: CommaInts = (12, 12, 6)
    class_max_lag: CommaInts = (2000, 500, 100)  # ingress answers 429 above this backlog

    # --- model and limits ---
    model: str = "builtin:tiny"
    model_cache_dir: Path = Path.home() / ".cache" / "brigade" / "models"
    device: str = "auto"
    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_new_tokens_limit: int = Field(default=1024, ge=1)

    # --- worker ---
    worker_class: str = "small"
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    max_batch_wait_ms: float = Field(default=10.0, ge=0.0)
    # longest a fetch waits on the broker with no records ready: real Kafka answers as soon as records arrive,
    # but the dev broker (Tansu) holds a fetch for the whole wait, which adds straight to time to first token
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    queue_size: int = Field(default=256, ge=1)  # local queue bound; partitions pause when it is full
    drain_timeout_s: float = Field(default=30.0, ge=0.0)
    # how long a worker keeps retrying an unreachable Redis (backing off exponentially) before it fails loudly;
    # covers a Redis restart or failover without losing the running batch
    dependency_retry_s: float = Field(default=60.0, ge=0.0)
    # Kafka group session: a member silent this long (killed, frozen) loses its partitions to the others
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    metrics_port: int = Field(default=9100, ge=0, le=65535)

    # --- ingress ---
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    request_timeout_s: float = Field(default=5.0, gt=0.0)  # broker ack deadline before a 503

    # --- logs ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("classes", "class_max_cost", "class_partitions", "class_max_lag", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @model_validator(mode="after")
    def _class_table(self) -> Settings:
        n = len(self.classes)
        expected = {
            "BRIGADE_CLASS_MAX_COST": (len(self.class_max_cost), n - 1),
            "BRIGADE_CLASS_PARTITIONS": (len(self.class_partitions), n),
            "BRIGADE_CLASS_MAX_LAG": (len(self.class_max_lag), n),
        }
        for var, (got, want) in expected.items():
            if got != want:
                raise ValueError(
                    f"{var} has {got} comma-separated values but BRIGADE_CLASSES names {n} classes; give {want} values"
                )
        validate_classes(self.cost_classes)
        if self.worker_class not in self.classes:
            raise ValueError(
                f"BRIGADE_WORKER_CLASS={self.worker_class!r} is not in BRIGADE_CLASSES "
                f"({','.join(self.classes)}); pick one of those"
            )
        return self

    @property
    def cost_classes(self) -> tuple[CostClass, ...]:
        bounds = (*[float(b) for b in self.class_max_cost], math.inf)
        return tuple(
            CostClass(name=name, max_cost=bound, partitions=parts, max_lag=lag)
            for name, bound, parts, lag in zip(
                self.classes, bounds, self.class_partitions, self.class_max_lag, strict=True
            )
        )

    def cost_class(self, name: str) -> CostClass:
        for cls in self.cost_classes:
            if cls.name == name:
                return cls
        raise KeyError(name)

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    def to_env(self) -> dict[str, str]:
        """These settings as the ``BRIGADE_*`` variables that read back to them (for child processes).

        Unset optional values are left out; comma lists and booleans are written the way they are parsed.
        """
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"BRIGADE_{name.upper()}"] = text
        return env
