"""The tests' fixtures and hooks, and nothing a test module imports.

Helpers live in ``tests/*_support.py`` (and ``dockerlab.py``, ``faultproxy.py``,
``toolkit_daemon.py``), imported by plain name: a test module that imported from ``conftest``
would break under ``--import-mode=importlib``, where ``conftest`` is not a module on
``sys.path`` (``tests/test_layout_tests.py`` keeps it so). The fixtures here are the one
definition of each daemon a test module needs: the machine's Docker daemon and its busybox
image, the CI toolkit daemon.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from captures_support import FAKES
from docker_support import busybox_image, docker_client_or_skip
from pytester_support import GpuhostPytester
from sshd_support import SshLab, sshd_or_skip
from toolkit_daemon import ToolkitDaemon, connect_toolkit_daemon


def _preload_plugin_modules() -> None:
    """Import the plugin's lazily imported modules before any pytester run snapshots sys.modules.

    In-process pytester runs drop the modules a run imported, but ``from pytest_gpuhost import
    fixtures`` would still find the first run's module as a package attribute, holding that
    run's stash key. Imported here once, they stay for every run.
    """
    import pytest_gpuhost

    for info in pkgutil.walk_packages(pytest_gpuhost.__path__, "pytest_gpuhost.", onerror=lambda name: None):
        with contextlib.suppress(Exception):
            importlib.import_module(info.name)


_preload_plugin_modules()


@pytest.fixture(autouse=True)
def _nvml_alive_again() -> None:
    """A test whose fake NVML hangs marks NVML dead for the process: the next test starts afresh."""
    from pytest_gpuhost.facts.nvml import reset_nvml_dead

    reset_nvml_dead()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds and installs the wheel (~10 s); deselect with -m 'not packaging'"
    )


@pytest.fixture
def gpuhost_pytester(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> GpuhostPytester:
    return GpuhostPytester(pytester, monkeypatch, tmp_path_factory.mktemp("gpuhost-fake"))


@pytest.fixture
def fake_nvml() -> Any:
    """The fake pynvml as a fresh module, for ``read_nvml(loader=...)``; not left in sys.modules."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpuhost_fake_pynvml", FAKES / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the daemons ----------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    """Loopback OpenSSH servers for the fleet tests (``lab.start(NAME)``), stopped afterwards;
    skips where this machine has no sshd."""
    sshd_or_skip()
    lab = SshLab(tmp_path_factory.mktemp("sshlab"))
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    """A client of this machine's Docker daemon; skips without one (fails under CI)."""
    return docker_client_or_skip()


@pytest.fixture(scope="module")
def image(client: docker.DockerClient) -> str:
    """The local busybox image (``docker_support.TEST_IMAGE``): imported once, as no registry is reachable."""
    return busybox_image(client)


@pytest.fixture(scope="session")
def toolkit_daemon() -> Iterator[ToolkitDaemon]:
    """The CI toolkit daemon (``.ci/toolkit-daemon.sh``); skips without it (fails under CI)."""
    with connect_toolkit_daemon() as daemon:
        yield daemon
