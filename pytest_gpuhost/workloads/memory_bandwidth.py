"""HBM and PCIe bandwidth for memory.py: device-to-device copies and pinned host copies timed with events, the link read from sysfs while they run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .memory import Device


SYSFS_PCI = "/sys/bus/pci/devices"


def timed_batches(dev: Device, call: Any, inner: int, batches: int) -> list[float]:
    """Seconds per call of ``batches`` timed batches of ``inner`` calls, after one warm-up batch."""
    for _ in range(inner):
        call()
    dev.sync()
    seconds = []
    for _ in range(batches):
        timer = dev.timer()
        timer.start()
        for _ in range(inner):
            call()
        seconds.append(timer.stop() / inner)
    return seconds


def _rate(nbytes: int, seconds: list[float]) -> dict[str, Any]:
    median, best = statistics.median(seconds), min(seconds)
    return {
        "gbps": nbytes / median / 1e9 if median > 0 else None,
        "gbps_best": nbytes / best / 1e9 if best > 0 else None,
        "seconds": median,
    }


def measure_hbm(dev: Device, nbytes: int, slow: int) -> dict[str, Any]:
    """Device-to-device copy bandwidth, read plus written; ``slow`` > 1 repeats each copy (a fault)."""
    torch = dev.torch
    words = nbytes // 4
    src = torch.ones(words, dtype=torch.int32, device=dev.device)
    dst = torch.empty_like(src)

    def copy() -> None:
        for _ in range(slow):
            dst.copy_(src)

    seconds = timed_batches(dev, copy, 10, 5)
    record = {"buffer_bytes": words * 4, "bytes_per_copy": 2 * words * 4, "counted": "read+write"}
    record.update(_rate(2 * words * 4, seconds))
    return record


def read_link(pci_bus_id: str | None) -> dict[str, Any] | None:
    """The PCIe link from sysfs, or None where the container cannot see it."""
    if not pci_bus_id:
        return None
    base = Path(SYSFS_PCI) / pci_bus_id.lower()
    try:
        speed = (base / "current_link_speed").read_text().strip()
        width = int((base / "current_link_width").read_text().strip())
        max_speed = (base / "max_link_speed").read_text().strip()
        max_width = int((base / "max_link_width").read_text().strip())
    except (OSError, ValueError):
        return None
    return {"speed": speed, "width": width, "max_speed": max_speed, "max_width": max_width, "source": "sysfs"}


def measure_pcie(dev: Device, nbytes: int, pci_bus_id: str | None) -> dict[str, Any]:
    """Pinned host<->device copies both ways; the link is read while the H2D copies are queued."""
    torch = dev.torch
    words = nbytes // 4
    on_gpu = dev.kind == "cuda"
    host = torch.ones(words, dtype=torch.int32, pin_memory=on_gpu)
    gpu = torch.empty(words, dtype=torch.int32, device=dev.device)
    link: dict[str, Any] | None = None

    def h2d() -> None:
        gpu.copy_(host, non_blocking=True)

    def d2h() -> None:
        host.copy_(gpu, non_blocking=True)

    h2d_s = timed_batches(dev, h2d, 4, 5)
    for _ in range(8):  # queue ~100 ms of copies, then read the link while they run
        h2d()
    link = read_link(pci_bus_id)
    dev.sync()
    d2h_s = timed_batches(dev, d2h, 4, 5)
    ok = bool(torch.equal(host, torch.ones_like(host)))  # the data survived the round trip
    record: dict[str, Any] = {"bytes": words * 4, "pinned": on_gpu, "link": link, "data_ok": ok}
    record["h2d"] = _rate(words * 4, h2d_s)
    record["d2h"] = _rate(words * 4, d2h_s)
    return record
