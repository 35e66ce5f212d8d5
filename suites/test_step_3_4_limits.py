"""Guide step 3.4: CPU and memory limits hold for GPU containers, and containers get enough
shared and locked memory for GPU workloads."""

from __future__ import annotations

import pytest

from pytest_gpuhost.criteria.limits import limit_refusal, limits_problem, memlock_warning, shm_warning
from pytest_gpuhost.diagnosis import Diagnosis, fail, warn
from pytest_gpuhost.docker.containers import ALL_GPUS, ContainerFailure, Containers
from pytest_gpuhost.docker.smi import SMI_QUERY, container_timeout, parse_smi_csv, smi_result_diagnosis
from pytest_gpuhost.facts.limits import (
    DEFAULT_LIMITS,
    daemon_defaults,
    limits_and_smi_script,
    parse_cgroup_limits,
    split_sections,
)
from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.facts.toolkit import ToolkitFacts
from pytest_gpuhost.fixtures.containers import GpuContainerProbe
from pytest_gpuhost.fixtures.runtimes import CHECK_DEFAULTS, DefaultsProbe
from pytest_gpuhost.settings import Settings

pytestmark = pytest.mark.gpuhost_container


def fail_with(diagnosis: Diagnosis) -> None:
    fail(diagnosis.found, diagnosis.cause, diagnosis.fix)


def warn_with(diagnosis: Diagnosis) -> None:
    warn(diagnosis.found, diagnosis.cause, diagnosis.fix)


@pytest.mark.gpuhost_needs("gpu_listing")
def test_limits_hold_with_gpus(
    gpuhost_gpu_container: GpuContainerProbe,
    gpuhost_containers: Containers,
    gpuhost_facts: HostFacts,
    gpuhost_settings: Settings,
) -> None:
    """A container with --cpus 1, --memory 256m and every GPU sees both: the limits in its cgroup
    files and the host's GPUs. Jobs sharing a host rely on limits that GPU access does not undo."""
    gpuhost_gpu_container.require()
    request = DEFAULT_LIMITS
    try:
        result = gpuhost_containers.run(
            gpuhost_settings.image,
            ["sh", "-c", limits_and_smi_script(SMI_QUERY)],
            check="test_limits_hold_with_gpus",
            timeout=container_timeout(gpuhost_settings),
            gpus=ALL_GPUS,
            **request.create_kwargs(),
        )
    except ContainerFailure as exc:
        fail_with(limit_refusal(exc.diagnosis.found) or exc.diagnosis)
    sections = split_sections(result.stdout)
    if "limits" not in sections:  # the script never ran: no shell, or a container that did not start
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        fail_with(
            smi_result_diagnosis(result, gpuhost_settings)
            or Diagnosis(
                f"the limits probe printed nothing in {gpuhost_settings.image}: {tail[0]}",
                "the image has no /bin/sh",
                "choose an image with /bin/sh for --gpuhost-image",
            )
        )
    limits = parse_cgroup_limits(sections["limits"])
    rows = parse_smi_csv(sections.get("smi", ""))
    print(f"gpuhost.metric {limits.metrics()} limited_container_gpus={len(rows)}")
    problem = limits_problem(limits, request)
    if problem is not None:
        fail_with(problem)
    diagnosis = smi_result_diagnosis(result, gpuhost_settings)
    if diagnosis is not None:
        fail_with(diagnosis)
    inside = {row.uuid for row in rows}
    host = {g.uuid for g in gpuhost_facts.gpus}
    if inside != host:
        fail(
            f"a container with --cpus {request.cpus:g} --memory {request.memory} and all GPUs sees "
            f"{sorted(inside) or 'no GPU'}; the host has {sorted(host)}",
            "the limits and the GPU request interfere: the device cgroup written for the limits drops "
            "the GPUs' device nodes (an old runc, or the toolkit's hook with the systemd cgroup driver)",
            "upgrade runc and the toolkit; inject GPUs with CDI (`sudo nvidia-ctk cdi generate "
            "--output=/etc/cdi/nvidia.yaml`)",
        )


def test_container_shm_size(gpuhost_container_defaults: DefaultsProbe, gpuhost_toolkit: ToolkitFacts) -> None:
    """/dev/shm of a container that asks for nothing: a warning below 1 GiB (Docker's default is 64 MiB)."""
    assert CHECK_DEFAULTS == "test_container_shm_size"
    defaults = gpuhost_container_defaults.require(owner=True)
    daemon = daemon_defaults(gpuhost_toolkit.daemon_config.data)
    shown = defaults.shm_bytes if defaults.shm_bytes is not None else "unknown"
    print(
        f"gpuhost.metric shm_bytes={shown if defaults.shm_mounted else 'none'} "
        f"daemon_json.default_shm_size={daemon.shm_size or 'unset'}"
    )
    finding = shm_warning(defaults, daemon)
    if finding is not None:
        warn_with(finding)


def test_container_memlock_ulimit(
    gpuhost_container_defaults: DefaultsProbe, gpuhost_toolkit: ToolkitFacts
) -> None:
    """The memlock ulimit of a container that asks for nothing: a warning unless unlimited (NCCL, RDMA)."""
    defaults = gpuhost_container_defaults.require()
    daemon = daemon_defaults(gpuhost_toolkit.daemon_config.data)
    print(f"gpuhost.metric memlock_kib={defaults.memlock_text}")
    finding = memlock_warning(defaults, daemon)
    if finding is not None:
        warn_with(finding)
