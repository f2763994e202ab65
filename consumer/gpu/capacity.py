"""VRAM arithmetic: how many tokens of KV cache fit beside the weights, and failing early when none do.

Pure integers in, integers out. Computed once at start from the bound device's free memory, so a worker
that cannot hold its model fails before it joins the consumer group, instead of taking partitions and
dying on its first CUDA out-of-memory error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1024 * 1024
GIB = 1024 * MIB


def format_bytes(n: int) -> str:
    """Human figure for messages and tables: "9.75 GiB", "512 MiB"."""
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n} B"


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the memory of a decoder-only model depends on."""

    n_layer: int
    n_head: int  # heads that hold K/V: the KV heads of a grouped-query model, not its query heads
    head_dim: int
    dtype_bytes: int  # bytes per KV element: 2 for fp16/bf16, 4 for fp32
    weight_bytes: int  # the weights as the device holds them

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, for every layer and head: 2 × n_layer × n_head × head_dim × dtype_bytes."""
        return 2 * self.n_layer * self.n_head * self.head_dim * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class Headroom:
    """Memory kept back from NVML's "free" figure, which is measured before the session exists."""

    margin: float = 0.10  # fraction of free memory never planned for: allocator fragmentation, arena growth
    reserve_bytes: int = 512 * MIB  # CUDA context and ONNX Runtime workspace (cuBLAS, cuDNN) created later

    def usable(self, free_bytes: int) -> int:
        return max(0, int(free_bytes * (1.0 - self.margin)) - self.reserve_bytes)

    def free_needed(self, usable_bytes: int) -> int:
        """The least free memory that makes ``usable_bytes`` usable: the inverse of ``usable``."""
        free = math.ceil((usable_bytes + self.reserve_bytes) / (1.0 - self.margin))
        while self.usable(free) < usable_bytes:  # float rounding can leave it a byte or two short
            free += 1
        return free


@dataclass(frozen=True, slots=True)
class Capacity:
    """The limits a worker runs with, exported as metrics at start."""

    usable_bytes: int  # free memory after headroom
    kv_bytes: int  # what is left for the KV cache once the weights are loaded
    kv_tokens: int  # tokens of KV cache that fit, shared by the whole batch
    context: int  # tokens per sequence (prompt + new tokens) the batch is sized for
    max_batch: int  # sequences of ``context`` tokens that fit at once (after any configured cap)


class DeviceTooSmall(RuntimeError):
    """The bound device cannot hold the model at the smallest useful batch. The message names both sides."""

    def __init__(self, *, device: str, free_bytes: int, need_bytes: int, detail: str) -> None:
        super().__init__(
            f"device {device} has {format_bytes(free_bytes)} free but the model needs {format_bytes(need_bytes)} "
            f"({detail}); bind a larger GPU or MIG profile, use a smaller model, or lower the context"
        )
        self.device = device
        self.free_bytes = free_bytes
        self.need_bytes = need_bytes


def kv_tokens(*, shape: ModelShape, free_bytes: int, headroom: Headroom) -> int:
    """Tokens of KV cache that fit in ``free_bytes`` once the weights and headroom are taken out (≥ 0)."""
    return max(0, headroom.usable(free_bytes) - shape.weight_bytes) // shape.kv_bytes_per_token


def required_free_bytes(*, shape: ModelShape, batch: int, context: int, headroom: Headroom) -> int:
    """Free memory a device needs for ``batch`` sequences of ``context`` tokens: weights + KV + headroom."""
    return headroom.free_needed(shape.weight_bytes + batch * context * shape.kv_bytes_per_token)


def plan_capacity(
    *,
    device: str,
    shape: ModelShape,
    free_bytes: int,
    context: int,
    min_batch: int = 1,
    max_batch: int | None = None,
    headroom: Headroom | None = None,
) -> Capacity:
    """The largest batch of ``context``-token sequences that fits, capped at ``max_batch``.

    Raises ``DeviceTooSmall`` (naming ``device``) when not even ``min_batch`` sequences fit.
    """
    if context <= 0 or min_batch <= 0:
        raise ValueError(f"context ({context}) and min_batch ({min_batch}) must be positive")
    room = headroom if headroom is not None else Headroom()
    tokens = kv_tokens(shape=shape, free_bytes=free_bytes, headroom=room)
    batch = tokens // context
    if batch < min_batch:
        need = required_free_bytes(shape=shape, batch=min_batch, context=context, headroom=room)
        kv = min_batch * context * shape.kv_bytes_per_token
        detail = (
            f"weights {format_bytes(shape.weight_bytes)} + KV cache {format_bytes(kv)} for batch {min_batch} × "
            f"{context} tokens + {format_bytes(room.reserve_bytes)} reserve, keeping {room.margin:.0%} free"
        )
        raise DeviceTooSmall(device=device, free_bytes=free_bytes, need_bytes=need, detail=detail)
    if max_batch is not None:
        batch = min(batch, max_batch)
    usable = room.usable(free_bytes)
    return Capacity(
        usable_bytes=usable,
        kv_bytes=usable - shape.weight_bytes,
        kv_tokens=tokens,
        context=context,
        max_batch=batch,
    )
