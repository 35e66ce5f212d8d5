"""Host side of ``workloads/p2p.py``: the pairs, the link between each pair, and the verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hardware import floors
from pytest_gpuhost.profiles import Profile


def pair_params(gpus: Sequence[GpuInfo]) -> list[Any]:
    """One parameter per unordered pair, with readable ids (``gpu0-c5fa4f09-gpu1-1b94c864``)."""
    if len(gpus) < 2:
        reason = f"GPU pairs need at least 2 GPUs; {len(gpus)} selected"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-pair")]
    by_index = {g.index: g for g in gpus}
    return [
        pytest.param((by_index[a], by_index[b]), id=f"{by_index[a].test_id}-{by_index[b].test_id}")
        for a, b in floors.gpu_pairs([g.index for g in gpus])
    ]


def workload_args(gpus: Sequence[GpuInfo]) -> list[str]:
    """All pairs by the container's device indices (the container sees the GPUs in this order)."""
    pairs = floors.gpu_pairs(list(range(len(gpus))))
    return ["--pairs", ",".join(f"{a}:{b}" for a, b in pairs)]


def pair_link(profile: Profile, nvlinks_up: int | None) -> floors.Link | None:
    """NVLink when the GPUs have active links (NVML; else the profile's count), else PCIe."""
    links = nvlinks_up if nvlinks_up is not None else (profile.nvlink_links or 0)
    return floors.peer_link(links, profile.nvlink_link_gbps, profile.pcie_generation, profile.pcie_width)


def verdict(
    record: Mapping[str, Any] | None, label: str, link: floors.Link | None, profile: Profile
) -> tuple[list[str], Diagnosis | None]:
    if record is None:
        return [], Diagnosis(
            f"{label}: the P2P workload reported nothing for this pair", "a stale script", "reinstall"
        )
    one, both = record.get("oneway_gbps"), record.get("bothway_gbps")
    metrics = [f"p2p.oneway_gbps={float(one or 0):.1f}", f"p2p.bothway_gbps={float(both or 0):.1f}"]
    if not record.get("peer"):
        return metrics, Diagnosis(
            f"{label}: peer access is not possible between the two GPUs",
            "P2P disabled: PCIe ACS or an IOMMU between them, a VM without P2P, or NVLink down",
            "`nvidia-smi topo -p2p r` and `nvidia-smi topo -m`; disable ACS on the switches above the GPUs "
            "(BIOS) or pass through the GPUs with P2P; check `nvidia-smi nvlink -s`",
        )
    if not record.get("data_ok"):
        return metrics, Diagnosis(
            f"{label}: data copied between the GPUs came back changed",
            "a link or memory fault",
            "`nvidia-smi nvlink -e`; drain and run `dcgmi diag -r 3`",
        )
    if link is None:
        return [*metrics, "p2p.floor=none"], None
    least = floors.floor(link.gbps_each_way, profile.p2p_floor)
    metrics += [f"p2p.link={link.label}", f"p2p.floor_gbps={least:.1f}"]
    for name, value, scale in (("one way", one, 1), ("both ways", both, 2)):
        if isinstance(value, (int, float)) and value < least * scale:
            return metrics, Diagnosis(
                f"{label}: P2P {name} {value:.1f} GB/s, below the floor {least * scale:.1f} GB/s "
                f"({profile.p2p_floor:.0%} of {link.label} at {link.gbps_each_way:.0f} GB/s each way)",
                "a link down or degraded (NVLink errors, a link trained slower), or traffic through host memory",
                "`nvidia-smi nvlink -s` and `-e`, `nvidia-smi topo -m`; re-seat or RMA the board",
            )
    return metrics, None
