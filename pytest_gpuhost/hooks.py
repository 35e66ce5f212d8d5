"""Hook specifications that other plugins and conftest files may implement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_gpuhost.host import Host


@pytest.hookspec(firstresult=True)
def pytest_gpuhost_make_host(config: pytest.Config) -> Host | None:
    """Return the ``Host`` the suite checks, or None for the local machine.

    The plugin's own tests return a ``LocalHost(root=...)`` that replays captures of real
    GPU hosts; fleet support returns remote hosts.
    """
