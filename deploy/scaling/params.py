"""Build ``ScalerParams`` from the same ``Settings`` + ``DeployConfig`` that render the ScaledObjects.

So the simulation replays exactly the numbers that ship, not a hand-copied variant of them.
"""

from __future__ import annotations

from deploy.keda.config import DeployConfig
from deploy.scaling.hpa import ScalerParams
from schemas.settings import Settings


def params_for_class(settings: Settings, config: DeployConfig, cost_class: str) -> ScalerParams:
    cfg = config.for_class(cost_class)
    partitions = settings.cost_class(cost_class).partitions
    return ScalerParams(
        lag_threshold=cfg.lag_threshold,
        partitions=partitions,
        max_replicas=cfg.max_replica_count(partitions),
        min_replicas=cfg.min_replicas,
        activation_lag=cfg.activation_lag,
        throughput_rps=cfg.throughput_rps,
        cold_start_s=cfg.cold_start_s,
        polling_interval_s=config.polling_interval_s,
        cooldown_s=cfg.cooldown_s,
        scale_up_pods=config.scale_up_pods,
        scale_up_period_s=config.scale_up_period_s,
        scale_down_window_s=config.scale_down_window_s,
    )
