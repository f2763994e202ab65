"""Cost classes to MIG profiles: each class gets the smallest slice that holds its model.

Pure. The point of MIG in brigade is the elephant and the mouse: small requests run a small model on a
small slice, so the big slices stay free for the large class. Sizes come either from what NVML shows
(``profiles_from_inventory``) or, to plan a layout before it exists, from the catalogues below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from consumer.gpu.capacity import MIB, format_bytes
from consumer.gpu.nvml import Inventory

_PROFILE = re.compile(r"^(?:(?P<c>\d+)c\.)?(?P<g>\d+)g\.(?P<gb>\d+)gb(?:[+-][a-z.,]+)?$")


@dataclass(frozen=True, slots=True)
class MigProfile:
    """A MIG profile and the device memory an instance of it has."""

    name: str  # "1g.10gb"
    gpu_slices: int  # compute share in sevenths (eighths on some parts); breaks ties between equal memory
    memory_bytes: int


class NoProfileFits(ValueError):
    """No available profile holds the model; the message names the class, its need and the largest profile."""


def parse_profile(name: str) -> tuple[int, int, int]:
    """Split a profile name: "1g.10gb" → (compute 1, GPU slices 1, 10 GB); "1c.3g.40gb" → (1, 3, 40)."""
    match = _PROFILE.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a MIG profile name like 1g.10gb or 1c.3g.40gb")
    g = int(match["g"])
    return int(match["c"] or g), g, int(match["gb"])


def _catalogue(*rows: tuple[str, int]) -> tuple[MigProfile, ...]:
    return tuple(MigProfile(name, parse_profile(name)[1], mib * MIB) for name, mib in rows)


# GPU-instance profiles with the memory `nvidia-smi mig -lgip` lists for them (GiB × 1024 = MiB).
H100_80GB = _catalogue(
    ("1g.10gb", 9984), ("1g.20gb", 20096), ("2g.20gb", 20096),
    ("3g.40gb", 40448), ("4g.40gb", 40448), ("7g.80gb", 81152),
)  # fmt: skip
A100_40GB = _catalogue(
    ("1g.5gb", 4864), ("1g.10gb", 9856), ("2g.10gb", 9856),
    ("3g.20gb", 19968), ("4g.20gb", 19968), ("7g.40gb", 40192),
)  # fmt: skip
CATALOGUES: Mapping[str, tuple[MigProfile, ...]] = {
    "NVIDIA H100 80GB HBM3": H100_80GB,
    "NVIDIA H100 PCIe": H100_80GB,
    "NVIDIA A100-SXM4-40GB": A100_40GB,
    "NVIDIA A100-PCIE-40GB": A100_40GB,
}


def profiles_from_inventory(inventory: Inventory) -> tuple[MigProfile, ...]:
    """The profiles instantiated on this machine, each sized by its smallest instance, smallest first."""
    sizes: dict[str, int] = {}
    for mig in inventory.mig_devices():
        sizes[mig.profile] = min(sizes.get(mig.profile, mig.memory_total), mig.memory_total)
    return tuple(sorted((MigProfile(n, parse_profile(n)[1], b) for n, b in sizes.items()), key=_size))


def _size(profile: MigProfile) -> tuple[int, int]:
    return profile.memory_bytes, profile.gpu_slices


def smallest_profile(*, need_bytes: int, profiles: Iterable[MigProfile], what: str = "the model") -> MigProfile:
    """The smallest profile (memory, then compute slices) with at least ``need_bytes``."""
    ordered = sorted(profiles, key=_size)
    for profile in ordered:
        if profile.memory_bytes >= need_bytes:
            return profile
    largest = (
        f"the largest is {ordered[-1].name} ({format_bytes(ordered[-1].memory_bytes)})"
        if ordered
        else "none are available"
    )
    raise NoProfileFits(
        f"{what} needs {format_bytes(need_bytes)} and no MIG profile holds it ({largest}); "
        f"run it on a whole GPU or a smaller model"
    )


def class_profiles(needs: Mapping[str, int], profiles: Iterable[MigProfile]) -> dict[str, MigProfile]:
    """Each cost class → its smallest fitting profile. ``needs`` is free bytes per class (``required_free_bytes``)."""
    available = tuple(profiles)
    return {
        name: smallest_profile(need_bytes=need, profiles=available, what=f"class {name!r}")
        for name, need in needs.items()
    }
