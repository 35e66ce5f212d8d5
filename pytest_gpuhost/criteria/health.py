"""The verdicts of the health checks: ECC, retired pages, row remapping, MIG, PCIe link, clocks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.health import (
    CLOCK_FAILING,
    CLOCK_REASON_NAMES,
    CLOCK_SW_POWER_CAP,
    CLOCK_SW_THERMAL,
    DATA_CENTRE_BRANDS,
    F_CLOCKS,
    F_ECC_COUNTS,
    F_ECC_MODE,
    F_MIG,
    F_PCIE,
    F_REMAP,
    F_RETIRED,
    EccCounts,
    HealthFacts,
    HealthThresholds,
    PcieLink,
    Unavailable,
)
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.pcie import ClockSample
from pytest_gpuhost.facts.xid import RMA_FIX


@dataclass
class Verdict:
    """What a check found: metrics to print, notes, warnings, failures, or why it does not apply."""

    metrics: list[tuple[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[Diagnosis] = field(default_factory=list)
    failures: list[Diagnosis] = field(default_factory=list)
    skip: str | None = None

    def metric(self, key: str, value: object) -> None:
        self.metrics.append((key, value))

    def fail(self, found: str, cause: str, fix: str) -> None:
        self.failures.append(Diagnosis(found, cause, fix))

    def warn(self, found: str, cause: str, fix: str) -> None:
        self.warnings.append(Diagnosis(found, cause, fix))

    def combined_failure(self) -> Diagnosis | None:
        """All failures as one diagnosis (each part once), or None."""
        if not self.failures:
            return None

        def join(parts: Iterable[str]) -> str:
            return "; ".join(dict.fromkeys(parts))

        return Diagnosis(
            join(d.found for d in self.failures),
            join(d.cause for d in self.failures),
            join(d.fix for d in self.failures),
        )


def unavailable_verdict(
    verdict: Verdict, gpu_name: str, label: str, why: Unavailable | None, field_name: str
) -> bool:
    """Record a field without a value: a skip when unsupported, a failure when reading it failed."""
    if why is None:
        return False
    if why.unsupported:
        verdict.skip = f"not applicable: {field_name} is not supported on {gpu_name} ({why.detail})"
    else:
        verdict.fail(
            f"{field_name} of {label} cannot be read: {why.detail}",
            "the GPU is in a bad state (fallen off the bus, needs a reset) or the driver does not answer",
            "read `sudo dmesg | grep -i -e NVRM -e Xid`; reset the GPU (`sudo nvidia-smi -r -i <index>`) or reboot",
        )
    return True


def reset_fix(index: int) -> str:
    return (
        f"stop every process on GPU {index} (`nvidia-smi --query-compute-apps=pid --format=csv -i {index}`), "
        f"then `sudo nvidia-smi -r -i {index}`; or reboot the host"
    )


def judge_ecc_mode(h: HealthFacts) -> Verdict:
    """ECC on is reported; off on a data-centre GPU is a warning, a pending change one too."""
    v = Verdict()
    if unavailable_verdict(v, h.name, h.label, h.unavailable.get(F_ECC_MODE), F_ECC_MODE):
        return v
    v.metric("ecc_mode_current", "enabled" if h.ecc_current else "disabled")
    v.metric("ecc_mode_pending", "enabled" if h.ecc_pending else "disabled")
    if h.ecc_current is False and (h.brand in DATA_CENTRE_BRANDS):
        v.warn(
            f"ECC is disabled on {h.label}, a data-centre GPU ({h.name})",
            "someone turned ECC off for the extra memory or bandwidth; memory errors then go undetected",
            f"`sudo nvidia-smi -i {h.index} -e 1`, then reset the GPU or reboot",
        )
    elif h.ecc_current is False:
        v.notes.append(f"ECC is disabled on {h.label} ({h.name}, brand {h.brand or 'unknown'})")
    if h.ecc_current is not None and h.ecc_pending is not None and h.ecc_current != h.ecc_pending:
        v.warn(
            f"an ECC mode change is pending on {h.label}: "
            f"current {'on' if h.ecc_current else 'off'}, pending {'on' if h.ecc_pending else 'off'}",
            "the mode was changed but the GPU was not reset since",
            reset_fix(h.index),
        )
    return v


def _ecc_counts_or_skip(v: Verdict, h: HealthFacts) -> EccCounts | None:
    if h.ecc_current is False:
        v.skip = f"not applicable: ECC is disabled on {h.label}, so there are no ECC error counts"
        return None
    if unavailable_verdict(v, h.name, h.label, h.unavailable.get(F_ECC_COUNTS), F_ECC_COUNTS):
        return None
    return h.ecc


def judge_uncorrectable_ecc(h: HealthFacts, thresholds: HealthThresholds) -> Verdict:
    """No uncorrectable ECC error since the driver loaded, nor (by default) ever."""
    v = Verdict()
    counts = _ecc_counts_or_skip(v, h)
    if counts is None:
        return v
    v.metric("ecc_uncorrected_volatile", counts.uncorrected_volatile)
    v.metric("ecc_uncorrected_aggregate", counts.uncorrected_aggregate)
    if counts.uncorrected_volatile:
        v.fail(
            f"{counts.uncorrected_volatile} uncorrectable ECC error(s) on {h.label} since the driver loaded",
            "a memory cell returned data ECC could not correct: the application using it got an error "
            "and the GPU marked the row for remapping",
            reset_fix(h.index) + " to remap the row; if errors come back after the reset, " + RMA_FIX,
        )
    elif (counts.uncorrected_aggregate or 0) > thresholds.aggregate_uncorrectable_max:
        v.fail(
            f"{counts.uncorrected_aggregate} uncorrectable ECC error(s) in the lifetime of {h.label} "
            f"(InfoROM aggregate; the limit is {thresholds.aggregate_uncorrectable_max})",
            "the memory failed uncorrectably in the past; row remapping may have repaired it",
            "check `nvidia-smi -q -d ROW_REMAPPER -i "
            f"{h.index}` (no failure, rows to spare: the repair held); if errors recur, " + RMA_FIX,
        )
    for flag in h.memory_flags:
        if flag in ("unrepairable memory", "SRAM uncorrectable error threshold exceeded"):
            v.fail(f"nvidia-smi reports {flag} on {h.label}", "the GPU's memory is beyond repair", RMA_FIX)
    return v


def judge_correctable_ecc(h: HealthFacts, thresholds: HealthThresholds) -> Verdict:
    """Correctable errors are reported; a high volatile count warns, then fails."""
    v = Verdict()
    counts = _ecc_counts_or_skip(v, h)
    if counts is None:
        return v
    volatile = counts.corrected_volatile
    v.metric("ecc_corrected_volatile", volatile)
    v.metric("ecc_corrected_aggregate", counts.corrected_aggregate)
    if volatile is None:
        return v
    if volatile > thresholds.correctable_fail_above:
        v.fail(
            f"{volatile} correctable ECC errors on {h.label} since the driver loaded "
            f"(fail above {thresholds.correctable_fail_above})",
            "a memory region is degrading: ECC still corrects it, but uncorrectable errors tend to follow",
            reset_fix(h.index) + " so that pending rows are remapped; if the count climbs again, " + RMA_FIX,
        )
    elif volatile > thresholds.correctable_warn_above:
        v.warn(
            f"{volatile} correctable ECC errors on {h.label} since the driver loaded "
            f"(warn above {thresholds.correctable_warn_above})",
            "more single-bit errors than a healthy GPU shows",
            f"watch `nvidia-smi -q -d ECC -i {h.index}`; plan a reset and keep the count",
        )
    return v


def judge_retired_pages(h: HealthFacts) -> Verdict:
    """Older GPUs retire bad pages at the next driver load; a pending one needs a reset."""
    v = Verdict()
    if unavailable_verdict(v, h.name, h.label, h.unavailable.get(F_RETIRED), F_RETIRED):
        return v
    v.metric("retired_pages_pending", h.retired_pages_pending)
    if h.retired_pages_pending:
        v.fail(
            f"a retired page is pending on {h.label}: it takes effect at the next GPU reset",
            "ECC errors made the driver blacklist a memory page; until the reset it stays in use",
            reset_fix(h.index),
        )
    return v


def judge_row_remapping(h: HealthFacts) -> Verdict:
    """Ampere and later remap bad memory rows at reset: pending needs a reset, a failure an RMA."""
    v = Verdict()
    if unavailable_verdict(v, h.name, h.label, h.unavailable.get(F_REMAP), F_REMAP):
        return v
    v.metric("remapped_rows_correctable", h.remapped_corr)
    v.metric("remapped_rows_uncorrectable", h.remapped_unc)
    v.metric("remapped_rows_pending", h.remap_pending)
    v.metric("remapped_rows_failure", h.remap_failure)
    if h.remap_failure:
        v.fail(
            f"row remapping failed on {h.label}",
            "a memory bank ran out of spare rows: the GPU can no longer repair its memory",
            RMA_FIX,
        )
    if h.remap_pending:
        v.fail(
            f"a row remapping is pending on {h.label}",
            "ECC errors marked a memory row for remapping; the remap takes effect at the next GPU reset",
            reset_fix(h.index),
        )
    for flag in h.memory_flags:
        if flag.endswith("repair pending"):
            v.fail(
                f"nvidia-smi reports {flag} on {h.label}",
                "a hardware repair waits for the next GPU reset",
                reset_fix(h.index),
            )
    return v


def judge_mig(h: HealthFacts, expected: str | None) -> Verdict:
    """MIG's current mode is its pending mode, and the expected one when given (--gpuhost-mig)."""
    v = Verdict()
    why = h.unavailable.get(F_MIG)
    if why is not None and why.unsupported and expected == "on":
        v.fail(
            f"MIG is expected on (--gpuhost-mig on) but {h.label} ({h.name}) does not support MIG",
            "MIG exists on A100, A30, H100, H200, B200 and later data-centre GPUs only",
            "run the MIG workloads on MIG-capable GPUs, or drop --gpuhost-mig",
        )
        return v
    if unavailable_verdict(v, h.name, h.label, why, F_MIG):
        return v

    def word(flag: bool | None) -> str:
        return "unknown" if flag is None else ("on" if flag else "off")

    v.metric("mig_current", word(h.mig_current))
    v.metric("mig_pending", word(h.mig_pending))
    if h.mig_pending is not None and h.mig_current != h.mig_pending:
        v.fail(
            f"a MIG mode change is pending on {h.label}: current {word(h.mig_current)}, "
            f"pending {word(h.mig_pending)}",
            "the MIG mode was changed but the GPU has not been reset since; CUDA still sees the old mode",
            f"reboot or `sudo nvidia-smi -i {h.index} -r` to apply the pending MIG mode "
            "(with no process on the GPU)",
        )
    if expected in ("on", "off") and h.mig_current is not None and word(h.mig_current) != expected:
        wanted = 1 if expected == "on" else 0
        v.fail(
            f"MIG is {word(h.mig_current)} on {h.label}, --gpuhost-mig expects {expected}",
            "the GPU's MIG mode differs from the mode this host is meant to run in",
            f"`sudo nvidia-smi -i {h.index} -mig {wanted}`, then reset the GPU (`sudo nvidia-smi -i {h.index} -r`)"
            + (" and create instances (`sudo nvidia-smi mig -cgi <profiles> -C`)" if wanted else ""),
        )
    return v


def gpu_label(gpu: GpuInfo) -> str:
    return f"GPU {gpu.index} ({gpu.pci_bus_id})"


def judge_pcie_link(gpu: GpuInfo, link: PcieLink | None, loaded: bool, why: Unavailable | None) -> Verdict:
    """Current generation and width equal what the GPU and slot allow together.

    Measured under load, a lower generation or width fails. At idle the link may drop to a lower
    generation to save power, so a lower generation is only a note; the width does not drop at
    idle, so a narrower link fails either way.
    """
    v = Verdict()
    label = gpu_label(gpu)
    if link is None:
        if not unavailable_verdict(v, gpu.name, label, why, F_PCIE):
            v.skip = f"not applicable: {F_PCIE} is not supported on {gpu.name}"
        return v
    v.metric("pcie_gen_current", link.current_gen)
    v.metric("pcie_gen_max", link.max_gen)
    v.metric("pcie_gen_gpu_max", link.gpu_max_gen)
    v.metric("pcie_width_current", link.current_width)
    v.metric("pcie_width_max", link.max_width)
    v.metric("pcie_measured_under_load", loaded)
    v.metric("pcie_source", link.source)
    cause = (
        "the card, riser or cable is badly seated or damaged, the slot is wired narrower than it looks, "
        "or the BIOS limits the link"
    )
    fix = (
        f"reseat the GPU and its riser; compare `sudo lspci -vv -s {gpu.pci_bus_id} | grep -e LnkCap -e LnkSta`; "
        "set the slot to Auto/the highest generation in the BIOS; move the GPU to another slot to isolate it"
    )
    if link.current_width is not None and link.max_width is not None and link.current_width < link.max_width:
        v.fail(
            f"the PCIe link of {label} is downtrained to x{link.current_width} "
            f"(the GPU and slot allow x{link.max_width})",
            cause,
            fix,
        )
    if link.current_gen is not None and link.max_gen is not None and link.current_gen < link.max_gen:
        text = f"the PCIe link of {label} runs at Gen{link.current_gen} (the GPU and slot allow Gen{link.max_gen})"
        if loaded:
            v.fail(text + " under load", cause, fix)
        else:
            v.notes.append(
                text + " at idle; idle GPUs lower the link speed to save power, so this was not judged "
                "(a load runs from the container tier on)"
            )
    if link.gpu_max_gen is not None and link.max_gen is not None and link.max_gen < link.gpu_max_gen:
        v.warn(
            f"the slot limits {label} to PCIe Gen{link.max_gen}; the GPU supports Gen{link.gpu_max_gen}",
            "an older slot, riser or PCIe switch, or a BIOS setting, caps the link below the GPU's speed",
            "use a slot of the GPU's generation, or raise the slot's PCIe speed setting in the BIOS",
        )
    return v


def _reason_names(mask: int) -> str:
    return ", ".join(name for bit, name in CLOCK_REASON_NAMES.items() if mask & bit) or "none"


def judge_clocks(
    gpu: GpuInfo, clocks: ClockSample | None, why: Unavailable | None, thresholds: HealthThresholds
) -> Verdict:
    """Hardware slowdown, thermal slowdown and power brake fail; the software power cap is reported."""
    v = Verdict()
    label = gpu_label(gpu)
    if clocks is None:
        if not unavailable_verdict(v, gpu.name, label, why, F_CLOCKS):
            v.skip = f"not applicable: {F_CLOCKS} is not supported on {gpu.name}"
        return v
    v.metric("clock_event_reasons", f"{clocks.mask:#x}")
    v.metric("clock_event_reasons_names", _reason_names(clocks.mask).replace(" ", "_"))
    v.metric("clock_samples", clocks.samples)
    v.metric("clock_measured_under_load", clocks.loaded)
    needed = min(thresholds.clock_reason_min_samples, clocks.samples)
    when = f"in {{count}} of {clocks.samples} samples {'under load' if clocks.loaded else 'at idle'}"
    for bit, cause in CLOCK_FAILING.items():
        count = clocks.counts.get(bit, 0)
        if count >= max(needed, 1):
            v.fail(
                f"{label} reports {CLOCK_REASON_NAMES[bit]} ({bit:#x}) " + when.format(count=count),
                cause,
                "check temperatures and power draw under load (`nvidia-smi -q -d TEMPERATURE,POWER,PERFORMANCE "
                f"-i {gpu.index}`), the fans and airflow, and the power supply and cabling",
            )
        elif count:
            v.notes.append(f"{CLOCK_REASON_NAMES[bit]} seen once in {clocks.samples} samples: not judged")
    if clocks.counts.get(CLOCK_SW_THERMAL, 0):
        v.warn(
            f"{label} reports software thermal slowdown "
            + when.format(count=clocks.counts[CLOCK_SW_THERMAL]),
            "the GPU is above its target temperature and the driver lowers clocks to cool it",
            "improve cooling (airflow, inlet temperature, fan curve); `nvidia-smi -q -d TEMPERATURE`",
        )
    if clocks.counts.get(CLOCK_SW_POWER_CAP, 0):
        v.notes.append(
            f"software power cap active {when.format(count=clocks.counts[CLOCK_SW_POWER_CAP])}: the GPU "
            "draws its power limit (normal under a heavy load)"
        )
    if not clocks.loaded:
        v.notes.append("read at idle: a slowdown that appears only under load is not seen here")
    return v
