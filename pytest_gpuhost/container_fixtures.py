"""Fixtures that own the Docker client, the suite's containers, and the GPU-container probe."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from pytest_gpuhost.containers import (
    ALL_GPUS,
    ContainerFailure,
    ContainerResult,
    Containers,
    diagnose_output,
    parse_env,
    parse_volume,
    sweep,
)
from pytest_gpuhost.diagnosis import Diagnosis, fail
from pytest_gpuhost.docker_errors import DaemonFault, cleanup, mapped
from pytest_gpuhost.docker_fixtures import DockerConnection
from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.host import Host
from pytest_gpuhost.settings import Settings

if TYPE_CHECKING:
    import docker

CHECK_GPU_CONTAINER = "test_container_sees_all_gpus"
SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,uuid,name,driver_version,memory.total",
    "--format=csv,noheader,nounits",
]


@dataclass(frozen=True)
class SmiRow:
    index: int
    uuid: str
    name: str
    driver_version: str
    memory_total_mib: int


def parse_smi_csv(text: str) -> list[SmiRow]:
    rows = []
    for record in csv.reader(io.StringIO(text)):
        if len(record) != 5:
            continue
        index, uuid, name, driver, memory = (f.strip() for f in record)
        if not index.isdigit():
            continue
        rows.append(
            SmiRow(
                int(index),
                uuid,
                name,
                driver,
                int(float(memory)) if memory.replace(".", "").isdigit() else -1,
            )
        )
    return rows


def container_timeout(settings: Settings) -> float:
    """Long enough for a cold container start on a busy host, bounded by the native-call timeout."""
    return max(60.0, settings.timeout * 2)


def run_smi(containers: Containers, settings: Settings, check: str, **kwargs: object) -> ContainerResult:
    return containers.run(
        settings.image, SMI_QUERY, check=check, timeout=container_timeout(settings), **kwargs
    )


@dataclass
class GpuContainerProbe:
    """One container with every GPU, run once: later container checks need it to have worked."""

    rows: list[SmiRow] = field(default_factory=list)
    diagnosis: Diagnosis | None = None

    def require(self) -> None:
        if self.diagnosis is not None:
            pytest.skip(f"needs GPU containers: {CHECK_GPU_CONTAINER} failed: {self.diagnosis.found}")


def smi_result_diagnosis(result: ContainerResult, settings: Settings) -> Diagnosis | None:
    if result.ok:
        return None
    output = result.stdout + result.stderr
    found = diagnose_output(output)
    if found is not None:
        return found
    if "exec " in output and "no such file or directory" in output:
        return Diagnosis(
            f"the driver's nvidia-smi cannot start inside {settings.image}: {output.strip().splitlines()[-1]}",
            "the image has no glibc loader for the driver's binaries (busybox, alpine or distroless image)",
            "use a glibc-based image (nvidia/cuda, ubuntu) for --gpuhost-image, or mount the host's libraries "
            "with --gpuhost-volume /usr:/usr:ro",
        )
    if result.timed_out:
        return Diagnosis(
            f"nvidia-smi in a container of {settings.image} did not finish in {result.seconds:.0f} s",
            "a hung driver or daemon",
            "`sudo dmesg | grep -i Xid`; `sudo systemctl restart docker`",
        )
    tail = output.strip().splitlines()[-1:] or ["no output"]
    return Diagnosis(
        f"nvidia-smi in a container of {settings.image} exited with {result.exit_code}: {tail[0]}",
        "the container did not get the driver's utilities (toolkit capabilities `utility` missing?)",
        "run `docker run --rm --gpus all IMAGE nvidia-smi` by hand; set NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    )


@pytest.fixture(scope="session")
def gpuhost_docker(gpuhost_docker_connection: DockerConnection) -> docker.DockerClient:
    """The session's one daemon connection; skips with the reason when there is none."""
    return gpuhost_docker_connection.require()


@pytest.fixture(scope="session")
def gpuhost_containers(
    gpuhost_docker: docker.DockerClient, gpuhost_host: Host, gpuhost_settings: Settings
) -> Iterator[Containers]:
    """The suite's containers; leftovers of dead sessions are swept first, ours at the end."""
    try:
        volumes = dict(parse_volume(v) for v in gpuhost_settings.volume)
        env = dict(parse_env(e) for e in gpuhost_settings.env)
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-gpuhost: {exc}") from None
    try:
        with mapped("sweep of leftover containers", client=gpuhost_docker):
            sweep(gpuhost_docker)
    except DaemonFault as fault:
        fail(fault.diagnosis.found, fault.diagnosis.cause, fault.diagnosis.fix)
    containers = Containers(
        gpuhost_docker,
        gpuhost_host,
        gpuhost_settings.gpu_access,
        gpuhost_settings.pull,
        volumes=volumes,
        environment=env,
    )
    try:
        yield containers
    finally:
        # Never an error of whichever check ran last: what a dead or hung daemon keeps, the next
        # session's sweep removes.
        cleanup(gpuhost_docker, lambda: sweep(gpuhost_docker, own_session_only=True), "sweep")


@pytest.fixture(scope="session")
def gpuhost_gpu_container(
    gpuhost_containers: Containers, gpuhost_settings: Settings, gpuhost_facts: HostFacts
) -> GpuContainerProbe:
    probe = GpuContainerProbe()
    try:
        result = run_smi(gpuhost_containers, gpuhost_settings, CHECK_GPU_CONTAINER, gpus=ALL_GPUS)
    except ContainerFailure as exc:
        probe.diagnosis = exc.diagnosis
        return probe
    probe.diagnosis = smi_result_diagnosis(result, gpuhost_settings)
    probe.rows = parse_smi_csv(result.stdout)
    return probe
