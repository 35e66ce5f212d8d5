"""Host side of ``workloads/allreduce.py``: the command line, the floor, and the verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hardware import floors
from pytest_gpuhost.profiles import Profile

SIZES = (2**28, 2**30, 2**32)  # 256 MiB to 4 GiB, as nccl-tests' large-message points
FLOOR_FROM_BYTES = 2**30  # smaller messages are latency-bound: their bus bandwidth is reported only


def workload_args(ranks: int, wrong_rank: int | None) -> list[str]:
    args = ["--ranks", str(ranks), "--sizes", ",".join(str(s) for s in SIZES)]
    return [*args, "--inject-wrong", str(wrong_rank)] if wrong_rank is not None else args


def link_gbps(profile: Profile) -> tuple[float, str] | None:
    """The per-direction rate of the slowest link each GPU reduces over: its NVLinks, else PCIe."""
    if profile.nvlink_links and profile.nvlink_link_gbps:
        return floors.nvlink_gbps(profile.nvlink_links, profile.nvlink_link_gbps), f"NV{profile.nvlink_links}"
    if profile.pcie_generation and profile.pcie_width:
        rate = floors.pcie_link_gbps(profile.pcie_generation, profile.pcie_width)
        return rate, f"PCIe Gen{profile.pcie_generation} x{profile.pcie_width}"
    return None


def verdict(
    record: Mapping[str, Any], gpus: Sequence[GpuInfo], profile: Profile
) -> tuple[list[str], Diagnosis | None]:
    """Exact values on every rank first, then bus bandwidth at 1 GiB and up against the floor."""
    sizes = [s for s in record.get("sizes") or [] if isinstance(s, dict)]
    if not sizes:
        return [], Diagnosis("the all-reduce workload reported no sizes", "a stale script", "reinstall")
    metrics = []
    for s in sizes:
        mib = int(s["bytes"]) // 2**20
        metrics.append(f"allreduce.busbw_gbps_{mib}mib={float(s.get('busbw_gbps') or 0):.1f}")
    for s in sizes:
        wrong: Mapping[str, int] = s.get("wrong") or {}
        if wrong:
            names = ", ".join(
                f"GPU {gpus[int(r)].index} ({gpus[int(r)].uuid})" if int(r) < len(gpus) else f"rank {r}"
                for r in sorted(wrong, key=int)
            )
            first = (s.get("first") or [{}])[0]
            where = (
                f": element {first['index']} is {first['got']!r}, expected {first['want']!r}" if first else ""
            )
            return metrics, Diagnosis(
                f"the all-reduce of {int(s['bytes']) // 2**20} MiB gave wrong values on {names} "
                f"({sum(wrong.values())} element(s)){where}",
                "data corrupted in flight (NVLink, PCIe or NVSwitch errors) or on the GPU that reports it",
                "read `nvidia-smi nvlink -e` and `nvidia-smi -q -d ECC`, `sudo dmesg | grep -i xid`; re-run; "
                "if it repeats, drain the node and run `dcgmi diag -r 3`",
            )
    link = link_gbps(profile)
    if link is None:
        metrics.append("allreduce.floor=none")
        return metrics, None
    rate, name = link
    least = floors.floor(rate, profile.allreduce_floor)
    metrics.append(f"allreduce.floor_gbps={least:.1f}")
    for s in sizes:
        busbw = s.get("busbw_gbps")
        if int(s["bytes"]) >= FLOOR_FROM_BYTES and isinstance(busbw, (int, float)) and busbw < least:
            return metrics, Diagnosis(
                f"all-reduce over {len(gpus)} GPUs at {int(s['bytes']) // 2**20} MiB: bus bandwidth {busbw:.1f} GB/s, "
                f"below the floor {least:.1f} GB/s ({profile.allreduce_floor:.0%} of {name} = {rate:.0f} GB/s)",
                "NCCL is not using NVLink (P2P disabled, a link down, the fabric manager not running) or the GPUs "
                "talk through host memory",
                "`nvidia-smi topo -m`, `nvidia-smi nvlink -s`; run with NCCL_DEBUG=INFO to see the transport",
            )
    return metrics, None
