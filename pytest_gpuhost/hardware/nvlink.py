"""NVLink state from NVML: links up against the model's count, and the links' error counters.

Read in the quick tier (no container, no load): a dead link or a link that keeps replaying
shows in NVML before any bandwidth test runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.profiles import Profile

MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS on Hopper; older pynvml builds lack the constant
# NVML_NVLINK_ERROR_DL_*: the data-link layer's counters per link.
COUNTERS = {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3}


@dataclass(frozen=True)
class NvlinkState:
    """One GPU's links: how many NVML lists, how many are up, and the nonzero error counters."""

    links: int
    up: int
    errors: dict[str, int] = field(default_factory=dict)  # "link 3 replay" -> count
    unsupported: str | None = None


@contextlib.contextmanager
def _session(nvml: Any) -> Iterator[None]:
    nvml.nvmlInit()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def read_nvlink(nvml: Any, uuid: str) -> NvlinkState:
    """The GPU's NVLinks through NVML (call under a timeout); ``unsupported`` says why none."""
    get_state = getattr(nvml, "nvmlDeviceGetNvLinkState", None)
    get_error = getattr(nvml, "nvmlDeviceGetNvLinkErrorCounter", None)
    if get_state is None:
        return NvlinkState(0, 0, unsupported="this NVML has no nvmlDeviceGetNvLinkState")
    with _session(nvml):
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        links = up = 0
        errors: dict[str, int] = {}
        first_error: str | None = None
        for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", MAX_LINKS))):
            try:
                state = get_state(handle, link)
            except nvml.NVMLError as exc:  # Not Supported / Invalid Argument past the last link
                first_error = first_error or str(exc)
                continue
            links += 1
            if int(state) != 1:  # NVML_FEATURE_ENABLED
                continue
            up += 1
            for name, counter in COUNTERS.items():
                if get_error is None:
                    break
                with contextlib.suppress(nvml.NVMLError):
                    value = int(get_error(handle, link, counter))
                    if value:
                        errors[f"link {link} {name}"] = value
    if links == 0:
        return NvlinkState(0, 0, unsupported=f"NVML: {first_error or 'no NVLink'}")
    return NvlinkState(links, up, errors)


def verdict(
    state: NvlinkState, label: str, profile: Profile, gpu_count: int
) -> tuple[list[str], Diagnosis | None, str | None]:
    """(metrics, failure, skip reason)."""
    expected = profile.nvlink_links
    if not expected:
        return [], None, f"{profile.name} has no NVLinks in its profile"
    if state.unsupported is not None:  # P2P and the all-reduce still measure the links
        return [], None, f"{label}: NVML reports no NVLink state here ({state.unsupported})"
    metrics = [
        f"nvlink.up={state.up}",
        f"nvlink.expected={expected}",
        f"nvlink.errors={sum(state.errors.values())}",
    ]
    if state.up == 0 and gpu_count < 2:
        return metrics, None, f"{label}: no NVLink up on a host with one GPU (no peer to link to)"
    if state.up != expected:
        seen = f"{state.up} of {state.links} links up"
        return (
            metrics,
            Diagnosis(
                f"{label}: {seen}; {profile.name} has {expected}",
                "a link down: a board or NVSwitch fault, a GPU not seated, or the fabric manager not running",
                "`nvidia-smi nvlink -s -i <index>`; `systemctl status nvidia-fabricmanager`; re-seat or RMA the board",
            ),
            None,
        )
    if state.errors:
        what = ", ".join(f"{k} {v}" for k, v in sorted(state.errors.items()))
        return (
            metrics,
            Diagnosis(
                f"{label}: NVLink errors: {what}",
                "a link that retransmits or retrains: signal integrity on the board or NVSwitch tray",
                "`nvidia-smi nvlink -e -i <index>`; reset the counters, re-run a load and read them again; RMA if they grow",
            ),
            None,
        )
    return metrics, None, None
