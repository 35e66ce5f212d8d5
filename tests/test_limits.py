"""Guide step 3.4: cgroup limits, /dev/shm and memlock, parsed from v1 and v2 texts and measured
in busybox containers of the real daemon (no GPU: the GPU half needs the GPU machine)."""

from __future__ import annotations

import re
from pathlib import Path

import docker
import pytest
from docker_support import TEST_IMAGE
from pytester_support import GpuhostPytester

from pytest_gpuhost.criteria.limits import limit_refusal, limits_problem, memlock_warning, shm_warning
from pytest_gpuhost.docker.containers import LABEL_OWNER, NO_GPUS, Containers
from pytest_gpuhost.facts.limits import (
    DEFAULTS_SCRIPT,
    GIB,
    LIMITS_SCRIPT,
    MIB,
    ContainerDefaults,
    DaemonDefaults,
    LimitRequest,
    daemon_defaults,
    format_bytes,
    limits_and_smi_script,
    parse_cgroup_limits,
    parse_container_defaults,
    parse_size,
    shm_from_df,
    shm_from_mounts,
    split_sections,
)
from pytest_gpuhost.hosts.host import LocalHost

V2_LIMITED = "/sys/fs/cgroup/cpu.max=100000 100000\n/sys/fs/cgroup/memory.max=268435456\n"
V2_FREE = "/sys/fs/cgroup/cpu.max=max 100000\n/sys/fs/cgroup/memory.max=max\n"
V1_LIMITED = (
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us=100000\n/sys/fs/cgroup/cpu/cpu.cfs_period_us=100000\n"
    "/sys/fs/cgroup/memory/memory.limit_in_bytes=268435456\n"
)
V1_FREE = (
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us=-1\n/sys/fs/cgroup/cpu/cpu.cfs_period_us=100000\n"
    "/sys/fs/cgroup/memory/memory.limit_in_bytes=9223372036854771712\n"
)
# What `cat /proc/mounts` and `ulimit -l` print in a busybox container of Docker 20.10.
MOUNTS_64M = (
    "overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n"
    "shm /dev/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=65536k 0 0\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64m", 64 * MIB),
        ("8G", 8 * GIB),
        ("1.5g", 1536 * MIB),
        ("65536k", 64 * MIB),
        ("268435456", 256 * MIB),
        ("2GiB", 2 * GIB),
        ("lots", None),
    ],
)
def test_parse_size_reads_docker_units(text: str, expected: int | None) -> None:
    assert parse_size(text) == expected


def test_limit_request_is_what_docker_run_sends() -> None:
    request = LimitRequest()
    assert request.create_kwargs() == {"nano_cpus": 1_000_000_000, "mem_limit": "256m"}
    assert request.memory_bytes == 268435456
    assert format_bytes(request.memory_bytes) == "256 MiB"


@pytest.mark.parametrize(
    ("text", "version", "cpus", "memory"),
    [
        (V2_LIMITED, 2, 1.0, 268435456),
        (V2_FREE, 2, None, None),
        ("/sys/fs/cgroup/cpu.max=50000 100000\n/sys/fs/cgroup/memory.max=536870912\n", 2, 0.5, 512 * MIB),
        (V1_LIMITED, 1, 1.0, 268435456),
        (V1_FREE, 1, None, None),
        ("", None, None, None),
        ("/sys/fs/cgroup/memory.max=lots\n", None, None, None),
    ],
    ids=["v2-limited", "v2-free", "v2-half", "v1-limited", "v1-free", "none", "garbage"],
)
def test_cgroup_texts_parse(text: str, version: int | None, cpus: float | None, memory: int | None) -> None:
    limits = parse_cgroup_limits(text)
    assert (limits.version, limits.cpus, limits.memory_bytes) == (version, cpus, memory)


def test_limits_problem_names_what_is_missing() -> None:
    request = LimitRequest()
    assert limits_problem(parse_cgroup_limits(V2_LIMITED), request) is None
    assert limits_problem(parse_cgroup_limits(V1_LIMITED), request) is None
    no_cpu = limits_problem(parse_cgroup_limits(V2_FREE), request)
    assert no_cpu is not None
    assert "--cpus 1 has no such CPU limit in its cgroup v2 files" in no_cpu.found
    assert "No cpu cfs quota support" in no_cpu.fix
    cpu_only = V1_LIMITED.replace("268435456", "9223372036854771712")
    no_memory = limits_problem(parse_cgroup_limits(cpu_only), request)
    assert no_memory is not None
    assert "--memory 256m (268435456 bytes) has a memory limit of none in its cgroup v1" in no_memory.found
    assert "cgroup_enable=memory" in no_memory.fix
    unreadable = limits_problem(parse_cgroup_limits(""), request)
    assert unreadable is not None and "--cgroupns=host" in unreadable.cause


def test_limits_and_gpus_come_from_one_output() -> None:
    script = limits_and_smi_script(["nvidia-smi", "--format=csv,noheader"])
    assert script.startswith(LIMITS_SCRIPT) and script.endswith("; nvidia-smi --format=csv,noheader")
    output = (
        "== gpuhost:limits\n" + V2_LIMITED + "== gpuhost:smi\n"
        "0, GPU-042f1913-64c6-43ac-27c6-466e2d9041b0, NVIDIA H100 80GB HBM3, 580.159.04, 81559\n"
    )
    sections = split_sections(output)
    assert parse_cgroup_limits(sections["limits"]).cpus == 1.0
    assert sections["smi"].startswith("0, GPU-042f1913")


def test_limit_refusal_is_told_apart() -> None:
    refusal = limit_refusal(
        "NanoCPUs can not be set, as your kernel does not support CPU CFS scheduler or the cgroup is not mounted"
    )
    assert refusal is not None and "refuses CPU or memory limits" in refusal.found
    assert limit_refusal('could not select device driver "" with capabilities: [[gpu]]') is None


def test_shm_and_memlock_texts_parse() -> None:
    assert shm_from_mounts(MOUNTS_64M) == (True, 64 * MIB)
    assert shm_from_mounts("tmpfs /dev/shm tmpfs rw,relatime 0 0\n") == (True, None)
    assert shm_from_mounts("overlay / overlay rw 0 0\n") == (False, None)
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\nshm 8388608 0 8388608 0% /dev/shm\n"
    assert shm_from_df(df) == 8 * GIB
    text = (
        "== gpuhost:memlock\nunlimited\n== gpuhost:mounts\ntmpfs /dev/shm tmpfs rw 0 0\n== gpuhost:df\n" + df
    )
    defaults = parse_container_defaults(text)
    assert (defaults.shm_mounted, defaults.shm_bytes, defaults.memlock_unlimited) == (True, 8 * GIB, True)
    assert memlock_warning(defaults, DaemonDefaults(None, None)) is None
    assert shm_warning(defaults, DaemonDefaults(None, None)) is None


def test_warnings_name_the_daemon_json_keys() -> None:
    daemon = daemon_defaults(
        {
            "default-shm-size": "64M",
            "default-ulimits": {"memlock": {"Name": "memlock", "Soft": 65536, "Hard": 65536}},
        }
    )
    assert daemon.describe() == (
        "daemon.json default-shm-size: 64M, default-ulimits memlock: soft 65536, hard 65536"
    )
    small = ContainerDefaults(True, 64 * MIB, "64", 64)
    shm = shm_warning(small, daemon)
    assert shm is not None and "a 64 MiB /dev/shm" in shm.found and "default-shm-size: 64M" in shm.found
    assert "bus error" in shm.cause and '"default-shm-size": "8G"' in shm.fix and "--ipc=host" in shm.fix
    memlock = memlock_warning(small, daemon)
    assert memlock is not None and "memlock ulimit of 64 KiB (64 KiB), not unlimited" in memlock.found
    assert "--ulimit memlock=-1" in memlock.fix and '"Soft": -1, "Hard": -1' in memlock.fix
    none = shm_warning(ContainerDefaults(False, None, "unlimited", None), daemon_defaults(None))
    assert none is not None and "no /dev/shm at all" in none.found


# -- the real daemon ----------------------------------------------------------------------------


def left_over(client: docker.DockerClient, check: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"io.pytest-gpuhost.check={check}"})
    assert all(LABEL_OWNER in (c.labels or {}) for c in found)
    return [str(c.name) for c in found]


def test_limits_show_in_the_cgroup_files_of_a_real_container(client: docker.DockerClient, image: str) -> None:
    """The daemon's cgroup version decides which files the script finds; both must give the request."""
    request = LimitRequest()
    containers = Containers(client, LocalHost(), "gpus", "never")
    result = containers.run(
        image,
        ["sh", "-c", LIMITS_SCRIPT],
        check="limits",
        timeout=30,
        gpus=NO_GPUS,
        **request.create_kwargs(),
    )
    assert result.ok, result
    limits = parse_cgroup_limits(split_sections(result.stdout)["limits"])
    print(f"gpuhost.metric {limits.metrics()}")
    assert str(limits.version) == str(client.info()["CgroupVersion"])
    assert (limits.cpu_quota_us, limits.cpu_period_us, limits.memory_bytes) == (100000, 100000, 268435456)
    assert limits_problem(limits, request) is None
    assert left_over(client, "limits") == []


def test_a_container_without_limits_is_told_apart(client: docker.DockerClient, image: str) -> None:
    containers = Containers(client, LocalHost(), "gpus", "never")
    result = containers.run(image, ["sh", "-c", LIMITS_SCRIPT], check="nolimits", timeout=30)
    limits = parse_cgroup_limits(split_sections(result.stdout)["limits"])
    assert limits.version is not None and limits.cpus is None and limits.memory_bytes is None
    problem = limits_problem(limits, LimitRequest())
    assert problem is not None and "has no such CPU limit" in problem.found


def test_default_shm_and_memlock_of_a_real_container(client: docker.DockerClient, image: str) -> None:
    """Docker's default /dev/shm is 64 MiB: a warning; --shm-size 1g is enough."""
    containers = Containers(client, LocalHost(), "gpus", "never")
    result = containers.run(image, ["sh", "-c", DEFAULTS_SCRIPT], check="defaults", timeout=30)
    assert result.ok, result
    defaults = parse_container_defaults(result.stdout)
    print(f"gpuhost.metric shm_bytes={defaults.shm_bytes} memlock_kib={defaults.memlock_text}")
    assert (defaults.shm_mounted, defaults.shm_bytes) == (True, 64 * MIB)
    assert defaults.memlock_unlimited or (defaults.memlock_kib or 0) > 0
    daemon = DaemonDefaults(None, None)
    assert shm_warning(defaults, daemon) is not None
    assert (memlock_warning(defaults, daemon) is None) == defaults.memlock_unlimited
    bigger = containers.run(image, ["sh", "-c", DEFAULTS_SCRIPT], check="shm1g", timeout=30, shm_size="1g")
    sized = parse_container_defaults(bigger.stdout)
    assert sized.shm_bytes == GIB and shm_warning(sized, daemon) is None


# -- the shipped checks, against the real daemon and a fake H100 host --------------------------

SUITE = Path(__file__).resolve().parent.parent / "suites" / "test_step_3_4_limits.py"


def test_suite_warns_on_defaults_and_skips_the_gpu_half(
    gpuhost_pytester: GpuhostPytester, client: docker.DockerClient, image: str
) -> None:
    """The GPU probe fails here (no toolkit): the limits check skips; shm and memlock are measured."""
    fake = gpuhost_pytester.setup("h100")
    (fake.root / "etc" / "docker").mkdir(parents=True)
    (fake.root / "etc" / "docker" / "daemon.json").write_text('{"default-shm-size": "64M"}')
    (gpuhost_pytester.pytester.path / SUITE.name).write_text(SUITE.read_text())
    result = gpuhost_pytester.run_plain(
        "-p",
        "pytest_gpuhost.fixtures.runtimes",
        "-p",
        "pytest_gpuhost.fixtures.docker",
        "--gpuhost-image",
        TEST_IMAGE,
        "--gpuhost-pull",
        "never",
        "-rs",
        "-s",
        SUITE.name,
    )
    out = result.stdout.str()
    memlock = re.search(r"gpuhost\.metric memlock_kib=(\S+)", out)
    assert memlock is not None, out
    limited = memlock.group(1) != "unlimited"
    result.assert_outcomes(passed=2, skipped=1, warnings=2 if limited else 1)
    assert ("containers get a memlock ulimit of" in out) == limited
    assert (
        "needs GPU containers: test_container_sees_all_gpus failed: the daemon cannot give containers GPUs"
        in out
    )
    assert "gpuhost.metric shm_bytes=67108864 daemon_json.default_shm_size=64M" in out
    assert (
        "containers get a 64 MiB /dev/shm unless they ask for more (daemon.json default-shm-size: 64M" in out
    )
    assert left_over(client, "test_container_shm_size") == []
