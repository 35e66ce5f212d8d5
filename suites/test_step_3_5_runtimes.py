"""Guide step 3.5: how users reach the GPUs besides the Docker daemon: their path to the daemon
(root, docker group, rootless), enroot, and Podman with CDI, each compared with the host."""

from __future__ import annotations

import os
import secrets

import pytest

from pytest_gpuhost.criteria.limits import access_warning
from pytest_gpuhost.criteria.runtimes import parity_problem
from pytest_gpuhost.diagnosis import Diagnosis, fail, warn
from pytest_gpuhost.docker.containers import ContainerFailure, ensure_image, session_labels
from pytest_gpuhost.docker.smi import SMI_QUERY, parse_smi_csv
from pytest_gpuhost.facts.limits import AccessPath
from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.facts.toolkit import CDI_DIRS, CDI_GENERATE, CDI_KIND, ToolkitFacts
from pytest_gpuhost.fixtures.docker import DockerConnection
from pytest_gpuhost.hosts.host import Host
from pytest_gpuhost.runtimes.common import RuntimeRun, RuntimeTool
from pytest_gpuhost.runtimes.enroot import run_enroot
from pytest_gpuhost.runtimes.podman import podman_run_argv, run_podman
from pytest_gpuhost.settings import Settings

ENROOT_IMPORT_TIMEOUT_S = 900.0  # enroot squashes the whole image: minutes for a CUDA image


def fail_with(diagnosis: Diagnosis) -> None:
    fail(diagnosis.found, diagnosis.cause, diagnosis.fix)


def unique_name(check: str) -> str:
    return f"gpuhost-{check}-{os.getpid()}-{secrets.token_hex(3)}"


@pytest.mark.gpuhost_quick
def test_docker_access_path(gpuhost_daemon_access: AccessPath, gpuhost_local_user: str) -> None:
    """Names how this user reaches the daemon; a warning where that is root or the docker group.

    A rootless daemon's toolkit setting (`no-cgroups`) is checked by test_rootless_toolkit_config."""
    path = gpuhost_daemon_access
    print(f"gpuhost.metric docker.access={path.kind}")
    finding = access_warning(path, gpuhost_local_user)
    if finding is not None:
        warn(finding.found, finding.cause, finding.fix)


def require_runtime(tool: RuntimeTool) -> None:
    if not tool.found:
        pytest.skip(f"not applicable: {tool.name} is not installed")
    print(f"gpuhost.metric {tool.name}.version={tool.version or 'unknown'}")
    if tool.error:
        fail(
            f"{tool.name} is installed but does not answer: {tool.error}",
            f"a broken {tool.name} installation (missing libraries or helpers)",
            f"reinstall {tool.name}; run `{tool.name} --help` by hand",
        )


def check_parity(runtime: str, image: str, run: RuntimeRun, facts: HostFacts) -> None:
    if run.diagnosis is not None:
        fail_with(run.diagnosis)
    rows = parse_smi_csv(run.output)
    print(f"gpuhost.metric {runtime}.gpus={len(rows)} host_gpus={len(facts.gpus)}")
    problem = parity_problem(
        runtime,
        image,
        [(r.uuid, r.name, r.driver_version, r.memory_total_mib) for r in rows],
        facts.gpus,
        facts.driver_version,
    )
    if problem is not None:
        fail_with(problem)


@pytest.mark.gpuhost_container
@pytest.mark.gpuhost_needs("gpu_listing")
def test_enroot_sees_gpus(
    gpuhost_enroot: RuntimeTool,
    gpuhost_docker_connection: DockerConnection,
    gpuhost_host: Host,
    gpuhost_facts: HostFacts,
    gpuhost_settings: Settings,
) -> None:
    """enroot (Slurm's pyxis runs it) imports the image from dockerd and lists the host's GPUs."""
    require_runtime(gpuhost_enroot)
    image = gpuhost_settings.image
    try:
        ensure_image(gpuhost_docker_connection.require(), image, gpuhost_settings.pull)
    except ContainerFailure as exc:
        fail_with(exc.diagnosis)
    run = run_enroot(
        gpuhost_host,
        image,
        SMI_QUERY,
        name=unique_name("enroot"),
        import_timeout=ENROOT_IMPORT_TIMEOUT_S,
        timeout=max(60.0, gpuhost_settings.timeout * 2),
    )
    check_parity("enroot", image, run, gpuhost_facts)


@pytest.mark.gpuhost_container
@pytest.mark.gpuhost_needs("gpu_listing")
def test_podman_cdi_sees_gpus(
    gpuhost_podman: RuntimeTool,
    gpuhost_toolkit: ToolkitFacts,
    gpuhost_host: Host,
    gpuhost_facts: HostFacts,
    gpuhost_settings: Settings,
) -> None:
    """Podman with `--device nvidia.com/gpu=all` (CDI) lists the host's GPUs, as Docker does."""
    require_runtime(gpuhost_podman)
    if not gpuhost_toolkit.cdi.nvidia:
        pytest.skip(
            f"needs a CDI spec: none of kind {CDI_KIND} in {', '.join(CDI_DIRS)} "
            f"(Podman reads the same; `{CDI_GENERATE}`)"
        )
    image = gpuhost_settings.image
    check = "test_podman_cdi_sees_gpus"
    name = unique_name("podman")
    argv = podman_run_argv(
        image, SMI_QUERY, name=name, labels=session_labels(check), pull=gpuhost_settings.pull
    )
    run = run_podman(gpuhost_host, argv, name, image, timeout=max(60.0, gpuhost_settings.timeout * 2))
    check_parity("podman", image, run, gpuhost_facts)
