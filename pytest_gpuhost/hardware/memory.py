"""Host side of ``workloads/memory.py``: one run per GPU, ECC read around it, and the verdicts.

The workload measures; this module decides. Each verdict is a ``Diagnosis`` naming the GPU, or
None; the figures it compared are returned for the JUnit system-out and the JSON report.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.health import HealthFacts
from pytest_gpuhost.hardware import floors
from pytest_gpuhost.profiles import Profile

RMA = (
    "re-run the check; if it repeats on this GPU, read `nvidia-smi -q -d ECC,ROW_REMAPPER` and "
    "`sudo dmesg | grep -i xid`, run `dcgmi diag -r 3`, then drain the GPU and RMA it"
)
# The fault-injection specs (test only) the memory workload understands, per GPU index.
FAULT_KINDS = ("flip", "slow", "alloc", "allreduce")
DEFAULT_FLIP = "address:123457"


@dataclass(frozen=True)
class Fault:
    kind: str
    target: int  # GPU index (rank for allreduce)
    value: str = ""


def parse_faults(specs: tuple[str, ...]) -> list[Fault]:
    """``flip:GPU[:PATTERN:WORD]``, ``slow:GPU[:FACTOR]``, ``alloc:GPU``, ``allreduce:RANK``."""
    faults = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        target, _, value = rest.partition(":")
        if kind not in FAULT_KINDS or not target.isdigit():
            raise ValueError(
                f"--gpuhost-hardware-fault {spec!r}: expected flip:GPU[:PATTERN:WORD], slow:GPU[:FACTOR], "
                "alloc:GPU or allreduce:RANK"
            )
        faults.append(Fault(kind, int(target), value))
    return faults


def workload_args(gpu_index: int, passes: int, faults: list[Fault]) -> list[str]:
    """The memory workload's command line for the host GPU ``gpu_index`` (index 0 in its container)."""
    args = ["--gpu-index", "0", "--passes", str(passes)]
    for fault in faults:
        if fault.target != gpu_index:
            continue
        if fault.kind == "flip":
            args += ["--inject-flip", fault.value or DEFAULT_FLIP]
        elif fault.kind == "slow":
            args += ["--inject-slow", fault.value or "3"]
        elif fault.kind == "alloc":
            args += ["--inject-alloc-limit", str(2**30)]
    return args


# -- ECC before and after -------------------------------------------------------------------------


def ecc_counters(facts: HealthFacts | None) -> dict[str, int | None]:
    """The counters whose growth during a pattern test fails it."""
    if facts is None:
        return {}
    ecc = facts.ecc
    return {
        "uncorrectable (volatile)": ecc.uncorrected_volatile if ecc else None,
        "uncorrectable (aggregate)": ecc.uncorrected_aggregate if ecc else None,
        "correctable (volatile)": ecc.corrected_volatile if ecc else None,
        "correctable (aggregate)": ecc.corrected_aggregate if ecc else None,
        "remapped rows (correctable)": facts.remapped_corr,
        "remapped rows (uncorrectable)": facts.remapped_unc,
        "row remapping pending": int(facts.remap_pending) if facts.remap_pending is not None else None,
        "row remapping failure": int(facts.remap_failure) if facts.remap_failure is not None else None,
    }


@dataclass
class MemoryOutcome:
    """One GPU's run: the workload's record (or why there is none) and ECC around it."""

    record: dict[str, Any] | None
    failure: Diagnosis | None
    ecc_before: dict[str, int | None] = field(default_factory=dict)
    ecc_after: dict[str, int | None] = field(default_factory=dict)


def run_with_ecc(
    read_health: Callable[[], HealthFacts | None],
    run: Callable[[], tuple[dict[str, Any] | None, Diagnosis | None]],
) -> MemoryOutcome:
    before = ecc_counters(read_health())
    record, failure = run()
    after = ecc_counters(read_health())
    return MemoryOutcome(record, failure, before, after)


# -- verdicts ---------------------------------------------------------------------------------------


def hbm_gbps(record: Mapping[str, Any] | None) -> float | None:
    hbm = (record or {}).get("hbm") or {}
    value = hbm.get("gbps")
    return float(value) if isinstance(value, (int, float)) else None


def hbm_verdict(
    label: str, record: Mapping[str, Any], profile: Profile, host_gbps: Mapping[str, float]
) -> tuple[list[str], Diagnosis | None]:
    """Copy bandwidth against the profile's floor and against the host's best GPU."""
    hbm = record.get("hbm")
    if not isinstance(hbm, dict) or not isinstance(hbm.get("gbps"), (int, float)):
        return [], Diagnosis(
            f"{label}: the memory workload reported no HBM bandwidth", "a stale script", "reinstall"
        )
    gbps = float(hbm["gbps"])
    metrics = [
        f"hbm.gbps={gbps:.1f}",
        f"hbm.gbps_best={hbm.get('gbps_best')}",
        f"hbm.buffer_bytes={hbm.get('buffer_bytes')}",
    ]
    if profile.hbm_tbps:
        least = floors.floor(profile.hbm_tbps * 1000.0, profile.hbm_floor)
        metrics.append(f"hbm.floor_gbps={least:.0f}")
        if gbps < least:
            return metrics, Diagnosis(
                f"{label}: device-to-device copy {gbps:.0f} GB/s (read + write), below the floor {least:.0f} GB/s "
                f"({profile.hbm_floor:.0%} of {profile.name}'s {profile.hbm_tbps:g} TB/s)",
                "memory clocks held low (power or thermal capping, a low performance state), another process "
                "on the GPU, or a degraded HBM stack",
                "`nvidia-smi -q -d PERFORMANCE,CLOCK` for throttle reasons and memory clock; check that the GPU "
                "is idle; " + RMA,
            )
    slow = [s for s in floors.slower_than_best(host_gbps, profile.cross_gpu_tolerance) if s[0] == label]
    if slow:
        _, value, best = slow[0]
        return metrics, Diagnosis(
            f"{label}: device-to-device copy {value:.0f} GB/s, more than {profile.cross_gpu_tolerance:.0%} below "
            f"the host's best GPU ({best:.0f} GB/s)",
            "one GPU slower than its identical neighbours: low memory clocks, a power cap, or a degraded GPU",
            "compare `nvidia-smi -q -d CLOCK,POWER,PERFORMANCE` of this GPU with the others; " + RMA,
        )
    return metrics, None


def engine_metrics(pat: Mapping[str, Any]) -> list[str]:
    """Which engine ran the patterns (``nvrtc`` kernels or ``torch``) and, for torch on a GPU, why."""
    engine = pat.get("engine")
    if not isinstance(engine, str):
        return []
    metrics = [f"patterns.engine={engine}"]
    reason = pat.get("engine_reason")
    if isinstance(reason, str) and reason:
        metrics.append("patterns.engine_reason=" + shlex.quote(" ".join(reason.split())[:300]))
    detail = pat.get("engine_detail")
    if isinstance(detail, dict):
        for key in ("nvrtc", "arch", "compile_seconds", "load_seconds"):
            if isinstance(detail.get(key), (str, int, float)):
                metrics.append(f"patterns.engine_{key}={shlex.quote(str(detail[key]))}")
    return metrics


def pattern_verdict(label: str, outcome: MemoryOutcome) -> tuple[list[str], Diagnosis | None]:
    """Zero mismatches, the memory it asked for, and no ECC counter grew."""
    record = outcome.record or {}
    pat = record.get("patterns")
    if not isinstance(pat, dict):
        return [], Diagnosis(
            f"{label}: the memory workload reported no pattern test", "a stale script", "reinstall"
        )
    results = [r for r in pat.get("results") or [] if isinstance(r, dict)]
    seconds = float(pat.get("seconds") or 0.0)
    allocated = int(pat.get("allocated_bytes") or 0)
    tested = allocated * len(results)
    rate = tested / seconds / 1e12 if seconds > 0 else 0.0
    metrics = [
        f"patterns.allocated_gib={allocated / 2**30:.2f}",
        f"patterns.free_gib={int(pat.get('free_bytes') or 0) / 2**30:.2f}",
        f"patterns.runs={len(results)}",
        f"patterns.seconds={seconds:.3f}",
        f"patterns.tested_tb_per_s={rate:.2f}",
        *engine_metrics(pat),
    ]
    requested = int(pat.get("requested_bytes") or 0)
    free = int(pat.get("free_bytes") or 0)
    if allocated < requested or not results:
        return metrics, Diagnosis(
            f"{label}: the pattern test got {allocated / 2**30:.1f} GiB of the {requested / 2**30:.1f} GiB it "
            f"asked for ({allocated / free if free else 0:.0%} of the {free / 2**30:.1f} GiB free), so most of "
            "the memory went untested",
            "another process allocated GPU memory during the test, or the memory is fragmented",
            "run the check on an idle GPU (`nvidia-smi` lists the processes holding memory)",
        )
    bad = [r for r in results if int(r.get("mismatches") or 0)]
    if bad:
        total = sum(int(r["mismatches"]) for r in bad)
        first = next((r["first"][0] for r in bad if r.get("first")), None)
        where = (
            f"; first at byte offset {first['offset']:#x} of the tested region ({first['offset'] / 2**30:.2f} GiB): "
            f"read {first['got']:#010x}, wrote {first['want']:#010x}"
            if first
            else ""
        )
        names = ", ".join(sorted({str(r["pattern"]) for r in bad}))
        return metrics, Diagnosis(
            f"{label}: {total} word(s) read back differently from what was written (patterns: {names}){where}",
            "a memory fault: bits that do not hold their value in HBM (with ECC on, errors ECC could not see "
            "or correct)",
            RMA,
        )
    grown = floors.ecc_increase(outcome.ecc_before, outcome.ecc_after)
    if grown:
        what = ", ".join(f"{name} +{count}" for name, count in grown.items())
        return metrics, Diagnosis(
            f"{label}: ECC counters grew during the pattern test: {what}",
            "the memory corrected or could not correct errors while the patterns ran: a weak HBM cell or stack",
            RMA,
        )
    if not outcome.ecc_before:
        metrics.append("patterns.ecc=unavailable")
    return metrics, None


def link_of(record: Mapping[str, Any]) -> tuple[int | None, int | None, str]:
    """(generation, width, where it was read) of the link the workload saw during its copies."""
    pcie = record.get("pcie") or {}
    link = pcie.get("link") if isinstance(pcie, dict) else None
    if not isinstance(link, dict):
        return None, None, "unread"
    gen = floors.gen_from_speed(str(link.get("speed") or ""))
    width = link.get("width")
    return gen, width if isinstance(width, int) else None, "sysfs, during the copies"


def pcie_verdict(
    label: str,
    record: Mapping[str, Any],
    direction: str,
    profile: Profile,
    fallback_link: tuple[int | None, int | None] = (None, None),
) -> tuple[list[str], Diagnosis | None]:
    """One direction's pinned-copy bandwidth against ``pcie_floor`` of the negotiated link."""
    pcie = record.get("pcie")
    if not isinstance(pcie, dict) or not isinstance((pcie.get(direction) or {}).get("gbps"), (int, float)):
        return [], Diagnosis(
            f"{label}: the memory workload reported no PCIe {direction}", "a stale script", "reinstall"
        )
    gbps = float(pcie[direction]["gbps"])
    gen, width, where = link_of(record)
    if gen is None or width is None:
        gen, width = fallback_link
        where = "NVML or sysfs on the host, after the copies"
    metrics = [f"pcie.{direction}_gbps={gbps:.1f}", f"pcie.pinned={pcie.get('pinned')}"]
    if not pcie.get("data_ok", True):
        return metrics, Diagnosis(
            f"{label}: data copied to the GPU and back over PCIe came back changed",
            "a PCIe or memory fault",
            RMA,
        )
    if gen is None or width is None:
        metrics.append("pcie.link=unknown")
        return metrics, None
    link = floors.pcie_link_gbps(gen, width)
    least = floors.floor(link, profile.pcie_floor)
    metrics += [f"pcie.link=Gen{gen}x{width}", f"pcie.link_gbps={link:.1f}", f"pcie.floor_gbps={least:.1f}"]
    if gbps < least:
        return metrics, Diagnosis(
            f"{label}: pinned {direction.upper()} copies {gbps:.1f} GB/s, below the floor {least:.1f} GB/s "
            f"({profile.pcie_floor:.0%} of Gen{gen} x{width} = {link:.1f} GB/s, link read from {where})",
            "a slot or riser that limits the traffic, PCIe ACS/IOMMU settings that route DMA through the root "
            "complex, or a CPU socket far from the GPU (NUMA)",
            "check `nvidia-smi topo -m` and `lspci -vv` (LnkSta), the BIOS PCIe and IOMMU settings, and pin the "
            "process to the GPU's NUMA node",
        )
    return metrics, None
