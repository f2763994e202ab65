"""VRAM arithmetic and class → MIG profile mapping: table tests, no device."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.gpu.binding import bind_device
from consumer.gpu.capacity import (
    GIB,
    MIB,
    DeviceTooSmall,
    Headroom,
    ModelShape,
    format_bytes,
    kv_tokens,
    plan_capacity,
    required_free_bytes,
)
from consumer.gpu.nvml import discover, mig_profile_name
from consumer.gpu.profiles import (
    A100_40GB,
    H100_80GB,
    MigProfile,
    NoProfileFits,
    class_profiles,
    parse_profile,
    profiles_from_inventory,
    smallest_profile,
)
from consumer.gpu.recorded import replay

DATA = Path(__file__).parent / "data" / "nvml"
EXACT = Headroom(margin=0.0, reserve_bytes=0)  # tables with round numbers; the defaults get their own tests

GPT2_SMALL_FP16 = ModelShape(n_layer=12, n_head=12, head_dim=64, dtype_bytes=2, weight_bytes=249_000_000)
LLAMA2_7B_FP16 = ModelShape(n_layer=32, n_head=32, head_dim=128, dtype_bytes=2, weight_bytes=13_476_839_424)
LLAMA3_8B_FP16 = ModelShape(n_layer=32, n_head=8, head_dim=128, dtype_bytes=2, weight_bytes=16_060_522_496)  # GQA


@pytest.mark.parametrize(
    ("shape", "per_token"),
    [
        (GPT2_SMALL_FP16, 36_864),  # 2 × 12 × 12 × 64 × 2
        (ModelShape(n_layer=12, n_head=12, head_dim=64, dtype_bytes=4, weight_bytes=0), 73_728),
        (LLAMA2_7B_FP16, 524_288),  # half a MiB per token
        (LLAMA3_8B_FP16, 131_072),  # grouped-query attention: 8 KV heads, a quarter of the cache
    ],
)
def test_kv_bytes_per_token(shape: ModelShape, per_token: int) -> None:
    assert shape.kv_bytes_per_token == per_token


ONE_GIB_WEIGHTS = ModelShape(n_layer=12, n_head=12, head_dim=64, dtype_bytes=2, weight_bytes=GIB)


@pytest.mark.parametrize(
    ("free", "context", "max_batch", "tokens", "batch"),
    [
        (10 * GIB, 1024, None, 262_144, 256),  # 9 GiB of KV / 36 KiB per token
        (10 * GIB, 1024, 64, 262_144, 64),  # the configured cap wins
        (10 * GIB, 4096, None, 262_144, 64),
        (10 * GIB, 100_000, None, 262_144, 2),  # a context longer than the model allows is the caller's business
        (GIB + 36_864 * 512, 512, None, 512, 1),  # exactly one sequence
    ],
)
def test_largest_batch_that_fits(free: int, context: int, max_batch: int | None, tokens: int, batch: int) -> None:
    cap = plan_capacity(
        device="test", shape=ONE_GIB_WEIGHTS, free_bytes=free, context=context, max_batch=max_batch, headroom=EXACT
    )
    assert (cap.kv_tokens, cap.max_batch, cap.context) == (tokens, batch, context)
    assert cap.kv_bytes == free - GIB


def test_default_headroom_keeps_a_margin_and_a_reserve() -> None:
    room = Headroom()
    assert room.usable(10 * GIB) == int(10 * GIB * 0.9) - 512 * MIB
    assert room.usable(100 * MIB) == 0  # never negative
    tokens = kv_tokens(shape=GPT2_SMALL_FP16, free_bytes=80 * GIB, headroom=room)
    assert tokens == (int(80 * GIB * 0.9) - 512 * MIB - 249_000_000) // 36_864


@pytest.mark.parametrize("headroom", [EXACT, Headroom(), Headroom(margin=0.07, reserve_bytes=300 * MIB)])
@pytest.mark.parametrize(("batch", "context"), [(1, 1), (1, 2048), (32, 160), (256, 1024)])
def test_required_free_bytes_is_the_exact_inverse(headroom: Headroom, batch: int, context: int) -> None:
    need = required_free_bytes(shape=GPT2_SMALL_FP16, batch=batch, context=context, headroom=headroom)
    cap = plan_capacity(device="d", shape=GPT2_SMALL_FP16, free_bytes=need, context=context, headroom=headroom)
    assert cap.max_batch >= batch
    with pytest.raises(DeviceTooSmall):
        plan_capacity(
            device="d", shape=GPT2_SMALL_FP16, free_bytes=need - 1, context=context, min_batch=batch, headroom=headroom
        )


def test_a_slice_too_small_names_device_free_memory_and_need() -> None:
    inv = discover(replay(DATA / "h100-80gb-mig-mixed.json"))
    busy = inv.gpus[0].mig_devices[2]  # a 1g.10gb slice with 6 GiB already taken
    binding = bind_device(busy.uuid, inventory=inv, env={})
    assert binding.memory_free is not None
    with pytest.raises(DeviceTooSmall) as err:
        plan_capacity(device=binding.label, shape=LLAMA2_7B_FP16, free_bytes=binding.memory_free, context=2048)
    need = required_free_bytes(shape=LLAMA2_7B_FP16, batch=1, context=2048, headroom=Headroom())
    assert str(err.value) == (
        f"device {busy.uuid} (1g.10gb on GPU 0, NVIDIA H100 80GB HBM3) has 3.75 GiB free but the model needs "
        f"{format_bytes(need)} (weights 12.55 GiB + KV cache 1.00 GiB for batch 1 × 2048 tokens + 512 MiB reserve, "
        f"keeping 10% free); bind a larger GPU or MIG profile, use a smaller model, or lower the context"
    )
    assert (err.value.free_bytes, err.value.need_bytes) == (binding.memory_free, need)


def test_min_batch_is_enforced() -> None:
    with pytest.raises(DeviceTooSmall, match="for batch 300 × 1024 tokens"):
        plan_capacity(
            device="d", shape=ONE_GIB_WEIGHTS, free_bytes=10 * GIB, context=1024, min_batch=300, headroom=EXACT
        )


@pytest.mark.parametrize(("context", "min_batch"), [(0, 1), (16, 0)])
def test_nonsense_limits_are_refused(context: int, min_batch: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        plan_capacity(device="d", shape=ONE_GIB_WEIGHTS, free_bytes=GIB, context=context, min_batch=min_batch)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [("1g.10gb", (1, 1, 10)), ("7g.80gb", (7, 7, 80)), ("1c.3g.40gb", (1, 3, 40)), ("1g.10gb+me", (1, 1, 10))],
)
def test_parse_profile(name: str, parsed: tuple[int, int, int]) -> None:
    assert parse_profile(name) == parsed


@pytest.mark.parametrize("name", ["", "1g", "10gb", "g.10gb", "1g.10GB ", "cuda:0"])
def test_parse_profile_refuses(name: str) -> None:
    with pytest.raises(ValueError, match="is not a MIG profile name"):
        parse_profile(name)


@pytest.mark.parametrize(("catalogue", "parent_total"), [(H100_80GB, 81559 * MIB), (A100_40GB, 40960 * MIB)])
def test_catalogue_sizes_carry_their_own_names(catalogue: tuple[MigProfile, ...], parent_total: int) -> None:
    for p in catalogue:
        named = mig_profile_name(
            gpu_slices=p.gpu_slices,
            compute_slices=p.gpu_slices,
            memory_size_mb=p.memory_bytes // MIB,
            parent_memory_total=parent_total,
        )
        assert named == p.name


@pytest.mark.parametrize(
    ("need", "profile"),
    [
        (1 * GIB, "1g.10gb"),
        (int(9.75 * GIB), "1g.10gb"),
        (int(9.75 * GIB) + 1, "1g.20gb"),  # same memory as 2g.20gb: the fewer slices win
        (30 * GIB, "3g.40gb"),
        (70 * GIB, "7g.80gb"),
    ],
)
def test_smallest_profile_that_holds_the_need(need: int, profile: str) -> None:
    assert smallest_profile(need_bytes=need, profiles=H100_80GB).name == profile


def test_nothing_fits() -> None:
    with pytest.raises(NoProfileFits, match=r"class 'huge' needs 100.00 GiB .*the largest is 7g.80gb \(79.25 GiB\)"):
        smallest_profile(need_bytes=100 * GIB, profiles=H100_80GB, what="class 'huge'")
    with pytest.raises(NoProfileFits, match=r"holds it \(none are available\)"):
        smallest_profile(need_bytes=1, profiles=())


def test_classes_get_the_smallest_slice_that_holds_their_model() -> None:
    """The elephant and the mouse: GPT-2 for short requests, a 7B model for the long ones."""
    room = Headroom()
    needs = {
        "small": required_free_bytes(shape=GPT2_SMALL_FP16, batch=64, context=512, headroom=room),
        "medium": required_free_bytes(shape=GPT2_SMALL_FP16, batch=64, context=4096, headroom=room),
        "large": required_free_bytes(shape=LLAMA2_7B_FP16, batch=8, context=4096, headroom=room),
    }
    chosen = {name: p.name for name, p in class_profiles(needs, H100_80GB).items()}
    assert chosen == {"small": "1g.10gb", "medium": "1g.20gb", "large": "3g.40gb"}


def test_profiles_from_a_live_layout() -> None:
    inv = discover(replay(DATA / "h100-80gb-mig-mixed.json"))
    got = profiles_from_inventory(inv)
    assert [(p.name, p.gpu_slices, p.memory_bytes) for p in got] == [
        ("1g.10gb", 1, 9984 * MIB),
        ("2g.20gb", 2, 20096 * MIB),
        ("3g.40gb", 3, 40448 * MIB),
    ]
    assert profiles_from_inventory(discover(replay(DATA / "h100-80gb.json"))) == ()


@pytest.mark.parametrize(("n", "text"), [(512 * MIB, "512 MiB"), (int(9.75 * GIB), "9.75 GiB"), (1000, "1000 B")])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
