"""pytest-xdist's ``--dist loadgroup`` in a fleet run: each host's checks on one worker.

xdist groups by the ``@group`` suffix it appends to ``Item._nodeid``; pytest 9.2 keeps node ids
elsewhere, so the suffix never reaches the scheduler and every check becomes its own group. The
host is in every test id of a fleet run (``test_x[gpu01]``, ``test_y[gpu01-gpu0-1a2b3c4d]``), so
this scheduler groups by the host itself, on any pytest. Imported only when xdist schedules.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadGroupScheduling


def host_in_nodeid(nodeid: str, hosts: Sequence[str]) -> str | None:
    """The host whose name is one of the ``-``-joined parts of the id's last ``[...]``."""
    start, end = nodeid.rfind("["), nodeid.rfind("]")
    if start < 0 or end < start:
        return None
    ids = nodeid[start + 1 : end]
    for name in sorted(hosts, key=len, reverse=True):  # "gpu1" must not claim "gpu1-b"'s checks
        if ids == name or ids.startswith(f"{name}-") or ids.endswith(f"-{name}") or f"-{name}-" in ids:
            return name
    return None


class HostGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist ships no types
    """``loadgroup`` whose groups are hosts; checks without a host keep xdist's own grouping."""

    def __init__(self, config: pytest.Config, log: Producer | None, hosts: Sequence[str]) -> None:
        super().__init__(config, log)
        self.hosts = tuple(hosts)

    def _split_scope(self, nodeid: str) -> str:
        host = host_in_nodeid(nodeid, self.hosts)
        return f"gpuhost-host:{host}" if host is not None else super()._split_scope(nodeid)
