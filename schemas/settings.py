"""``BRIGADE_*`` environment variables, read once into one typed object and passed in.

Nothing else in brigade reads the environment. Validation errors name the variable and the fix.

Most settings are one variable each. Per-class settings are a family instead, one variable per configured
class (``BRIGADE_CLASS_<NAME>_MODEL``, ``BRIGADE_CLASS_<NAME>_DEVICE``): the classes are themselves
configuration, so these names cannot be fields. ``_ClassEnvSource`` gathers each family into one mapping
field (``class_models``, ``class_devices``) keyed by class name, and the validator refuses a variable that
names no configured class, naming the variable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from schemas.costs import CostClass, validate_classes
from schemas.naming import DEFAULT_NAMESPACE, Names

CommaList = Annotated[tuple[str, ...], NoDecode]
CommaInts = Annotated[tuple[int, ...], NoDecode]


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# Per-class families: mapping field -> the variable's last word (BRIGADE_CLASS_<NAME>_<WORD>).
PER_CLASS_FIELDS: Mapping[str, str] = {"class_models": "MODEL", "class_devices": "DEVICE"}
_PER_CLASS_VAR = re.compile(r"^BRIGADE_CLASS_(?P<name>[A-Z0-9_]+?)_(?P<word>MODEL|DEVICE)$")


def class_var_part(cost_class: str) -> str:
    """How a class is spelt inside a variable name: upper case, anything but letters and digits as ``_``."""
    return re.sub(r"[^A-Z0-9]", "_", cost_class.upper())


def class_env_name(cost_class: str, field: str) -> str:
    """``class_env_name("small", "class_models")`` → ``BRIGADE_CLASS_SMALL_MODEL``."""
    return f"BRIGADE_CLASS_{class_var_part(cost_class)}_{PER_CLASS_FIELDS[field]}"


def field_of_variable(name: str) -> str | None:
    """The ``Settings`` field a ``BRIGADE_*`` variable sets (per-class families included); None if it sets none."""
    match = _PER_CLASS_VAR.match(name)
    if match is not None:
        return next(f for f, word in PER_CLASS_FIELDS.items() if word == match["word"])
    field = name.removeprefix("BRIGADE_").lower()
    if name.startswith("BRIGADE_") and field in Settings.model_fields and field not in PER_CLASS_FIELDS:
        return field
    return None


class _ClassEnvSource(EnvSettingsSource):
    """The environment as pydantic-settings reads it, plus the per-class families gathered into their mappings.

    A per-class field is never read from a variable of its own name (there is no ``BRIGADE_CLASS_MODELS``):
    its value is ``{<name as spelt in the variable, lower case>: value}`` for every ``BRIGADE_CLASS_<NAME>_<WORD>``
    set, and the field validator matches those names to the configured classes.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        word = PER_CLASS_FIELDS.get(field_name)
        if word is None:
            return super().get_field_value(field, field_name)
        found = {}
        for key, value in self.env_vars.items():
            match = _PER_CLASS_VAR.match(key.upper())
            if match is not None and match["word"] == word and value is not None:
                found[match["name"].lower()] = value
        return (found or None), field_name, False

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool) -> Any:
        if field_name in PER_CLASS_FIELDS:
            return value  # already a mapping; nothing to decode
        return super().prepare_field_value(field_name, field, value, value_is_complex)


EventLoop = Literal["auto", "uvloop", "asyncio"]


ToolCallParser = Literal["none", "hermes", "mistral", "llama3_json", "pythonic"]
ReasoningParser = Literal["none", "deepseek_r1", "qwen3"]


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
    # Redis Cluster: the cluster client, and keys with the session id as a {hash tag} (schemas/naming.py)
    redis_cluster: bool = False
    stream_ttl_s: int = Field(default=3600, ge=1)  # a response stream expires this long after its last event
    session_ttl_s: int = Field(default=1800, ge=1)
    # a chat turn that must trim its conversation trims it to leave this share of the context free, so the next
    # turns keep the same start (and reuse their session's KV cache) until it fills again; 0: trim the fewest
    trim_headroom: float = Field(default=0.25, ge=0.0, lt=1.0)

    # --- cost classes ---
    classes: CommaList = ("small", "medium", "large")
    class_max_cost: CommaInts = (512, 4096)  # upper bounds of all classes but the last (prompt + new tokens)
    class_partitions: CommaInts = (12, 12, 6)
    class_max_lag: CommaInts = (2000, 500, 100)  # ingress answers 429 above this backlog

    # --- model and limits ---
    model: str = "builtin:tiny"  # every class's model unless BRIGADE_CLASS_<NAME>_MODEL names another
    model_cache_dir: Path = Path.home() / ".cache" / "brigade" / "models"
    device: str = "auto"  # every class's device unless BRIGADE_CLASS_<NAME>_DEVICE names another
    # BRIGADE_CLASS_<NAME>_MODEL / _DEVICE, keyed by class name (declared after ``classes``: the validator reads it)
    class_models: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    class_devices: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_new_tokens_limit: int = Field(default=1024, ge=1)

    # --- worker ---
    worker_class: str = "small"
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    max_batch_wait_ms: float = Field(default=10.0, ge=0.0)  # static batching only
    # continuous: queued requests join the running batch at every decode step; static: a batch runs to its end.
    # Static is the default while continuous does not win tokens/s on the measured device (BENCHMARKS.md, figure 5)
    batching: Literal["continuous", "static"] = "static"
    # continuous: free slots to wait for before queued requests join (capped at the batch size); each join is a
    # prefill and a cache copy of its own, which on a CPU cost more than a few idle slots (BENCHMARKS.md, figure 5)
    min_join: int = Field(default=8, ge=1)
    # longest a fetch waits on the broker with no records ready: real Kafka answers as soon as records arrive,
    # but the dev broker (Tansu) holds a fetch for the whole wait, which adds straight to time to first token
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    queue_size: int = Field(default=256, ge=1)  # local queue bound; partitions pause when it is full
    # ONNX Runtime's session.intra_op.allow_spinning: turn it off where the worker shares its CPUs
    ort_allow_spinning: bool = True
    # host memory for KV caches (consumer/engine/kv_cache.py): finished chat turns', per session (or per
    # prompt_cache_key), so the next turn (same partition, same worker) prefills only its new tokens, and the shared
    # prefixes below; 0 turns both off
    kv_cache_mb: int = Field(default=512, ge=0)
    # keep, in the same bytes, the prompt prefixes different requests start with (a system prompt), for every
    # request that starts with one; off where timing must not tell one tenant what another's prompts begin with
    shared_prefix_cache: bool = True
    # continuous batching: a prompt longer than this that joins while other sequences decode is prefilled this
    # many tokens a step, a decode step of the others between chunks, so its prefill does not stall their streams
    # for its whole length (vLLM's chunked prefill); 0 prefills every prompt at once
    prefill_chunk_tokens: int = Field(default=512, ge=0)
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
    # the ingress producer's linger.ms: how long a record waits for others to share its produce request. Every
    # request waits for its ack, so this adds straight to time to first token; under load records batch anyway,
    # behind the produce request already in flight
    kafka_linger_ms: int = Field(default=0, ge=0, le=1000)
    # how the OpenAI endpoint reads the calls a model chose to make (tool_choice "auto"): the served models'
    # own format, as vLLM's --tool-call-parser; auto reads each model's off its chat template; none refuses "auto"
    tool_call_parser: ToolCallParser | Literal["auto"] = "auto"
    # how the OpenAI chat endpoint splits a reasoning model's <think>…</think> from its answer (message.reasoning),
    # as vLLM's --reasoning-parser; auto reads each model's off its chat template; none leaves it in content
    reasoning_parser: ReasoningParser | Literal["auto"] = "auto"

    # --- logs ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    # --- process ---
    # the processes' event loop; auto: uvloop for the ingress, asyncio's for the worker (brigade/eventloop.py)
    event_loop: EventLoop = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _ClassEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("classes", "class_max_cost", "class_partitions", "class_max_lag", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @field_validator("class_models", "class_devices")
    @classmethod
    def _known_classes(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        """Key each entry by its class's own name; a variable for a class that is not configured is an error."""
        field = str(info.field_name)
        classes: tuple[str, ...] = info.data.get("classes", ())
        by_part = {class_var_part(name): name for name in classes}
        out: dict[str, str] = {}
        for key, spec in value.items():
            name = key if key in classes else by_part.get(class_var_part(key))
            if name is None:
                raise ValueError(
                    f"{class_env_name(key, field)} is set but BRIGADE_CLASSES ({','.join(classes)}) has no class "
                    f"{key!r}; name one of those classes or add it to BRIGADE_CLASSES"
                )
            out[name] = spec
        return out

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

    def model_for(self, cost_class: str) -> str:
        """The model a class serves: ``BRIGADE_CLASS_<NAME>_MODEL``, else ``BRIGADE_MODEL``."""
        return self.class_models.get(cost_class, self.model)

    def model_variable(self, model: str) -> str:
        """The variables that name ``model`` (``BRIGADE_CLASS_<NAME>_MODEL``s, ``BRIGADE_MODEL``), for messages."""
        names = [class_env_name(name, "class_models") for name, spec in self.class_models.items() if spec == model]
        if model == self.model or not names:
            names.append("BRIGADE_MODEL")
        return ", ".join(names)

    def device_for(self, cost_class: str) -> str:
        """The device a class's workers bind: ``BRIGADE_CLASS_<NAME>_DEVICE``, else ``BRIGADE_DEVICE``."""
        return self.class_devices.get(cost_class, self.device)

    def per_class_env(self) -> dict[str, str]:
        """The per-class variables these settings were given, as a child process or a manifest needs them."""
        return {
            class_env_name(name, field): value
            for field in PER_CLASS_FIELDS
            for name, value in getattr(self, field).items()
        }

    @property
    def served_models(self) -> tuple[str, ...]:
        """Every distinct model some class serves, in class order (cheapest class's model first)."""
        return tuple(dict.fromkeys(self.model_for(name) for name in self.classes))

    def classes_serving(self, model: str) -> tuple[CostClass, ...]:
        """The classes whose workers serve ``model``, cheapest first; empty when none does."""
        return tuple(c for c in self.cost_classes if self.model_for(c.name) == model)

    def cost_class(self, name: str) -> CostClass:
        for cls in self.cost_classes:
            if cls.name == name:
                return cls
        raise KeyError(name)

    @property
    def names(self) -> Names:
        return Names(self.namespace, cluster=self.redis_cluster)

    def to_env(self) -> dict[str, str]:
        """These settings as the ``BRIGADE_*`` variables that read back to them (for child processes).

        Unset optional values are left out; comma lists and booleans are written the way they are parsed.
        """
        env: dict[str, str] = self.per_class_env()
        for name, value in self.model_dump().items():
            if value is None or name in PER_CLASS_FIELDS:
                continue
            if isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"BRIGADE_{name.upper()}"] = text
        return env
