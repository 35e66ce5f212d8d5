"""Workloads in containers on CI's real daemon, as far as a host without a GPU lets them run."""

from __future__ import annotations

import docker
import pytest
from docker_support import busybox_image

from pytest_gpuhost.compute.runner import (
    MOUNT_POINT,
    WORKLOADS_DIR,
    diagnose_workload,
    last_json_object,
    run_workload,
    workload_files,
)
from pytest_gpuhost.docker.containers import NO_GPUS, ContainerFailure, ContainerResult, Containers
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.settings import Settings


def settings_for(image: str) -> Settings:
    """Settings as the suite would resolve them: only the image and interpreter matter here."""
    values: dict[str, object] = dict.fromkeys(Settings.__dataclass_fields__)
    values.update(image=image, workload_image=None, python="python3")
    return Settings(**values)  # type: ignore[arg-type]


def test_an_image_without_python_is_a_diagnosis(client: docker.DockerClient) -> None:
    image = busybox_image(client)
    containers = Containers(client, LocalHost(), "devices", "never")
    with pytest.raises(ContainerFailure) as failure:
        run_workload(containers, settings_for(image), "matmul.py", [], gpus=NO_GPUS, check="t", timeout=60)
    assert f"image {image} has no python3" in failure.value.diagnosis.found
    assert "--gpuhost-workload-image" in failure.value.diagnosis.fix
    assert not client.containers.list(all=True, filters={"label": "io.pytest-gpuhost.check=t"})


def result(stdout: str, exit_code: int = 0) -> ContainerResult:
    return ContainerResult(exit_code=exit_code, stdout=stdout, stderr="", timed_out=False, seconds=1.0)


def test_the_last_json_line_is_the_record() -> None:
    assert last_json_object('banner\n{"a": 1}\nnot json\n{"b": 2}\n') == {"b": 2}
    assert last_json_object("no record at all") is None


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"error": "neither torch nor cupy", "kind": "no-framework"}, "neither PyTorch nor CuPy"),
        ({"error": "CUDA driver version is insufficient", "kind": "driver-too-old"}, "newer than the driver"),
        ({"error": "device lost", "kind": "cuda-error"}, "fallen off the bus"),
    ],
)
def test_workload_error_records_are_diagnosed(record: dict[str, str], words: str) -> None:
    diagnosis = diagnose_workload(result("", 4), record, "img", "python3")
    assert diagnosis is not None
    assert words in f"{diagnosis.found} {diagnosis.cause}"


def test_a_killed_workload_is_a_timeout_diagnosis() -> None:
    timed_out = ContainerResult(exit_code=None, stdout="", stderr="", timed_out=True, seconds=600.0)
    diagnosis = diagnose_workload(timed_out, None, "img", "python3")
    assert diagnosis is not None and "did not finish in 600 s" in diagnosis.found


def test_a_good_record_needs_no_diagnosis() -> None:
    assert diagnose_workload(result('{"results": []}'), {"results": []}, "img", "python3") is None


def test_the_workload_scripts_reach_the_container_through_the_api(client: docker.DockerClient) -> None:
    """Copied, not bind-mounted: a remote daemon has no copy of the package. Any user may read them."""
    image = busybox_image(client)
    containers = Containers(client, LocalHost(), "devices", "never")
    result = containers.run(
        image,
        ["cat", f"{MOUNT_POINT}/matmul.py"],
        check="t",
        timeout=60,
        files=workload_files(),
        user="65534:65534",
    )
    assert result.ok, result.stderr
    assert result.stdout == (WORKLOADS_DIR / "matmul.py").read_text()
