"""The worker's VRAM plan at start: fail early when the model cannot fit, cap the batch at what does.

Run once, before the worker loads its model or joins its consumer group (``consumer/main.py``), never on the
hot path. It binds the class's device the way the GPU metrics do (``BRIGADE_CLASS_<NAME>_DEVICE`` or
``BRIGADE_DEVICE`` plus the visibility variables), reads the model's shape from its files and the device's
free memory from NVML, and plans for sequences of ``min(model context, max prompt + max new tokens)`` tokens:

- not even one such sequence fits: ``DeviceTooSmall``, naming the device, its free memory and the need;
- otherwise the batch limit becomes ``min(what fits, BRIGADE_MAX_BATCH_SIZE)``, and the plan is exported as
  metrics, so a dashboard shows why a pod on a small MIG slice runs smaller batches.

On the CPU (no NVML, no GPU, or the class bound to ``cpu``) there is no plan and nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from tokenizers import Tokenizer

from brigade.models.registry import resolve_model
from consumer.engine.model_files import read_model_files
from consumer.gpu.binding import DeviceBinding, DeviceSelectionError, bind_device
from consumer.gpu.capacity import Capacity, ModelShape, format_bytes, plan_capacity
from consumer.gpu.model_shape import read_model_shape
from consumer.gpu.nvml import NoNvidiaDriver, NvmlError, discover
from consumer.gpu.worker_metrics import NvmlLoader
from schemas.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StartPlan:
    """What the worker runs with on its device, and what it was computed from."""

    device: str  # the binding's label: UUID, profile, GPU
    free_bytes: int  # NVML's free memory on the device before the model loads
    shape: ModelShape
    capacity: Capacity
    configured_batch: int  # BRIGADE_MAX_BATCH_SIZE, before the cap

    def capped(self, settings: Settings) -> Settings:
        """``settings`` with the batch limit the device holds: the batcher, the executor and warm-up read it."""
        return settings.model_copy(update={"max_batch_size": self.capacity.max_batch})


def _bind(settings: Settings, *, env: Mapping[str, str], load: NvmlLoader) -> DeviceBinding | None:
    """The class's device with its free memory; None where there is no GPU binding (CPU, no NVML)."""
    try:
        api = load()
    except NoNvidiaDriver:
        return None
    try:
        binding = bind_device(settings.device_for(settings.worker_class), inventory=discover(api), env=env)
    except (NoNvidiaDriver, DeviceSelectionError) as exc:
        log.warning("no VRAM plan: could not resolve this worker's device", extra={"reason": str(exc)})
        return None
    finally:
        with contextlib.suppress(NvmlError):
            api.nvmlShutdown()
    return binding if binding.kind == "cuda" and binding.memory_free is not None else None


def plan_start(settings: Settings, *, env: Mapping[str, str], load: NvmlLoader) -> StartPlan | None:
    """Blocking (model files, NVML): run it in a thread. Raises ``DeviceTooSmall``; None on the CPU."""
    binding = _bind(settings, env=env, load=load)
    if binding is None or binding.memory_free is None:
        return None
    model_dir = resolve_model(settings.model_for(settings.worker_class), cache_dir=settings.model_cache_dir)
    shape = read_model_shape(model_dir)
    model_context = read_model_files(model_dir, Tokenizer.from_file(str(model_dir / "tokenizer.json"))).max_context
    context = min(model_context, settings.max_prompt_tokens + settings.max_new_tokens_limit)
    capacity = plan_capacity(
        device=binding.label,
        shape=shape,
        free_bytes=binding.memory_free,
        context=context,
        max_batch=settings.max_batch_size,
    )
    plan = StartPlan(
        device=binding.label,
        free_bytes=binding.memory_free,
        shape=shape,
        capacity=capacity,
        configured_batch=settings.max_batch_size,
    )
    log.info(
        "VRAM plan",
        extra={
            "device": plan.device,
            "free": format_bytes(plan.free_bytes),
            "weights": format_bytes(shape.weight_bytes),
            "kv_tokens": capacity.kv_tokens,
            "context": capacity.context,
            "max_batch": capacity.max_batch,
            "configured_max_batch": plan.configured_batch,
        },
    )
    return plan


def export_plan(registry: CollectorRegistry, plan: StartPlan, *, cost_class: str) -> None:
    """The plan as gauges on the worker's ``/metrics`` (set once: the plan does not change while it runs)."""
    gauges = (
        ("brigade_kv_cache_capacity_tokens", "Tokens of KV cache that fit beside the weights on the device, "
         "planned at start from NVML's free memory.", plan.capacity.kv_tokens),
        ("brigade_capacity_max_batch", "Sequences of the planned context that fit at once, capped at "
         "BRIGADE_MAX_BATCH_SIZE: the batch limit the worker started with.", plan.capacity.max_batch),
        ("brigade_capacity_context_tokens", "Tokens per sequence the plan is sized for: min(model context, "
         "BRIGADE_MAX_PROMPT_TOKENS + BRIGADE_MAX_NEW_TOKENS_LIMIT).", plan.capacity.context),
    )  # fmt: skip
    for name, documentation, value in gauges:
        Gauge(name, documentation, ["class"], registry=registry).labels(cost_class).set(value)
