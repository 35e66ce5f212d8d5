"""Guide step 3.3: a custom image (a CUDA base plus Python and a framework) computes on the GPUs."""

from __future__ import annotations

import pytest

from pytest_gpuhost.compute.runner import last_json_object, workload_command, workload_files
from pytest_gpuhost.diagnosis import fail
from pytest_gpuhost.docker.containers import ALL_GPUS, ContainerFailure, Containers
from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.fixtures.containers import GpuContainerProbe
from pytest_gpuhost.fixtures.workloads import WorkloadImage
from pytest_gpuhost.settings import Settings

pytestmark = [pytest.mark.gpuhost_container, pytest.mark.gpuhost_needs("gpu_listing")]


def test_custom_image_sees_the_gpus(
    gpuhost_gpu_container: GpuContainerProbe,
    gpuhost_containers: Containers,
    gpuhost_workload_image: WorkloadImage,
    gpuhost_settings: Settings,
    gpuhost_facts: HostFacts,
) -> None:
    """The workload image (the PyTorch image for the driver, or built from --gpuhost-dockerfile)
    can be had, has PyTorch or CuPy, and its framework sees every GPU of the host:
    torch.cuda.is_available() inside the container. The one check that fails when the image
    cannot be pulled or built; the others that need it skip."""
    settings = gpuhost_settings
    image = gpuhost_workload_image.image
    found = gpuhost_workload_image.diagnosis
    if found is not None:
        fail(found.found, found.cause, found.fix)
    gpuhost_gpu_container.require()
    try:
        result = gpuhost_containers.run(
            image,
            workload_command(settings, "probe_framework.py"),
            check="test_custom_image_sees_the_gpus",
            timeout=300.0,
            gpus=ALL_GPUS,
            files=workload_files(),
        )
    except ContainerFailure as exc:
        fail(exc.diagnosis.found, exc.diagnosis.cause, exc.diagnosis.fix)
    probe = last_json_object(result.stdout)
    if probe is None:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        fail(
            f"the framework probe printed nothing in {image} (exit {result.exit_code}): {tail[0]}",
            f"the image has no {settings.python}",
            "build the image with Python (examples/Dockerfile), or point --gpuhost-python at its interpreter",
        )
    print(
        f"gpuhost.metric image={image} torch={probe.get('torch')} cupy={probe.get('cupy')} "
        f"cuda_available={probe.get('cuda_available')} device_count={probe.get('device_count')}"
    )
    if not probe.get("torch") and not probe.get("cupy"):
        fail(
            f"image {image} has neither PyTorch nor CuPy",
            "the image is a CUDA base without a framework",
            "install one in the image (examples/Dockerfile adds PyTorch), or choose --gpuhost-workload-image",
        )
    if not probe.get("cuda_available"):
        fail(
            f"the framework in {image} cannot use CUDA: {probe.get('error')}",
            "a CPU-only build of the framework, or an image CUDA newer than the driver supports",
            "install the CUDA build (e.g. the PyTorch wheel for the image's CUDA), or upgrade the driver",
        )
    expected = len(gpuhost_facts.gpus)
    if probe.get("device_count") != expected:
        fail(
            f"the framework in {image} sees {probe.get('device_count')} GPU(s); the host has {expected}",
            "CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES set in the image limits the GPUs",
            "remove those variables from the image, or set them per container",
        )
