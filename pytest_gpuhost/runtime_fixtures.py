"""Fixtures of guide steps 3.4 and 3.5: container defaults, the user's path to the daemon, and
the other runtimes (enroot, Podman) found on the host.

Each is gathered once per session, like the toolkit's facts; the checks turn them into metrics,
warnings and diagnoses.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pytest_gpuhost import prefetch
from pytest_gpuhost.container_fixtures import container_timeout
from pytest_gpuhost.containers import NO_GPUS, ContainerFailure, Containers
from pytest_gpuhost.diagnosis import Diagnosis, fail
from pytest_gpuhost.facts.docker_engine import EngineFacts
from pytest_gpuhost.facts.runtimes import (
    DEFAULTS_SCRIPT,
    AccessPath,
    ContainerDefaults,
    LoginUser,
    RuntimeTool,
    access_path,
    parse_container_defaults,
    probe_runtime,
)
from pytest_gpuhost.host import Host
from pytest_gpuhost.remote import is_remote
from pytest_gpuhost.settings import Settings

CHECK_DEFAULTS = "test_container_shm_size"


@dataclass(frozen=True)
class DefaultsProbe:
    """One container with no GPU and no options: what every container gets unless it asks."""

    defaults: ContainerDefaults | None
    diagnosis: Diagnosis | None

    def require(self, owner: bool = False) -> ContainerDefaults:
        """The measured defaults; the owning check fails with the diagnosis, the others skip."""
        if self.defaults is not None:
            return self.defaults
        found = self.diagnosis or Diagnosis("the probe gave no result", "unknown", "rerun with -s")
        if owner:
            fail(found.found, found.cause, found.fix)
        pytest.skip(f"needs the container defaults: {CHECK_DEFAULTS} failed: {found.found}")


@pytest.fixture(scope="session")
def gpuhost_container_defaults(gpuhost_containers: Containers, gpuhost_settings: Settings) -> DefaultsProbe:
    """/dev/shm and the memlock ulimit in a container of the configured image, measured once."""
    image = gpuhost_settings.image
    try:
        result = gpuhost_containers.run(
            image,
            ["sh", "-c", DEFAULTS_SCRIPT],
            check=CHECK_DEFAULTS,
            timeout=container_timeout(gpuhost_settings),
            gpus=NO_GPUS,
        )
    except ContainerFailure as exc:
        return DefaultsProbe(None, exc.diagnosis)
    defaults = parse_container_defaults(result.stdout)
    if not result.ok or not defaults.memlock_text:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        return DefaultsProbe(
            None,
            Diagnosis(
                f"the probe of /dev/shm and `ulimit -l` in {image} exited with {result.exit_code}: {tail[0]}",
                "the image has no /bin/sh, or the container did not start in time",
                "choose an image with /bin/sh for --gpuhost-image",
            ),
        )
    return DefaultsProbe(defaults, None)


@pytest.fixture(scope="session")
def gpuhost_login(pytestconfig: pytest.Config, gpuhost_host: Host, gpuhost_settings: Settings) -> LoginUser:
    """The user whose containers these are: this process's user, or the SSH login on a remote host."""
    return prefetch.value(
        pytestconfig,
        "gpuhost_login",
        gpuhost_host.name,
        lambda: _login(gpuhost_host, gpuhost_settings.timeout),
    )


def _login(host: Host, timeout: float) -> LoginUser:
    if not is_remote(host):
        return LoginUser.of_this_process()
    return LoginUser.on_host(host, timeout)


def _prefetch_login(config: pytest.Config, name: str) -> LoginUser:
    from pytest_gpuhost.session import SESSION_KEY

    session = config.stash[SESSION_KEY]
    return _login(session.host_named(name), session.settings.timeout)


prefetch.register("gpuhost_login", _prefetch_login)  # all hosts at once in a fleet run


@pytest.fixture(scope="session")
def gpuhost_daemon_access(gpuhost_engine: EngineFacts, gpuhost_login: LoginUser) -> AccessPath:
    """How the user running the suite reaches the daemon: root, docker group, rootless, remote, other."""
    if gpuhost_login.uid is None:
        return AccessPath("other", f"the login user's id cannot be read: {gpuhost_login.name}")
    return access_path(gpuhost_login.uid, set(gpuhost_login.groups), gpuhost_engine)


@pytest.fixture(scope="session")
def gpuhost_local_user(gpuhost_login: LoginUser) -> str:
    return gpuhost_login.describe()


@pytest.fixture(scope="session")
def gpuhost_enroot(gpuhost_host: Host, gpuhost_settings: Settings) -> RuntimeTool:
    return probe_runtime(gpuhost_host, ["enroot", "version"], gpuhost_settings.timeout)


@pytest.fixture(scope="session")
def gpuhost_podman(gpuhost_host: Host, gpuhost_settings: Settings) -> RuntimeTool:
    return probe_runtime(gpuhost_host, ["podman", "--version"], gpuhost_settings.timeout)
