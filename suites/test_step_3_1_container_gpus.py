"""Guide step 3.1: containers get exactly the GPUs they ask for, and see what the host sees."""

from __future__ import annotations

import re

import pytest

from pytest_gpuhost.diagnosis import Diagnosis, fail
from pytest_gpuhost.docker.containers import NO_GPUS, ContainerFailure, Containers, GpuRequest
from pytest_gpuhost.docker.smi import run_smi, smi_result_diagnosis
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.fixtures.containers import CHECK_GPU_CONTAINER, GpuContainerProbe
from pytest_gpuhost.settings import Settings

pytestmark = [pytest.mark.gpuhost_container, pytest.mark.gpuhost_needs("gpu_listing")]


def fail_with(diagnosis: Diagnosis) -> None:
    fail(diagnosis.found, diagnosis.cause, diagnosis.fix)


def test_container_sees_all_gpus(
    gpuhost_gpu_container: GpuContainerProbe, gpuhost_facts: HostFacts, gpuhost_settings: Settings
) -> None:
    """A container given all GPUs lists exactly the host's GPUs (by UUID)."""
    assert CHECK_GPU_CONTAINER == "test_container_sees_all_gpus"
    probe = gpuhost_gpu_container
    if probe.diagnosis is not None:
        fail_with(probe.diagnosis)
    inside = {row.uuid for row in probe.rows}
    host = {g.uuid for g in gpuhost_facts.gpus}
    print(f"gpuhost.metric container_gpus={len(inside)} host_gpus={len(host)}")
    if inside != host:
        fail(
            f"a container of {gpuhost_settings.image} given all GPUs sees {sorted(inside) or 'none'}; "
            f"the host has {sorted(host)}",
            "the runtime hides GPUs (NVIDIA_VISIBLE_DEVICES in the image or daemon.json), or a GPU is unusable",
            "`docker run --rm --gpus all IMAGE nvidia-smi -L` and compare with `nvidia-smi -L` on the host",
        )


def test_container_sees_gpu(
    gpuhost_gpu_container: GpuContainerProbe,
    gpuhost_containers: Containers,
    gpuhost_facts: HostFacts,
    gpuhost_settings: Settings,
    gpu: GpuInfo,
) -> None:
    """A container given one GPU sees exactly that GPU, with the host's UUID, name, driver and memory."""
    gpuhost_gpu_container.require()
    try:
        result = run_smi(
            gpuhost_containers, gpuhost_settings, "test_container_sees_gpu", gpus=GpuRequest((gpu,))
        )
    except ContainerFailure as exc:
        fail_with(exc.diagnosis)
    diagnosis = smi_result_diagnosis(result, gpuhost_settings)
    if diagnosis is not None:
        fail_with(diagnosis)
    from pytest_gpuhost.docker.smi import parse_smi_csv

    rows = parse_smi_csv(result.stdout)
    if [r.uuid for r in rows] != [gpu.uuid]:
        fail(
            f"a container given GPU {gpu.index} ({gpu.uuid}) sees {[r.uuid for r in rows] or 'no GPU'}",
            "the GPU selection is not honoured (a default nvidia runtime with NVIDIA_VISIBLE_DEVICES=all?)",
            "check `docker info | grep -i runtime` and /etc/docker/daemon.json; request GPUs per container",
        )
    row = rows[0]
    host_view = (gpu.name, gpuhost_facts.driver_version, gpu.memory_total_mib)
    inside_view = (row.name, row.driver_version, row.memory_total_mib)
    print(
        f"gpuhost.metric uuid={row.uuid} name={row.name!r} driver={row.driver_version} memory_mib={row.memory_total_mib}"
    )
    if host_view != inside_view:
        fail(
            f"GPU {gpu.index} inside the container: name, driver, memory = {inside_view}; on the host {host_view}",
            "the container mounts another driver's libraries (a driver baked into the image, or a stale CDI spec)",
            "never install a driver inside images; regenerate CDI specs after driver upgrades",
        )


def test_container_without_gpu_request_sees_none(
    gpuhost_containers: Containers, gpuhost_settings: Settings
) -> None:
    """A container that asks for no GPU gets none: no default runtime leaks GPUs to every container."""
    try:
        result = gpuhost_containers.run(
            gpuhost_settings.image,
            ["sh", "-c", "ls /dev"],
            check="test_container_without_gpu_request_sees_none",
            timeout=60.0,
            gpus=NO_GPUS,
        )
    except ContainerFailure as exc:
        fail_with(exc.diagnosis)
    if not result.ok:
        fail(
            f"`ls /dev` in {gpuhost_settings.image} failed: {result.stderr.strip() or result.exit_code}",
            "the image has no shell",
            "choose an image with /bin/sh for --gpuhost-image",
        )
    leaked = sorted(n for n in result.stdout.split() if re.fullmatch(r"nvidia\d+", n))
    if leaked:
        fail(
            f"a container with no GPU request has {', '.join('/dev/' + n for n in leaked)}",
            "`nvidia` is Docker's default runtime, so every container with NVIDIA_VISIBLE_DEVICES set gets GPUs",
            'remove "default-runtime": "nvidia" from /etc/docker/daemon.json (or set '
            "accept-nvidia-visible-devices-envvar-when-unprivileged = false in the toolkit config)",
        )
