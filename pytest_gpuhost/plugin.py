"""The pytest11 entry point. Without ``--gpuhost`` it registers options and does nothing else.

Everything that imports docker, pynvml or the suite's machinery lives in
``pytest_gpuhost.session`` and is imported only when the suite is asked for.
"""

from __future__ import annotations

import pytest

from pytest_gpuhost.options import UsageError, add_options, is_enabled, register_markers


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_gpuhost import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


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
