"""The PCIe link from sysfs, and the link and clock event reasons sampled while a load runs (an idle link trains down)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from pytest_gpuhost.facts.health import CLOCK_REASON_NAMES, LiveReading, PcieLink, Unavailable
from pytest_gpuhost.facts.model import normalize_pci_bus_id
from pytest_gpuhost.hosts.host import Host

PCI_DEVICES = "/sys/bus/pci/devices"

T = TypeVar("T")


_GTS_TO_GEN = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6, 128.0: 7}


def pcie_gen_from_speed(text: str | None) -> int | None:
    """``32.0 GT/s PCIe`` (sysfs ``*_link_speed``) to generation 5."""
    if not text:
        return None
    match = re.match(r"\s*(\d+(?:\.\d+)?)\s*GT/s", text)
    return _GTS_TO_GEN.get(float(match.group(1))) if match else None


def _int_file(host: Host, path: str) -> int | None:
    try:
        text = (host.read_text(path) or "").strip()
    except PermissionError:
        return None
    return int(text) if text.isdigit() else None


def read_sysfs_link(host: Host, pci_bus_id: str) -> PcieLink | None:
    """The link from ``/sys/bus/pci/devices/<address>``; the slot's limit from the upstream bridge.

    The device's ``max_link_*`` is the GPU's own capability; the link can reach only the lesser of
    that and the port above it (absent when the GPU sits on a root bus, as in most VMs).
    """
    address = normalize_pci_bus_id(pci_bus_id)
    base = f"{PCI_DEVICES}/{address}"
    try:
        current_gen = pcie_gen_from_speed(host.read_text(f"{base}/current_link_speed"))
        gpu_max_gen = pcie_gen_from_speed(host.read_text(f"{base}/max_link_speed"))
    except PermissionError:
        return None
    current_width = _int_file(host, f"{base}/current_link_width")
    gpu_max_width = _int_file(host, f"{base}/max_link_width")
    if None in (current_gen, gpu_max_gen, current_width, gpu_max_width):
        return None
    max_gen, max_width = gpu_max_gen, gpu_max_width
    target = host.readlink(f"{PCI_DEVICES}/{address}") or ""
    parent = target.rstrip("/").split("/")[-2] if target.count("/") >= 2 else ""
    if re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", parent):
        slot_gen = pcie_gen_from_speed(host.read_text(f"{PCI_DEVICES}/{parent}/max_link_speed"))
        slot_width = _int_file(host, f"{PCI_DEVICES}/{parent}/max_link_width")
        if slot_gen is not None and max_gen is not None:
            max_gen = min(max_gen, slot_gen)
        if slot_width is not None and max_width is not None:
            max_width = min(max_width, slot_width)
    return PcieLink(current_gen, max_gen, current_width, max_width, gpu_max_gen, source="sysfs")


LoadFn = Callable[[], contextlib.AbstractContextManager[object]]


@dataclass(frozen=True)
class Sampling:
    warmup_s: float = 0.5
    samples: int = 5
    interval_s: float = 0.2


@dataclass(frozen=True)
class Sampled(Generic[T]):
    readings: tuple[T, ...]
    loaded: bool


def sample_under_load(
    read_fn: Callable[[], T],
    load_fn: LoadFn | None,
    sampling: Sampling = Sampling(),
    sleep: Callable[[float], None] = time.sleep,
) -> Sampled[T]:
    """Read ``sampling.samples`` times while ``load_fn``'s load runs; once, at idle, without one."""
    if load_fn is None:
        return Sampled((read_fn(),), loaded=False)
    readings: list[T] = []
    with load_fn():
        sleep(sampling.warmup_s)
        for number in range(max(1, sampling.samples)):
            if number:
                sleep(sampling.interval_s)
            readings.append(read_fn())
    return Sampled(tuple(readings), loaded=True)


def _max(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summarize_link(sampled: Sampled[PcieLink | None]) -> tuple[PcieLink | None, bool]:
    """The best link seen across the samples (the link trains up under load), and whether loaded."""
    links = [link for link in sampled.readings if link is not None]
    if not links:
        return None, sampled.loaded
    best = PcieLink(
        current_gen=_max(link.current_gen for link in links),
        max_gen=_max(link.max_gen for link in links),
        current_width=_max(link.current_width for link in links),
        max_width=_max(link.max_width for link in links),
        gpu_max_gen=_max(link.gpu_max_gen for link in links),
        source=links[0].source,
    )
    return best, sampled.loaded


def pcie_link_under_load(
    read_fn: Callable[[], PcieLink | None], load_fn: LoadFn | None, sampling: Sampling = Sampling()
) -> tuple[PcieLink | None, bool]:
    """The PCIe link measured while ``load_fn`` loads the GPU (at idle when it is None)."""
    return summarize_link(sample_under_load(read_fn, load_fn, sampling))


@dataclass(frozen=True)
class ClockSample:
    """Clock-event reasons over the samples: each bit's count, and how many samples were read."""

    counts: Mapping[int, int]
    samples: int
    loaded: bool

    @property
    def mask(self) -> int:
        combined = 0
        for bit, count in self.counts.items():
            if count:
                combined |= bit
        return combined


def summarize_clocks(sampled: Sampled[int | None]) -> ClockSample | None:
    masks = [m for m in sampled.readings if m is not None]
    if not masks:
        return None
    counts = {bit: sum(1 for m in masks if m & bit) for bit in CLOCK_REASON_NAMES}
    return ClockSample(counts, len(masks), sampled.loaded)


def clock_reasons_under_load(
    read_fn: Callable[[], int | None], load_fn: LoadFn | None, sampling: Sampling = Sampling()
) -> ClockSample | None:
    """Clock-event reasons sampled while ``load_fn`` loads the GPU (once at idle when it is None)."""
    return summarize_clocks(sample_under_load(read_fn, load_fn, sampling))


@dataclass(frozen=True)
class LiveMeasurement:
    """PCIe link and clock reasons from one sampling run; ``unavailable`` from its first reading."""

    link: PcieLink | None
    clocks: ClockSample | None
    loaded: bool
    unavailable: Mapping[str, Unavailable]


def measure_under_load(
    read_fn: Callable[[], LiveReading], load_fn: LoadFn | None, sampling: Sampling = Sampling()
) -> LiveMeasurement:
    """Both live checks from one load: the link and the clock reasons are read together."""
    sampled = sample_under_load(read_fn, load_fn, sampling)
    link, loaded = summarize_link(Sampled(tuple(r.pcie for r in sampled.readings), sampled.loaded))
    clocks = summarize_clocks(Sampled(tuple(r.clock_reasons for r in sampled.readings), sampled.loaded))
    first = sampled.readings[0].unavailable if sampled.readings else {}
    return LiveMeasurement(link, clocks, loaded, first)
