"""The verdicts on Xid events: which codes fail a GPU, which only warn, and which the catalogue does not list."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pytest_gpuhost.criteria.health import Verdict, reset_fix
from pytest_gpuhost.facts.health import HealthThresholds
from pytest_gpuhost.facts.model import normalize_pci_bus_id
from pytest_gpuhost.facts.xid import XID_KINDS_FIX, KernelLog, XidEvent, xid_info


def judge_xids(
    label: str, events: Sequence[XidEvent], log: KernelLog, thresholds: HealthThresholds, index: int
) -> Verdict:
    """Xids of one GPU since boot: application Xids are reported, every other one fails."""
    v = Verdict()
    if log.text is None:
        v.skip = (
            f"the kernel log cannot be read: {log.error}; run as root, or "
            "`sudo sysctl kernel.dmesg_restrict=0`, or add the user to the adm group"
        )
        return v
    v.metric("xid_log_source", (log.source or "").replace(" ", "_"))
    v.metric("xid_events", len(events))
    by_code: dict[int, list[XidEvent]] = {}
    for event in events:
        by_code.setdefault(event.code, []).append(event)
    for code, found in sorted(by_code.items()):
        info = xid_info(code)
        v.metric(f"xid_{code}", len(found))
        example = found[-1].line
        if code in thresholds.informational_xids:
            v.notes.append(f"Xid {code} x{len(found)} ({info.meaning}); last: {example}")
            continue
        reset = reset_fix(index)
        v.fail(
            f"Xid {code} on {label} since boot, {len(found)} time(s): {info.meaning}; last: {example}",
            f"Xid {code}: {info.meaning}",
            XID_KINDS_FIX[info.kind].format(reset=reset, index=index),
        )
    return v


def judge_unlisted_xids(
    events: Sequence[XidEvent], known_addresses: Iterable[str], log: KernelLog
) -> Verdict:
    """Xids of PCI addresses that no listed GPU has: a GPU that fell off the bus is no longer listed."""
    v = Verdict()
    if log.text is None:
        v.skip = f"the kernel log cannot be read: {log.error}"
        return v
    known = {normalize_pci_bus_id(a).rsplit(".", 1)[0] for a in known_addresses if a}
    stray = [e for e in events if e.pci not in known]
    v.metric("xid_events_unlisted_gpus", len(stray))
    for pci in sorted({e.pci for e in stray}):
        mine = [e for e in stray if e.pci == pci]
        codes = sorted({e.code for e in mine})
        v.fail(
            f"Xid {', '.join(map(str, codes))} since boot on PCI {pci}, which no listed GPU has; "
            f"last: {mine[-1].line}",
            "; ".join(f"Xid {c}: {xid_info(c).meaning}" for c in codes),
            XID_KINDS_FIX["bus"],
        )
    return v
