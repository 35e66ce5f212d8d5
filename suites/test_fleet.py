"""Fleet runs: the host answers over its connection before any other check runs on it.

Collected only when remote or several hosts are checked (testinfra's ``--hosts``); docs/fleets.md.
"""

from __future__ import annotations

import pytest

from pytest_gpuhost.diagnosis import fail
from pytest_gpuhost.session import GpuhostSession

pytestmark = pytest.mark.gpuhost_quick


def test_host_reachable(gpuhost_session: GpuhostSession, gpuhost_target: str) -> None:
    """The host runs a command over SSH within the timeout: login, key and coreutils work.

    When it fails, every other check of this host is skipped and names this one; other hosts
    are not affected.
    """
    diagnosis = gpuhost_session.unreachable.get(gpuhost_target)
    if diagnosis is not None:
        fail(diagnosis.found, diagnosis.cause, diagnosis.fix)
