"""The arithmetic of the hardware tier: rates, floors from links and profiles, cross-GPU spread.

Pure Python so that every number a check compares is unit-tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Usable GB/s per lane and direction after line encoding: Gen1-2 8b/10b, Gen3-5 128b/130b,
# Gen6 FLIT mode (242 of 256 bytes carry data). PCIe Base Specification rates 2.5 ... 64 GT/s.
_GT_PER_S = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}
_ENCODING = {1: 8 / 10, 2: 8 / 10, 3: 128 / 130, 4: 128 / 130, 5: 128 / 130, 6: 242 / 256}


def pcie_lane_gbps(generation: int) -> float:
    """GB/s one lane carries each way: Gen5 32 GT/s x 128/130 / 8 = 3.94."""
    if generation not in _GT_PER_S:
        raise ValueError(f"unknown PCIe generation {generation}")
    return _GT_PER_S[generation] * _ENCODING[generation] / 8.0


def pcie_link_gbps(generation: int, width: int) -> float:
    """The link's raw rate each way: Gen5 x16 = 63.0 GB/s."""
    if width < 1:
        raise ValueError(f"PCIe width {width}")
    return pcie_lane_gbps(generation) * width


def gen_from_speed(text: str | None) -> int | None:
    """sysfs ``current_link_speed`` (``32.0 GT/s PCIe``) to a generation."""
    if not text:
        return None
    try:
        rate = float(text.split()[0])
    except (ValueError, IndexError):
        return None
    return next((gen for gen, gts in _GT_PER_S.items() if abs(gts - rate) < 0.01), None)


def rate_gbps(nbytes: float, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    return nbytes / seconds / 1e9


def copy_bytes(buffer_bytes: int) -> int:
    """A device-to-device copy reads and writes its buffer: 2 x its size, as nvbandwidth counts."""
    return 2 * buffer_bytes


def bus_bandwidth(algbw_gbps: float, ranks: int) -> float:
    """nccl-tests' all-reduce bus bandwidth: algbw x 2 (n - 1) / n, comparable across GPU counts."""
    if ranks < 1:
        raise ValueError("ranks must be at least 1")
    return algbw_gbps * 2.0 * (ranks - 1) / ranks


def algbw_gbps(nbytes: int, seconds: float) -> float:
    """All-reduce algorithm bandwidth: the buffer size over the time, as nccl-tests reports it."""
    return rate_gbps(nbytes, seconds)


@dataclass(frozen=True)
class Link:
    """What connects two GPUs: ``nvlink`` with a count of links, else ``pcie``."""

    kind: str
    links: int = 0
    gbps_each_way: float = 0.0

    @property
    def label(self) -> str:
        return f"NV{self.links}" if self.kind == "nvlink" else "PCIe"


def nvlink_gbps(links: int, link_gbps: float) -> float:
    return links * link_gbps


def peer_link(
    nvlinks_between: int, link_gbps: float | None, pcie_generation: int | None, pcie_width: int | None
) -> Link | None:
    """The link between a pair from the topology: NVLink when they share links, else PCIe."""
    if nvlinks_between > 0 and link_gbps:
        return Link("nvlink", nvlinks_between, nvlink_gbps(nvlinks_between, link_gbps))
    if pcie_generation and pcie_width:
        return Link("pcie", 0, pcie_link_gbps(pcie_generation, pcie_width))
    return None


def floor(rate: float, fraction: float) -> float:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} not in (0, 1]")
    return rate * fraction


def slower_than_best(values: Mapping[str, float], tolerance: float) -> list[tuple[str, float, float]]:
    """``(label, value, best)`` of each value more than ``tolerance`` below the best of them all."""
    present = {k: v for k, v in values.items() if v is not None and v > 0}
    if len(present) < 2:
        return []
    best = max(present.values())
    return [(k, v, best) for k, v in present.items() if v < best * (1.0 - tolerance)]


def ecc_increase(before: Mapping[str, int | None], after: Mapping[str, int | None]) -> dict[str, int]:
    """Counters that grew between two readings (a counter missing from either is not compared)."""
    grown = {}
    for name, old in before.items():
        new = after.get(name)
        if old is not None and new is not None and new > old:
            grown[name] = new - old
    return grown


def gpu_pairs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Every unordered pair of GPUs: 28 for 8 GPUs."""
    return [(a, b) for i, a in enumerate(indices) for b in indices[i + 1 :]]
