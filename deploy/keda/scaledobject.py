"""KEDA custom objects as plain dicts: the ScaledObject per class and the TriggerAuthentication for Kafka.

The kubernetes client has no models for CRDs, so these are dicts in the exact API shape; tests validate them
against KEDA's own CRD schemas vendored in ``deploy/keda/crds/``. Every kafka trigger metadata value is a
string — KEDA's CRD declares ``metadata`` as ``map[string]string`` and rejects ``lagThreshold: 10``.
"""

from __future__ import annotations

from typing import Any

from deploy.keda.config import DeployConfig
from deploy.keda.env import uses_sasl, uses_tls
from deploy.keda.workloads import labels, worker_name
from schemas.settings import Settings

KEDA_API = "keda.sh/v1alpha1"
TRIGGER_AUTH_NAME = "brigade-kafka"

Manifest = dict[str, Any]


def kafka_trigger_metadata(settings: Settings, config: DeployConfig, cost_class: str) -> dict[str, str]:
    """The kafka scaler's metadata for one class; all values strings."""
    cfg = config.for_class(cost_class)
    names = settings.names
    return {
        "bootstrapServers": settings.kafka_bootstrap,
        "consumerGroup": names.consumer_group(cost_class),
        "topic": names.request_topic(cost_class),
        "lagThreshold": str(cfg.lag_threshold),
        "activationLagThreshold": str(cfg.activation_lag),
        "offsetResetPolicy": config.offset_reset_policy,
        # Replicas beyond the partition count would only idle; KEDA caps the metric accordingly.
        "allowIdleConsumers": "false",
    }


def hpa_behavior(config: DeployConfig) -> dict[str, Any]:
    """Slow down, bounded up: a stabilization window as hysteresis, and at most N new GPU pods per period."""
    return {
        "scaleDown": {
            "stabilizationWindowSeconds": config.scale_down_window_s,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Pods", "value": config.scale_up_pods, "periodSeconds": config.scale_up_period_s}],
            "selectPolicy": "Max",
        },
    }


def scaled_object(settings: Settings, config: DeployConfig, cost_class: str) -> Manifest:
    """One class's ScaledObject, targeting its worker Deployment."""
    cfg = config.for_class(cost_class)
    partitions = settings.cost_class(cost_class).partitions
    trigger: Manifest = {
        "type": "kafka",
        "name": f"lag-{cost_class}",
        "metadata": kafka_trigger_metadata(settings, config, cost_class),
    }
    if uses_sasl(settings) or uses_tls(settings):
        trigger["authenticationRef"] = {"name": TRIGGER_AUTH_NAME}
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": {
            "name": worker_name(cost_class),
            "namespace": config.k8s_namespace,
            "labels": labels("worker", cost_class),
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker_name(cost_class)},
            "pollingInterval": config.polling_interval_s,
            "cooldownPeriod": cfg.cooldown_s,
            "minReplicaCount": cfg.min_replicas,
            "maxReplicaCount": cfg.max_replica_count(partitions),
            "fallback": {"failureThreshold": config.fallback_failures, "replicas": cfg.fallback_replica_count()},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": hpa_behavior(config)}},
            "triggers": [trigger],
        },
    }


def trigger_authentication(settings: Settings, config: DeployConfig) -> Manifest | None:
    """Kafka credentials for KEDA from the same Secret the workers read; None when Kafka needs none.

    Secret keys: ``sasl`` (plaintext | scram_sha256 | scram_sha512), ``username``, ``password``, ``tls``
    (enable | disable) and, for a private CA, ``ca``. All come from the Secret — not literals here — because
    every KEDA 2.x release reads them from TriggerAuthentication, and the Secret is where operators rotate them.
    """
    refs: list[dict[str, str]] = []
    if uses_sasl(settings):
        refs += [{"parameter": p, "name": config.kafka_secret, "key": p} for p in ("sasl", "username", "password")]
    if uses_tls(settings):
        refs += [{"parameter": p, "name": config.kafka_secret, "key": p} for p in ("tls", "ca")]
    if not refs:
        return None
    return {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": {"name": TRIGGER_AUTH_NAME, "namespace": config.k8s_namespace, "labels": labels("worker")},
        "spec": {"secretTargetRef": refs},
    }
