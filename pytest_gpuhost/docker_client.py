"""Reaching the Docker daemon through the SDK, with a timeout and a diagnosis for every failure.

The docker SDK is imported here only, and only under ``--gpuhost``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "/var/run/docker.sock"


class DockerUnavailable(Exception):
    """The daemon cannot be used; carries the diagnosis that explains why."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(str(diagnosis))
        self.diagnosis = diagnosis


def socket_path(docker_host: str | None) -> str | None:
    """The unix socket the SDK will use, or None for a TCP or SSH daemon."""
    if not docker_host:
        return DEFAULT_SOCKET
    if docker_host.startswith("unix://"):
        return docker_host.removeprefix("unix://")
    return None


def diagnose_connection_error(message: str, docker_host: str | None) -> Diagnosis:
    """Map the SDK's connection error to what the operator should do."""
    where = docker_host or f"unix://{DEFAULT_SOCKET}"
    lowered = message.lower()
    if "permission denied" in lowered:
        return Diagnosis(
            f"permission denied on the Docker socket ({where})",
            "this user is not in the `docker` group (or a rootless daemon's socket belongs to another user)",
            "`sudo usermod -aG docker $USER`, then log in again (or `newgrp docker`); "
            "for rootless Docker: `systemctl --user start docker` and "
            "`export DOCKER_HOST=unix://$XDG_RUNTIME_DIR/docker.sock`",
        )
    if "no such file" in lowered or "connection refused" in lowered or "filenotfounderror" in lowered:
        return Diagnosis(
            f"no Docker daemon answers at {where}",
            "Docker is not installed, or its daemon is not running (a rootless daemon may not be started)",
            "install Docker Engine (https://docs.docker.com/engine/install/), then "
            "`sudo systemctl enable --now docker`; rootless: `systemctl --user start docker`",
        )
    return Diagnosis(
        f"the Docker daemon at {where} cannot be used: {message}",
        "the daemon is unhealthy or DOCKER_HOST points to the wrong place",
        "`docker info` shows the same error; `sudo journalctl -u docker` tells why",
    )


def connect(timeout: float) -> docker.DockerClient:
    """A client whose daemon answered a ping within ``timeout`` seconds."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise DockerUnavailable(
            Diagnosis(
                f"the docker SDK cannot be imported: {exc}", "a broken installation", "`pip install docker`"
            )
        ) from None
    docker_host = os.environ.get("DOCKER_HOST")
    try:
        client = docker.from_env(timeout=int(max(timeout, 1)))
        call_with_timeout(client.ping, timeout, "docker ping")
    except NativeCallTimeout as exc:
        raise DockerUnavailable(
            Diagnosis(
                f"the Docker daemon did not answer within {exc.seconds:g} s",
                "the daemon is hung or overloaded",
                "`sudo systemctl restart docker`; `sudo journalctl -u docker` tells why",
            )
        ) from None
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(diagnose_connection_error(str(exc), docker_host)) from None
    return client
