"""Helpers for tests that use the real Docker daemon of CI: a local busybox image, no registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dockerlab import busybox_rootfs_tar
from dockerlab import client_or_skip as docker_client_or_skip

if TYPE_CHECKING:
    import docker

TEST_IMAGE = "gpuhost-test-busybox:1"
__all__ = ["TEST_IMAGE", "busybox_image", "docker_client_or_skip"]


def busybox_image(client: docker.DockerClient) -> str:
    """A one-binary image imported from the host's static busybox, as no registry is reachable."""
    import docker

    try:
        client.images.get(TEST_IMAGE)
        return TEST_IMAGE
    except docker.errors.ImageNotFound:
        pass
    repository, tag = TEST_IMAGE.split(":")
    client.api.import_image_from_data(busybox_rootfs_tar(), repository=repository, tag=tag)
    return TEST_IMAGE
