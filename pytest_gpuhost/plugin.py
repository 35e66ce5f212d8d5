"""The pytest11 entry point. Without ``--gpuhost`` it registers options and does nothing else.

Everything that imports docker, pynvml or the suite's machinery lives in
``pytest_gpuhost.session`` and is imported only when the suite is asked for.
"""

from __future__ import annotations

import sys

import pytest

from pytest_gpuhost.options import UsageError, add_options, is_enabled, register_markers

ENTRY_POINT = "gpuhost"  # the pytest11 entry point's name (pyproject.toml), what -p no: takes


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_gpuhost import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """``-p pytest_gpuhost.plugin`` registers this module under that name before the entry points
    load, and pytest would then register it again as ``gpuhost`` and stop with a ValueError
    traceback. The entry point is skipped instead: this module is already loaded."""
    if plugin is sys.modules[__name__] and manager.get_plugin(ENTRY_POINT) is None:
        manager.set_blocked(ENTRY_POINT)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    register_markers(config)
    if not is_enabled(config):
        return
    from pytest_gpuhost.facts.nvml import reset_nvml_dead
    from pytest_gpuhost.session import GpuhostSession

    reset_nvml_dead()  # an NVML that hung in an earlier in-process session is tried again
    try:
        GpuhostSession.install(config)
    except UsageError as exc:
        raise pytest.UsageError(f"pytest-gpuhost: {exc}") from None
