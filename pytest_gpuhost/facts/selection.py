"""Which of a host's GPUs the user selected (``--gpuhost-gpus``): by index or by UUID prefix."""

from __future__ import annotations

from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.options import UsageError


def select_gpus(gpus: tuple[GpuInfo, ...], selection: str) -> tuple[GpuInfo, ...]:
    """``all``, or a comma list of indices and UUID prefixes (``0,2`` or ``GPU-042f``)."""
    if selection.strip().lower() == "all":
        return gpus
    chosen: list[GpuInfo] = []
    for token in (t.strip() for t in selection.split(",") if t.strip()):
        if token.isdigit():
            matches = [g for g in gpus if g.index == int(token)]
        else:
            prefix = token.lower().removeprefix("gpu-")
            matches = [g for g in gpus if g.uuid.lower().removeprefix("gpu-").startswith(prefix)]
        if not matches and gpus:
            known = ", ".join(f"{g.index} ({g.uuid})" for g in gpus)
            raise UsageError(f"--gpuhost-gpus {selection!r}: no GPU matches {token!r}; this host has {known}")
        chosen.extend(g for g in matches if g not in chosen)
    return tuple(chosen)
