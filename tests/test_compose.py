"""Guide step 3.2: compose GPU reservations, validated from files and brought up on the real daemon."""

from __future__ import annotations

import contextlib
from pathlib import Path

import docker
import pytest
from dockerlab import run_suite

from pytest_gpuhost.docker.compose import (
    PROJECT_LABEL,
    ComposeCommand,
    ComposeProblem,
    detect_compose,
    diagnose_compose_failure,
    example_compose,
    gpus_in_output,
    new_project_name,
    project_leftovers,
    sweep_projects,
    up_and_down,
    validate_compose,
    validate_compose_file,
)
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.toolkit import load_yaml_module
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.options import DEFAULT_IMAGE

DATA = Path(__file__).parent / "data" / "compose"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "docker-compose.yml"
SUITE = "test_step_3_2_compose.py"
H100_UUID = "GPU-042f1913-64c6-43ac-27c6-466e2d9041b0"
SMI_LINE = f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {H100_UUID})"
GPUS = (
    GpuInfo(0, H100_UUID, "NVIDIA H100 80GB HBM3", "0000:00:06.0"),
    GpuInfo(1, "GPU-1b94c864-4a5c-bea0-af8d-f4521d70170a", "NVIDIA H200", "0000:00:07.0"),
)


# -- static validation ------------------------------------------------------------------------


def test_valid_reservations() -> None:
    reservations, problems = validate_compose_file(DATA / "valid.yml")
    assert problems == []
    by_service = {r.service: r for r in reservations}
    assert sorted(by_service) == ["everything", "from-env", "pinned", "through-cdi", "train"]
    assert by_service["train"].count == 1 and by_service["train"].driver == "nvidia"
    assert by_service["everything"].count == "all" and by_service["everything"].driver is None
    assert by_service["pinned"].device_ids == ("0", H100_UUID)
    assert by_service["from-env"].count is None  # ${GPU_COUNT:-1}: decided at `up` time
    assert by_service["through-cdi"].device_ids == ("nvidia.com/gpu=all",)


def test_every_classic_mistake_is_named() -> None:
    _, problems = validate_compose_file(DATA / "invalid.yml")
    file = str(DATA / "invalid.yml")
    prefix = "deploy.resources.reservations.devices[0]"
    found = {(p.service, p.key.removeprefix(f"services.{p.service}.")) for p in problems}
    assert found == {
        ("no-capabilities", f"{prefix}.capabilities"),
        ("both", prefix),
        ("numeric-ids", f"{prefix}.device_ids"),
        ("wrong-driver", f"{prefix}.driver"),
        ("zero", f"{prefix}.count"),
        ("in-limits", "deploy.resources.limits.devices"),
        ("capabilities-string", f"{prefix}.capabilities"),
        ("cdi-by-count", f"{prefix}.count"),
        ("cdi-by-count", f"{prefix}.device_ids"),
    }
    assert all(p.file == file for p in problems)
    text = {p.service: str(p) for p in problems}
    assert text["numeric-ids"].endswith("entries must be strings: write ['0', '3'], not [0, 3]")
    assert "mutually exclusive" in text["both"]
    assert text["no-capabilities"].startswith(f"{file}: service 'no-capabilities', services.no-capabilities.")
    assert "is required" in text["no-capabilities"]


def test_unreadable_files() -> None:
    _, problems = validate_compose_file(DATA / "broken.yml")
    assert len(problems) == 1 and problems[0].key == "(file)" and "is not valid YAML" in problems[0].message
    _, problems = validate_compose_file(DATA / "missing.yml")
    assert problems[0].message.startswith("cannot be read")
    _, problems = validate_compose(["not", "a", "mapping"], "x.yml")
    assert problems == [
        ComposeProblem("x.yml", None, "services", "a compose file needs a `services` mapping")
    ]


def test_example_file_is_valid_and_matches_the_generator() -> None:
    yaml = load_yaml_module()
    reservations, problems = validate_compose_file(EXAMPLE)
    assert problems == [] and len(reservations) == 1
    assert (reservations[0].service, reservations[0].count, reservations[0].driver) == (
        "gpu-smoke",
        "all",
        "nvidia",
    )
    assert yaml.safe_load(EXAMPLE.read_text()) == yaml.safe_load(example_compose(DEFAULT_IMAGE))


def test_expected_gpus() -> None:
    reservations, _ = validate_compose_file(DATA / "valid.yml")
    by_service = {r.service: r for r in reservations}
    assert by_service["everything"].expected_gpus(GPUS) == GPUS
    assert by_service["train"].expected_gpus(GPUS) == 1
    assert by_service["pinned"].expected_gpus(GPUS) == (GPUS[0],)


def test_gpu_lines_in_compose_output() -> None:
    text = f"fake-gpu_1  | {SMI_LINE}\nfake-gpu_1  | {SMI_LINE}\nother output"
    assert gpus_in_output(text) == [(0, "NVIDIA H100 80GB HBM3", H100_UUID)]
    assert gpus_in_output("Failed to initialize NVML: Unknown Error") == []


# -- the real daemon --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> ComposeCommand:
    found = detect_compose(LocalHost(), timeout=30)
    if found is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)"
        )
    return found


def write_compose(folder: Path, image: str, command: str, gpu: bool = False) -> Path:
    text = (
        "services:\n"
        "  fake-gpu:\n"
        f"    image: {image}\n"
        f'    command: ["sh", "-c", "{command}"]\n'
        "    network_mode: none\n"
    )
    if gpu:
        text += (
            "    deploy:\n      resources:\n        reservations:\n          devices:\n"
            "            - driver: nvidia\n              count: all\n              capabilities: [gpu]\n"
        )
    path = folder / "docker-compose.yml"
    path.write_text(text)
    return path


def test_up_and_down_leaves_nothing(
    compose: ComposeCommand, client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    """A busybox service that prints an `nvidia-smi -L` line: its logs are read, `down -v` removes all."""
    file = write_compose(tmp_path, image, f"echo '{SMI_LINE}'")
    run = up_and_down(LocalHost(), compose, file, "fake-gpu")
    try:
        assert run.project.startswith("gpuhost-compose-")
        assert run.up.ok, run.output
        assert run.down.ok, run.down.stderr
        assert gpus_in_output(run.output) == [(0, "NVIDIA H100 80GB HBM3", H100_UUID)]
        assert project_leftovers(client, run.project) == []
    finally:
        sweep_projects(client)


def test_failed_service_is_torn_down_too(
    compose: ComposeCommand, client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    file = write_compose(tmp_path, image, "echo broken; exit 3")
    run = up_and_down(LocalHost(), compose, file, "fake-gpu")
    try:
        assert run.up.returncode == 3 and not run.up.ok
        assert project_leftovers(client, run.project) == []
        diagnosis = diagnose_compose_failure(run, compose)
        assert diagnosis.found.startswith(f"`{compose.name} up` exited with 3")
    finally:
        sweep_projects(client)


def test_gpu_reservation_without_toolkit_is_diagnosed(
    compose: ComposeCommand, client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    """This daemon has no NVIDIA device driver, like a GPU host without the toolkit."""
    info = client.info()
    if "nvidia" in (info.get("Runtimes") or {}):
        pytest.skip("this daemon has the NVIDIA toolkit")
    file = write_compose(tmp_path, image, "true", gpu=True)
    run = up_and_down(LocalHost(), compose, file, "fake-gpu")
    try:
        diagnosis = diagnose_compose_failure(run, compose)
        assert 'could not select device driver "nvidia" with capabilities: [[gpu]]' in diagnosis.found
        assert "install-guide.html" in diagnosis.fix
        assert project_leftovers(client, run.project) == []
    finally:
        sweep_projects(client)


def test_sweep_removes_leftovers_of_killed_runs(client: docker.DockerClient, image: str) -> None:
    project = new_project_name()
    container = client.containers.create(
        image, ["true"], labels={PROJECT_LABEL: project}, network_mode="none"
    )
    other = client.containers.create(
        image, ["true"], labels={PROJECT_LABEL: "someone-else"}, network_mode="none"
    )
    try:
        assert project_leftovers(client, project) == [f"container {container.name}"]
        removed = sweep_projects(client)
        assert f"container {container.name}" in removed
        assert project_leftovers(client, project) == []
        other.reload()  # not ours: kept
    finally:
        for leftover in (container, other):
            with contextlib.suppress(docker.errors.NotFound):
                leftover.remove(force=True)


# -- the suite's checks -----------------------------------------------------------------------


def test_quick_check_names_file_service_and_key(pytester: pytest.Pytester) -> None:
    bad = str(DATA / "invalid.yml")
    result = run_suite(pytester, SUITE, args=(f"--gpuhost-compose={bad}", "--gpuhost-tier=quick"))
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert (
        f"FOUND: invalid GPU reservations: {bad}: service 'no-capabilities', "
        "services.no-capabilities.deploy.resources.reservations.devices[0].capabilities: is required"
    ) in output
    assert (
        "services.numeric-ids.deploy.resources.reservations.devices[0].device_ids: entries must be strings"
        in output
    )
    assert "Traceback" not in output


def test_quick_check_passes_and_skips(pytester: pytest.Pytester) -> None:
    good = str(DATA / "valid.yml")
    result = run_suite(pytester, SUITE, args=(f"--gpuhost-compose={good}", "--gpuhost-tier=quick"))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*compose.gpu_services=everything,from-env,pinned,through-cdi,train*"])
    result = run_suite(pytester, SUITE, args=("--gpuhost-tier=quick",))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no compose file given (--gpuhost-compose FILE, or ini gpuhost_compose)*"])


def fake_gpu_host(root: Path) -> Path:
    """A host tree whose driver and `nvidia-smi` are the H100 captures (the daemon stays real)."""
    data = Path(__file__).parent / "data" / "h100"
    (root / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (root / "proc" / "modules").write_text("nvidia_uvm 1 0 - Live 0x0\nnvidia 2 1 nvidia_uvm, Live 0x0\n")
    version = (data / "proc-driver-nvidia.txt").read_text().splitlines()[:2]
    (root / "proc" / "driver" / "nvidia" / "version").write_text("\n".join(version) + "\n")
    (root / "bin").mkdir()
    smi = root / "bin" / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {data / 'nvidia-smi-q-x.xml'}\n")
    smi.chmod(0o755)
    return root


def test_container_check_on_a_host_without_toolkit(
    pytester: pytest.Pytester,
    compose: ComposeCommand,
    client: docker.DockerClient,
    image: str,
    tmp_path: Path,
) -> None:
    """The container-tier check, as on the H100 without the toolkit: the daemon's refusal is diagnosed."""
    root = fake_gpu_host(tmp_path / "root")
    file = write_compose(tmp_path, image, "true", gpu=True)
    pytester.makeconftest(
        f"""
from pytest_gpuhost.hosts.host import LocalHost

def pytest_gpuhost_make_host(config):
    return LocalHost(root={str(root)!r}, env={{"PATH": {str(root / "bin") + ":/usr/local/bin:/usr/bin:/bin"!r}}})
"""
    )
    try:
        result = run_suite(pytester, SUITE, args=(f"--gpuhost-compose={file}",))
    finally:
        sweep_projects(client)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            f'*FOUND: `{compose.name} up` failed: could not select device driver "nvidia" with capabilities: ??gpu??*',
            "*FIX:   install nvidia-container-toolkit*",
        ]
    )
