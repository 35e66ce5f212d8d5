"""Hook specifications that other plugins and conftest files may implement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_gpuhost.hosts.host import Host

# The supported API (docs/api.md); everything else here is private and may change.
__all__ = ["pytest_gpuhost_make_host"]


@pytest.hookspec(firstresult=True)
def pytest_gpuhost_make_host(config: pytest.Config) -> Host | Sequence[Host] | None:
    """Return the ``Host`` the suite checks, several for a fleet run, or None for the default.

    The default is the hosts of testinfra's ``--hosts`` when given, else the local machine.
    The plugin's own tests return a ``LocalHost(root=...)`` that replays captures of real
    GPU hosts, or several of them to fake a fleet.
    """
