"""Helpers for tests that use the real Docker daemon of CI: a local busybox image, no registry."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import docker

TEST_IMAGE = "gpuhost-test-busybox:1"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "env", "sleep", "true", "false", "id", "grep")


def docker_client_or_skip() -> docker.DockerClient:
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        if os.environ.get("CI"):
            raise  # CI starts dockerd: a missing daemon there is a failure, not a skip
        pytest.skip(f"no Docker daemon: {exc}")
    return client


def busybox_image(client: docker.DockerClient) -> str:
    """A one-binary image built from the host's static busybox and imported, as no registry is reachable."""
    import docker

    try:
        client.images.get(TEST_IMAGE)
        return TEST_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for folder in ("tmp", "dev", "proc", "sys", "etc"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
    repository, tag = TEST_IMAGE.split(":")
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)
    return TEST_IMAGE
