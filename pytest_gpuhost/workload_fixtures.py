"""Fixtures that own the GPU workloads: one matmul container per GPU, one burn for all GPUs.

Both run once per session and are cached, so the per-dtype and per-criterion test cases of a
GPU read one run's results instead of each starting a container.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuhost.burn import workload as burn_workload
from pytest_gpuhost.burn.run import BurnOutcome, Launcher, host_process, run_burn
from pytest_gpuhost.container_fixtures import GpuContainerProbe
from pytest_gpuhost.containers import ContainerFailure, Containers, GpuRequest
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker_fixtures import DockerConnection
from pytest_gpuhost.facts.model import GpuInfo, HostFacts
from pytest_gpuhost.host import Host
from pytest_gpuhost.images import (
    LABEL_OWNER,
    ImageUnavailable,
    build_image,
    ensure_image,
    image_present,
    image_tag,
)
from pytest_gpuhost.options import FAULT_SWITCH
from pytest_gpuhost.remote import is_remote
from pytest_gpuhost.session import select_gpus
from pytest_gpuhost.settings import Settings
from pytest_gpuhost.stray_load import busy_gpus
from pytest_gpuhost.workload_runner import (
    WorkloadOutcome,
    follow_lines,
    run_workload,
    started_workload,
    workload_command,
    workload_image,
)

MATMUL_DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16")
CHECK_WORKLOAD_IMAGE = "test_custom_image_sees_the_gpus"


@dataclass
class WorkloadImage:
    """The workload image, made present once per session (pulled, or built from --gpuhost-dockerfile).

    When it cannot be had, ``diagnosis`` says why: ``CHECK_WORKLOAD_IMAGE`` fails with it, once,
    and every check that needs the image skips naming it.
    """

    image: str
    diagnosis: Diagnosis | None = None
    built: bool = False

    def require(self) -> None:
        if self.diagnosis is not None:
            pytest.skip(f"needs the workload image: {CHECK_WORKLOAD_IMAGE} failed: {self.diagnosis.found}")


def prepare_workload_image(client: Any, settings: Settings) -> WorkloadImage:
    """Build the image from --gpuhost-dockerfile (once: the tag follows the content), else pull it."""
    image = workload_image(settings)
    dockerfile = settings.dockerfile
    try:
        if dockerfile and Path(dockerfile).is_file() and image == image_tag(Path(dockerfile).resolve()):
            if image_present(client, image):
                return WorkloadImage(image)
            build_image(client, dockerfile, tag=image, timeout=settings.pull_timeout)
            return WorkloadImage(image, built=True)
        if dockerfile and not Path(dockerfile).is_file():
            build_image(client, dockerfile, timeout=settings.pull_timeout)  # its diagnosis names the path
        ensure_image(client, image, settings.pull)
    except ImageUnavailable as exc:
        return WorkloadImage(image, exc.diagnosis)
    return WorkloadImage(image)


@pytest.fixture(scope="session")
def gpuhost_workload_image(
    gpuhost_docker_connection: DockerConnection, gpuhost_settings: Settings, gpuhost_host: Host
) -> Iterator[WorkloadImage]:
    """The workload image of this host; an image this session built is removed at its end."""
    import docker

    client = gpuhost_docker_connection.require()
    prepared = prepare_workload_image(client, gpuhost_settings)
    try:
        yield prepared
    finally:
        if prepared.built:
            with contextlib.suppress(docker.errors.DockerException):
                labels = client.images.get(prepared.image).labels or {}
                if labels.get(LABEL_OWNER) == "1":
                    client.images.remove(prepared.image, force=True)


class MatmulRuns:
    """The matmul workload's outcome per GPU, computed on first use."""

    def __init__(self, containers: Containers | None, settings: Settings, failure: Diagnosis | None) -> None:
        self.containers = containers
        self.settings = settings
        self.failure = failure
        self._outcomes: dict[str, WorkloadOutcome | Diagnosis] = {}

    def args(self) -> list[str]:
        args = ["--gpu-index", "0", "--size", str(self.settings.matmul_size), "--seed", "1234"]
        args += ["--dtypes", ",".join(MATMUL_DTYPES)]
        for fault in self.settings.inject_fault:
            args += ["--inject-fault", fault]
        return args

    def get(self, gpu: GpuInfo) -> WorkloadOutcome | Diagnosis:
        if gpu.uuid not in self._outcomes:
            self._outcomes[gpu.uuid] = self._run(gpu)
        return self._outcomes[gpu.uuid]

    def _run(self, gpu: GpuInfo) -> WorkloadOutcome | Diagnosis:
        if self.containers is None:
            assert self.failure is not None
            return self.failure
        env = {FAULT_SWITCH: "1"} if self.settings.inject_fault else None
        try:
            return run_workload(
                self.containers,
                self.settings,
                "matmul.py",
                self.args(),
                gpus=GpuRequest((gpu,)),
                check="test_matmul_matches_cpu_reference",
                timeout=600.0,
                environment=env,
            )
        except ContainerFailure as exc:
            return exc.diagnosis


@pytest.fixture(scope="session")
def gpuhost_matmul(
    gpuhost_gpu_container: GpuContainerProbe,
    gpuhost_containers: Containers,
    gpuhost_settings: Settings,
    gpuhost_workload_image: WorkloadImage,
) -> MatmulRuns:
    gpuhost_workload_image.require()
    gpuhost_gpu_container.require()
    return MatmulRuns(gpuhost_containers, gpuhost_settings, None)


LOAD_START_TIMEOUT_S = 120.0


def container_load(
    containers: Containers, settings: Settings, image: WorkloadImage | None = None
) -> Callable[[GpuInfo], AbstractContextManager[object]]:
    """A GPU kept busy by the burn workload (small matrices, unverified) while the block runs.

    Raises ``ContainerFailure`` when the load cannot start (the workload image is missing, the
    container fails): the live checks then read at idle and say why (``LiveSampler``).
    """

    @contextmanager
    def load(gpu: GpuInfo) -> Iterator[object]:
        if image is not None and image.diagnosis is not None:
            raise ContainerFailure(image.diagnosis)
        argv = workload_command(settings, "burn.py", "--seconds", "120", "--gpus", "0", "--max-mem-gib", "2")
        argv.append("--no-verify")
        with started_workload(
            containers, workload_image(settings), argv, check="gpu-load", gpus=GpuRequest((gpu,))
        ) as running:
            log = burn_workload.WorkloadLog()
            for line in follow_lines(running, LOAD_START_TIMEOUT_S):
                log.feed(line)
                if log.starts or log.progress:
                    break
            time.sleep(1.0)  # clocks and the PCIe link settle within a second of the load
            yield log
            running.kill()

    return load


def report_dir(config: pytest.Config) -> Path:
    """Files of a run (burn series, plots) go next to the JUnit report, else to the current folder."""
    xmlpath = config.getoption("xmlpath", default=None)
    return Path(xmlpath).resolve().parent if xmlpath else Path.cwd()


def _container_launcher(
    containers: Containers, settings: Settings, gpus: tuple[GpuInfo, ...], seconds: float
) -> Callable[[list[str]], AbstractContextManager[tuple[Iterator[str], Callable[[], None]]]]:
    from pytest_gpuhost.burn.run import SETUP_MARGIN_S

    @contextmanager
    def launch(argv: list[str]) -> Iterator[tuple[Iterator[str], Callable[[], None]]]:
        with started_workload(
            containers, workload_image(settings), argv, check="burn", gpus=GpuRequest(gpus)
        ) as running:
            # SIGKILL: the guard must stop the load at once, and `finally` removes the container.
            yield follow_lines(running, seconds + SETUP_MARGIN_S + 60), running.kill

    return launch


@pytest.fixture(scope="session")
def gpuhost_burn(
    request: pytest.FixtureRequest, gpuhost_settings: Settings, gpuhost_facts: HostFacts
) -> BurnOutcome:
    """One burn of every selected GPU at once, in a container or on the host (``--gpuhost-burn-on``)."""
    settings = gpuhost_settings
    gpus = select_gpus(gpuhost_facts.gpus, settings.gpus)  # this host's, in a fleet run
    seconds = settings.burn_seconds or 60.0
    host: Host = request.getfixturevalue("gpuhost_host")
    busy = busy_gpus(request.config, host.name, gpus)  # never stack a burn on someone's load
    gpus = tuple(g for g in gpus if g.uuid not in busy)
    if not gpus:
        pytest.skip("not measured: every selected GPU is already busy (see test_no_stray_load)")
    if settings.burn_on == "host" and is_remote(host):
        pytest.skip(
            "--gpuhost-burn-on host runs the workload where pytest runs: burn a remote host in a container"
        )
    telemetry = remote_telemetry(host, gpus, seconds, settings.timeout) if is_remote(host) else None
    if settings.burn_on == "host":
        argv = burn_workload.command(
            seconds, [g.index for g in gpus], python=sys.executable, temp_limit=settings.temp_limit
        )
        launcher: Launcher = host_process
        in_container = False
    else:
        # Only the container path needs Docker: a host burn runs before Docker is installed (step 1.2).
        probe: GpuContainerProbe = request.getfixturevalue("gpuhost_gpu_container")
        probe.require()
        request.getfixturevalue("gpuhost_workload_image").require()
        containers: Containers = request.getfixturevalue("gpuhost_containers")
        argv = workload_command(
            settings,
            "burn.py",
            "--seconds",
            f"{seconds:g}",
            "--gpus",
            "all",
            "--temp-limit",
            f"{settings.temp_limit:g}",
        )
        launcher = _container_launcher(containers, settings, gpus, seconds)
        in_container = True
    return run_burn(
        gpus,
        seconds,
        settings.temp_limit,
        launcher,
        argv,
        report_dir(request.config),
        in_container=in_container,
        ramp_s=min(15.0, seconds / 4),
        host_label=gpuhost_facts.host,
        telemetry=telemetry,
    )


def remote_telemetry(
    host: Host, gpus: Sequence[GpuInfo], seconds: float, timeout: float
) -> Callable[[], Any]:
    """The burn sampler's telemetry on a remote host: an ``nvidia-smi`` stream over SSH."""
    from pytest_gpuhost.burn.run import SETUP_MARGIN_S
    from pytest_gpuhost.burn.smi_stream import SmiStream, event_field
    from pytest_gpuhost.docker_tunnel import ssh_base_argv, ssh_with_options

    base = ssh_base_argv(host)
    if base is None:
        pytest.skip(f"the burn on {host.name}: its telemetry streams over SSH; name the host as ssh://")
    field = event_field(host.run, timeout)
    prefix = ssh_with_options(base, "-T")
    return lambda: SmiStream(prefix, gpus, event_field=field, max_seconds=seconds + SETUP_MARGIN_S + 120)
