"""What a Kubernetes rollout needs beyond ``Settings``: image, device per class, measured throughput, replica bounds.

``Settings`` says how a process behaves; ``DeployConfig`` says how many of them run where. Defaults are
documented per field; the throughput and cold-start defaults are CPU figures measured on this project's machine
(``deploy/keda/measured.py`` says how, and how to pass in a GPU's), and ``validate()`` names the field when a
combination cannot work (KEDA's ``Validate()`` habit, STYLE practice 8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deploy.keda import measured, params
from schemas.settings import Settings

DEFAULT_IMAGE = "ghcr.io/brigade-llm/brigade:0.1.0"
KAFKA_SECRET = "brigade-kafka"  # keys: sasl, tls, username, password[, ca] — see render.py's header

# MIG profiles on an 80 GB H100/A100: the small class gets the smallest slice, large a whole GPU.
DEFAULT_DEVICE_RESOURCE: Mapping[str, str] = {
    "small": "nvidia.com/mig-1g.10gb",
    "medium": "nvidia.com/mig-3g.40gb",
    "large": "nvidia.com/gpu",
}


@dataclass(frozen=True, slots=True)
class ClassDeploy:
    """One cost class's consumer Deployment and ScaledObject knobs."""

    # extended resource requested per pod: "nvidia.com/gpu", "nvidia.com/mig-<profile>", or "" for CPU
    device_resource: str = "nvidia.com/gpu"
    # requests/s one replica completes at its usual batch size (measure with `brigade bench`)
    throughput_rps: float = 2.0
    # queue wait we accept before adding a replica; with throughput this fixes lagThreshold
    target_wait_s: float = 10.0
    # seconds from pod start to ready: image pull excluded, model load + warm-up included
    cold_start_s: float = 60.0
    # 0 lets the class scale to zero (the first request then pays cold_start_s)
    min_replicas: int = 1
    # None: the largest count the HPA can reach on the topic's partitions (params.max_replica_count)
    max_replicas: int | None = None
    # lag at which a class at zero replicas wakes up; KEDA activates when lag > this value
    activation_lag: int = 0
    # replicas KEDA holds when the Kafka scaler keeps failing (fallback.replicas)
    fallback_replicas: int | None = None

    @property
    def lag_threshold(self) -> int:
        return params.lag_threshold(throughput_rps=self.throughput_rps, target_wait_s=self.target_wait_s)

    @property
    def cooldown_s(self) -> int:
        return params.cooldown_period_s(cold_start_s=self.cold_start_s)

    def max_replica_count(self, partitions: int) -> int:
        if self.max_replicas is not None:
            return self.max_replicas
        return params.max_replica_count(partitions=partitions)

    def fallback_replica_count(self) -> int:
        return self.fallback_replicas if self.fallback_replicas is not None else max(1, self.min_replicas)


def _measured_class(cost_class: str, **knobs: Any) -> ClassDeploy:
    """A class on its default device, with throughput and cold start from the measured CPU figures.

    ``throughput_rps = tokens/s ÷ the class's typical new tokens`` (``deploy/keda/measured.py``). The cold start is
    the empty-cache one: the rendered pods mount an emptyDir model cache, so a built-in model is generated at every
    pod start.
    """
    figures = measured.DEFAULT_FIGURES
    rps = measured.throughput_rps(figures, new_tokens=measured.TYPICAL_NEW_TOKENS[cost_class])
    return ClassDeploy(
        device_resource=DEFAULT_DEVICE_RESOURCE[cost_class],
        throughput_rps=round(rps, 3),
        cold_start_s=figures.cold_start_empty_cache_s,
        **knobs,
    )


def _default_classes() -> dict[str, ClassDeploy]:
    # large scales to zero: a whole GPU idling for rare long prompts costs more than an occasional cold start.
    return {
        "small": _measured_class("small", min_replicas=1),
        "medium": _measured_class("medium", min_replicas=1),
        "large": _measured_class("large", target_wait_s=20.0, min_replicas=0, activation_lag=0),
    }


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """Cluster-side choices shared by every rendered object."""

    image: str = DEFAULT_IMAGE
    k8s_namespace: str = "brigade"
    ingress_replicas: int = 2
    classes: Mapping[str, ClassDeploy] = field(default_factory=_default_classes)
    polling_interval_s: int = 30  # KEDA's default; lag is read this often
    scale_down_window_s: int = 300  # HPA stabilization window: hysteresis against lag noise
    scale_up_pods: int = 4  # bounded scale-up: at most this many new pods ...
    scale_up_period_s: int = 60  # ... per this many seconds (GPUs are scarce; pulls are slow)
    fallback_failures: int = 3  # consecutive scaler errors before fallback replicas apply
    offset_reset_policy: str = "latest"  # must match the consumer's auto_offset_reset
    model_cache_dir: str = "/var/cache/brigade/models"  # emptyDir mount; swap for a PVC to keep downloads
    kafka_secret: str = KAFKA_SECRET

    def with_measured(
        self, *, throughput_rps: Mapping[str, float] | None = None, cold_start_s: Mapping[str, float] | None = None
    ) -> DeployConfig:
        """This config with measured figures per class (a GPU's, from ``brigade bench`` there) in place of defaults."""
        classes = dict(self.classes)
        for name in {*(throughput_rps or {}), *(cold_start_s or {})}:
            cfg = self.for_class(name)
            if throughput_rps and name in throughput_rps:
                cfg = dataclasses.replace(cfg, throughput_rps=throughput_rps[name])
            if cold_start_s and name in cold_start_s:
                cfg = dataclasses.replace(cfg, cold_start_s=cold_start_s[name])
            classes[name] = cfg
        return dataclasses.replace(self, classes=classes)

    def for_class(self, name: str) -> ClassDeploy:
        """The class's knobs; a class without an entry gets ``ClassDeploy()`` (a whole GPU, documented defaults)."""
        return self.classes.get(name, ClassDeploy())

    def validate(self, settings: Settings) -> None:
        """Raise ValueError naming the class and field when the config cannot scale as intended."""
        unknown = set(self.classes) - set(settings.classes)
        if unknown:
            raise ValueError(f"DeployConfig.classes names {sorted(unknown)} not in BRIGADE_CLASSES {settings.classes}")
        if self.offset_reset_policy not in ("latest", "earliest"):
            raise ValueError(f"offset_reset_policy must be latest or earliest, got {self.offset_reset_policy!r}")
        for cc in settings.cost_classes:
            cfg = self.for_class(cc.name)
            top = cfg.max_replica_count(cc.partitions)
            where = f"class {cc.name!r}"
            if cfg.min_replicas < 0:
                raise ValueError(f"{where}: min_replicas must be >= 0, got {cfg.min_replicas}")
            if top < max(1, cfg.min_replicas):
                raise ValueError(f"{where}: max_replicas {top} is below min_replicas {cfg.min_replicas}")
            if not params.reachable(max_replicas=top, partitions=cc.partitions):
                raise ValueError(
                    f"{where}: max_replicas {top} cannot be reached with {cc.partitions} partitions "
                    f"(HPA tolerance {params.HPA_TOLERANCE:.0%}); raise BRIGADE_CLASS_PARTITIONS or lower max_replicas"
                )
            if cfg.activation_lag < 0:
                raise ValueError(f"{where}: activation_lag must be >= 0, got {cfg.activation_lag}")
            if not 1 <= cfg.fallback_replica_count() <= top:
                raise ValueError(f"{where}: fallback_replicas must be within 1..{top}")


def reference_settings() -> Settings:
    """The pinned ``Settings`` behind the checked-in YAML: defaults plus cluster addresses, no environment read.

    Pinned so that ``deploy/keda/rendered`` does not depend on who renders it; ``brigade deploy render``
    with your own ``BRIGADE_*`` variables gives your cluster's variant.
    """
    return _PinnedSettings(
        kafka_bootstrap="kafka-bootstrap.kafka.svc:9092",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        redis_url="redis://redis.brigade.svc:6379/0",
        model="builtin:tiny",
    )


class _PinnedSettings(Settings):
    """Settings from keyword arguments only: no BRIGADE_* variables, no .env file."""

    @classmethod
    def settings_customise_sources(  # type: ignore[override]
        cls, settings_cls: type[Settings], init_settings: object, *args: object, **kwargs: object
    ) -> tuple[object, ...]:
        return (init_settings,)
