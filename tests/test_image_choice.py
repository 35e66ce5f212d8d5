"""Images chosen for the driver, pulled from a real registry with progress, deadline and stall.

The driver versions 535 and 570 are derived from the 580 captures by changing the version
fields as those drivers report them (their CUDA version from NVIDIA's table: 535 -> 12.2,
570 -> 12.8, 580 -> 13.0). The pulls run against CI's real daemon and a real registry on
loopback (``registry_support``), under the names the suite chooses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from pytester_support import GpuhostPytester
from registry_support import Registry, loopback_registry, push_image, remove_image

from pytest_gpuhost.docker import image_table
from pytest_gpuhost.docker.images import ImageUnavailable, PullProgress, image_present, pull_image

DRIVERS = {  # driver version: the CUDA version it reports (NVIDIA's table)
    "535.183.01": "12.2",
    "570.172.08": "12.8",
    "580.159.04": "13.0",
}


def as_driver(gp: GpuhostPytester, driver: str, capture: str = "h100") -> None:
    """The capture's host as it reads with ``driver``: NVML's and nvidia-smi's version fields."""
    cuda = DRIVERS[driver]
    major, minor = (int(part) for part in cuda.split("."))

    def nvml(dump: dict[str, Any]) -> None:
        dump["driver"] = driver
        dump["nvml"] = f"{major}.{driver}"
        dump["cuda_driver"] = major * 1000 + minor * 10

    def smi(xml: str) -> str:
        xml = xml.replace(
            "<driver_version>580.159.04</driver_version>", f"<driver_version>{driver}</driver_version>"
        )
        return xml.replace("<cuda_version>13.0</cuda_version>", f"<cuda_version>{cuda}</cuda_version>")

    gp.setup(capture, nvml_edit=nvml, smi_edit=smi)


EXPECTED = {
    "535.183.01": ("nvidia/cuda:12.2.2-base-ubuntu22.04", "pytorch/pytorch:2.4.1-cuda12.1-cudnn9-runtime"),
    "570.172.08": ("nvidia/cuda:12.8.1-base-ubuntu24.04", "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"),
    "580.159.04": ("nvidia/cuda:13.0.1-base-ubuntu24.04", "pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime"),
}


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_the_header_names_the_images_chosen_for_the_driver(
    gpuhost_pytester: GpuhostPytester, driver: str
) -> None:
    as_driver(gpuhost_pytester, driver)
    result = gpuhost_pytester.run()
    base, torch = EXPECTED[driver]
    cuda = DRIVERS[driver]
    result.stdout.fnmatch_lines(
        [
            f"gpuhost: image {base}: the newest nvidia/cuda base image for the driver's CUDA {cuda} (CUDA *",
            f"gpuhost: workload image {torch}: the newest PyTorch image for the driver's CUDA {cuda} *",
        ]
    )
    # The image's own requirement is never newer than the driver's CUDA.
    assert image_table.cuda_tuple(base.split(":")[1]) <= image_table.cuda_tuple(cuda)  # type: ignore[operator]


def test_an_explicit_image_wins(gpuhost_pytester: GpuhostPytester) -> None:
    as_driver(gpuhost_pytester, "535.183.01")
    result = gpuhost_pytester.run("--gpuhost-image", "mine/cuda:1", "--gpuhost-workload-image", "base")
    result.stdout.fnmatch_lines(
        [
            "gpuhost: image mine/cuda:1 (--gpuhost-image)",
            "gpuhost: workload image mine/cuda:1 (--gpuhost-workload-image base)",
        ]
    )


def test_the_table_by_driver_branch() -> None:
    """Without a CUDA version read, the branch's CUDA from NVIDIA's table; older than the table: none."""
    assert image_table.cuda_of_driver("535.183.01") == "12.2"
    assert image_table.choose_base_image(None, "570.172.08").image == "nvidia/cuda:12.8.1-base-ubuntu24.04"
    assert image_table.choose_base_image("14.1", None).image == image_table.CUDA_BASE_IMAGES[0][1]
    old = image_table.choose_pytorch_image("11.4", "470.256.02")
    assert "older than the oldest PyTorch image" in old.reason
    for table in (image_table.CUDA_BASE_IMAGES, image_table.PYTORCH_IMAGES):
        versions = [image_table.cuda_tuple(cuda) for cuda, _ in table]
        assert versions == sorted(versions, reverse=True)  # type: ignore[type-var]
        assert all(f"cuda{cuda}" in tag or f":{cuda}." in tag for cuda, tag in table)


# -- pulls from a real registry -----------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with loopback_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def test_a_pull_shows_layers_bytes_rate_and_time(
    client: docker.DockerClient, registry: Registry, image: str, tmp_path: Path
) -> None:
    name = registry.name("gpuhost-test/progress:1")
    push_image(client, image, name, tmp_path, payload_mib=24)
    lines: list[tuple[str, bool]] = []
    events: list[dict[str, Any]] = []
    try:
        progress = pull_image(
            client,
            name,
            timeout=120,
            stall=30,
            sink=lambda text, final: lines.append((text, final)),
            progress_after=0,
            on_event=lambda event: events.append(dict(event)),
        )
        assert image_present(client, name)
        assert progress.received >= 24 << 20
        assert lines[-1][1] and lines[-1][0].startswith(f"gpuhost: pulled {name}: ")
        # The same events, replayed in time, make the live line: layers, bytes, rate, time left.
        replay = PullProgress(name, started=0.0)
        for number, event in enumerate(events):
            replay.feed(event, now=0.01 * (number + 1))
        downloading = [e for e in events if e.get("status") == "Downloading"]
        assert downloading, events
        midway = PullProgress(name, started=0.0)
        for event in events[: events.index(downloading[len(downloading) // 2]) + 1]:
            midway.feed(event, now=1.0)
        assert " layers, " in midway.line(1.0) and "/s" in midway.line(1.0)
        assert "left" in midway.line(1.0)
    finally:
        remove_image(client, name)


def test_a_registry_paused_mid_pull_is_a_stall(
    client: docker.DockerClient, registry: Registry, image: str, tmp_path: Path
) -> None:
    name = registry.name("gpuhost-test/stall:1")
    push_image(client, image, name, tmp_path, payload_mib=48)
    paused: list[str] = []

    def pause_at_first_layer(event: Any) -> None:
        if not paused and event.get("status") in ("Pulling fs layer", "Waiting", "Downloading"):
            registry.pause()
            paused.append(str(event.get("status")))

    started = time.monotonic()
    try:
        with pytest.raises(ImageUnavailable) as caught:
            pull_image(client, name, timeout=120, stall=3, sink=None, on_event=pause_at_first_layer)
        assert paused, "the pull finished before the registry was paused"
        assert time.monotonic() - started < 30
        diagnosis = caught.value.diagnosis
        assert diagnosis.found.startswith(f"the pull of {name} stalled: no data for ")
        assert "--gpuhost-pull-stall" in diagnosis.fix
    finally:
        registry.resume()
        remove_image(client, name)
    assert not image_present(client, name)


def test_the_overall_deadline_is_its_own(client: docker.DockerClient, registry: Registry) -> None:
    registry.pause()
    try:
        with pytest.raises(ImageUnavailable) as caught:
            pull_image(client, registry.name("gpuhost-test/deadline:1"), timeout=1.5, stall=60, sink=None)
    finally:
        registry.resume()
    assert "did not finish within 1.5 s" in caught.value.diagnosis.found
    assert "--gpuhost-pull-timeout" in caught.value.diagnosis.fix


def test_a_missing_name_is_a_pull_error(client: docker.DockerClient, registry: Registry) -> None:
    with pytest.raises(ImageUnavailable) as caught:
        pull_image(client, registry.name("gpuhost-test/absent:1"), timeout=30, stall=10, sink=None)
    diagnosis = caught.value.diagnosis
    assert "cannot be pulled" in diagnosis.found
    assert "docker save" in diagnosis.fix and "registry-mirrors" in diagnosis.fix


def test_the_suite_pulls_the_chosen_images_once(
    gpuhost_pytester: GpuhostPytester,
    client: docker.DockerClient,
    registry: Registry,
    image: str,
    tmp_path: Path,
) -> None:
    """The images chosen for driver 570 come from the registry, with a closing line; a second run pulls nothing."""
    cuda_image, workload = (registry.name(name) for name in EXPECTED["570.172.08"])
    push_image(client, image, cuda_image, tmp_path)
    push_image(client, image, workload, tmp_path, payload_mib=8)
    as_driver(gpuhost_pytester, "570.172.08")
    args = ("--gpuhost-registry", registry.host, "-k", "test_custom_image_sees_the_gpus", "-rs")
    try:
        junit = tmp_path / "first.xml"
        first = gpuhost_pytester.run_plain(*args, "-q", "--junitxml", str(junit))  # shows under -q too
        first.stdout.fnmatch_lines([f"gpuhost: pulled {workload}: *"])
        assert "Traceback" not in first.stdout.str()
        assert "<testcase" in junit.read_text() and "gpuhost: pull" not in junit.read_text()  # not captured
        assert image_present(client, cuda_image) and image_present(client, workload)
        started = time.monotonic()
        second = gpuhost_pytester.run_plain(*args)
        second.stdout.fnmatch_lines(
            [f"gpuhost: image {cuda_image}: *", f"gpuhost: workload image {workload}: *"]
        )
        assert "gpuhost: pulled" not in second.stdout.str()
        assert time.monotonic() - started < 30
    finally:
        remove_image(client, cuda_image)
        remove_image(client, workload)


def test_an_offline_host_gets_one_diagnosis(
    gpuhost_pytester: GpuhostPytester, client: docker.DockerClient
) -> None:
    """--gpuhost-pull never and no image: the image check fails once, the workload checks skip naming it."""
    as_driver(gpuhost_pytester, "580.159.04")
    workload = EXPECTED["580.159.04"][1]
    if image_present(client, workload):
        pytest.skip(f"{workload} is present on this daemon")
    result = gpuhost_pytester.run_plain(
        "--gpuhost-pull", "never", "-k", "test_custom_image_sees_the_gpus or test_matmul", "-rs"
    )
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1, out
    result.stdout.fnmatch_lines(
        [
            f"*FOUND: image {workload} is not on this host and --gpuhost-pull is never*",
            "*docker save*docker load*",
        ]
    )
    assert "registry-mirrors" in out
    assert (
        out.count(f"needs the workload image: test_custom_image_sees_the_gpus failed: image {workload}") >= 1
    )
    assert outcomes["skipped"] >= 5  # the matmul cases of each dtype
    assert "Traceback" not in out
    # The same under pytest-xdist: the workers report the one diagnosis, the controller its header.
    parallel = gpuhost_pytester.run_plain(
        "-p", "xdist.plugin", "-n", "2", "--gpuhost-pull", "never", "-k", "test_custom_image or test_matmul"
    )
    parallel.assert_outcomes(failed=1, skipped=outcomes["skipped"])
    parallel.stdout.fnmatch_lines([f"gpuhost: workload image {workload}: *"])


_WORKING_GPU_CONTAINERS = """

import pytest

from pytest_gpuhost.fixtures.containers import GpuContainerProbe


@pytest.fixture(scope="session")
def gpuhost_gpu_container():
    # This machine has no GPU: GPU containers are taken as working, so the load is tried.
    return GpuContainerProbe()
"""


def test_a_load_that_cannot_start_reads_the_link_at_idle(
    gpuhost_pytester: GpuhostPytester, client: docker.DockerClient, image: str
) -> None:
    """The load container cannot start (this machine has no GPU device nodes): each check says so, read at idle."""
    gpuhost_pytester.setup("h100", extra_conftest=_WORKING_GPU_CONTAINERS)
    result = gpuhost_pytester.run_plain(
        "--gpuhost-workload-image",
        image,
        "--gpuhost-gpu-access",
        "devices",
        "--gpuhost-pull",
        "never",
        "-k",
        "test_pcie_link or test_no_clock_slowdown",
        "-s",
        "-W",
        "always::pytest_gpuhost.diagnosis.GpuhostWarning",
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=2, deselected=result.parseoutcomes()["deselected"], warnings=2)
    assert out.count("gpuhost.note the load did not start, so this was read at idle: ") == 2, out
    assert "the GPU load behind the PCIe and clock checks did not start; read at idle instead" in out
    assert "gpuhost.metric pcie_measured_under_load=False" in out
    assert "executable file not found" in out or "no such file or directory" in out, out
    assert "Traceback" not in out
    assert not client.containers.list(all=True, filters={"label": "io.pytest-gpuhost.check=gpu-load"})


def test_unpacking_a_large_layer_is_not_a_stall() -> None:
    """The daemon's events in their own format: extraction shows no download bytes but is progress."""
    progress = PullProgress("big:1", started=0.0)
    progress.feed({"status": "Pulling fs layer", "id": "a1"}, now=0.5)
    progress.feed(
        {"status": "Downloading", "id": "a1", "progressDetail": {"current": 10, "total": 100}}, now=1.0
    )
    assert progress.last_bytes_at == 1.0
    progress.feed({"status": "Waiting", "id": "b2"}, now=50.0)
    assert progress.last_bytes_at == 1.0  # waiting is not progress
    progress.feed({"status": "Download complete", "id": "a1"}, now=60.0)
    progress.feed(
        {"status": "Extracting", "id": "a1", "progressDetail": {"current": 5, "total": 100}}, now=300.0
    )
    assert progress.last_bytes_at == 300.0
    assert progress.received == 100 and len(progress.done) == 1
