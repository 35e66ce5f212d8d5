"""The access modes, runtime detection, CDI checks and the mode-aware toolkit check against the
real NVIDIA Container Toolkit 1.20 with Docker 26 and a mock driver (``.ci/toolkit-daemon.sh``).

This proves the wiring of the toolkit path (dockerd -> nvidia runtime / hook -> CDI edits in the
container), never a GPU: the device nodes are fakes and NVML is a mock.
"""

from __future__ import annotations

import pytest
from dockerlab import run_suite
from toolkit_daemon import ToolkitDaemon, toolkit_daemon_fixture  # noqa: F401  (the fixture)

from pytest_gpuhost.containers import ContainerFailure, Containers, GpuRequest
from pytest_gpuhost.facts.docker_engine import gather_engine
from pytest_gpuhost.facts.toolkit import (
    cdi_driver_problem,
    cdi_gpu_problem,
    cdi_host_path_problem,
    cdi_parse_problem,
    gather_toolkit,
    missing_toolkit,
    mode_needs,
    runtime_problem,
)
from pytest_gpuhost.host import LocalHost

SUITE = "test_step_2_3_toolkit.py"
PROBE = ["sh", "-c", "ls /dev | grep nvidia; nvidia-smi -L"]
WIRING = "wiring proven against the real toolkit, no GPU involved"


def containers(tk: ToolkitDaemon, mode: str) -> Containers:
    return Containers(tk.client, LocalHost(), mode, "never")


@pytest.mark.parametrize("mode", ["gpus", "cdi", "runtime"])
@pytest.mark.parametrize("select", ["all", "index", "uuid"])
def test_access_mode_gives_the_container_the_gpu(
    toolkit_daemon: ToolkitDaemon, mode: str, select: str
) -> None:
    tk = toolkit_daemon
    gpu = tk.gpu if select == "uuid" else tk.gpu.__class__(0, "", tk.gpu.name, tk.gpu.pci_bus_id)
    request = GpuRequest() if select == "all" else GpuRequest(gpus=(gpu,))
    result = containers(tk, mode).run(tk.image, PROBE, check=f"toolkit-{mode}", timeout=60, gpus=request)
    assert result.ok, result.stdout + result.stderr
    assert "nvidiactl" in result.stdout and "nvidia0" in result.stdout
    assert f"GPU 0: Mock GPU (no hardware) (UUID: {tk.uuid})" in result.stdout
    print(f"{mode} mode, GPU by {select}: {WIRING}")


def test_no_gpu_request_gets_no_gpu(toolkit_daemon: ToolkitDaemon) -> None:
    """The nvidia runtime is the default here: a container that asks for nothing gets no device."""
    tk = toolkit_daemon
    result = containers(tk, "gpus").run(tk.image, ["sh", "-c", "ls /dev"], check="toolkit-none", timeout=60)
    assert result.ok and "nvidia0" not in result.stdout


def toolkit_host(tk: ToolkitDaemon, monkeypatch: pytest.MonkeyPatch) -> LocalHost:
    monkeypatch.setenv("DOCKER_HOST", tk.docker_host)
    monkeypatch.setenv("PATH", tk.path_env())
    return LocalHost()


def test_facts_of_the_real_toolkit(toolkit_daemon: ToolkitDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtime detection, the config the daemon's runtime reads, and the CDI spec it injects."""
    tk = toolkit_daemon
    host = toolkit_host(tk, monkeypatch)
    engine = gather_engine(tk.client, host, 30, tk.docker_host)
    assert engine.default_runtime == "nvidia" and "nvidia" in engine.runtimes
    assert engine.cdi_spec_dirs and str(tk.etc / "cdi") in engine.cdi_spec_dirs
    facts = gather_toolkit(host, 30, engine)
    assert facts.runtime_config.path == str(tk.etc / "nvidia-container-runtime" / "config.toml")
    assert facts.daemon_config.path == str(tk.etc / "docker" / "daemon.json")
    assert runtime_problem(engine, facts) is None
    for access in ("gpus", "cdi", "runtime"):
        needs = mode_needs(facts, access)
        assert (needs.configured, needs.runtime) == ("cdi", "cdi")
        assert missing_toolkit(facts, needs) is None, missing_toolkit(facts, needs)
    assert "nvidia-container-cli" in facts.missing_tools  # recipe A has no libnvidia-container
    cdi = facts.cdi
    assert [s.path for s in cdi.nvidia] == [str(tk.etc / "cdi" / "nvidia.yaml")]
    assert cdi.nvidia[0].driver_versions == {tk.driver_version}
    assert cdi_parse_problem(cdi) is None and cdi_host_path_problem(cdi) is None
    assert cdi_gpu_problem(cdi, tk.gpu) is None and cdi_driver_problem(cdi, tk.driver_version) is None
    newer = cdi_driver_problem(cdi, "590.10.01")
    assert newer is not None and "the running driver is 590.10.01" in newer.found


@pytest.mark.parametrize("mode", ["gpus", "cdi", "runtime"])
def test_step_2_3_against_the_real_toolkit(
    toolkit_daemon: ToolkitDaemon, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester, mode: str
) -> None:
    """The shipped step 2.3 in each access mode: the mode-aware toolkit check passes on a cdi-mode
    install without nvidia-container-cli; the default-runtime policy warns."""
    toolkit_host(toolkit_daemon, monkeypatch)
    result = run_suite(pytester, SUITE, args=("--gpuhost-gpu-access", mode, "-W", "always::UserWarning"))
    result.stdout.fnmatch_lines(
        ["*gpuhost.metric toolkit.mode=cdi*", "*gpuhost.metric toolkit.mode_runtime=cdi*"]
    )
    result.stdout.fnmatch_lines(["*gpuhost.metric toolkit.not_needed=*nvidia-container-cli*"])
    result.stdout.fnmatch_lines(["*GpuhostWarning: FOUND: the daemon's default runtime is `nvidia`*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]
    for check in ("test_toolkit_installed", "test_nvidia_runtime_registered", "test_cdi_specs_parse"):
        result.stdout.fnmatch_lines([f"PASSED*{check}*"])


def test_daemon_refusal_is_a_diagnosis(toolkit_daemon: ToolkitDaemon) -> None:
    """A CDI name the spec lacks: the daemon's own words become a diagnosis with the fix."""
    tk = toolkit_daemon
    missing = tk.gpu.__class__(7, "", "none", "none")
    with pytest.raises(ContainerFailure) as failure:
        containers(tk, "cdi").run(
            tk.image, ["true"], check="toolkit-bad-cdi", timeout=60, gpus=GpuRequest((missing,))
        )
    assert "unresolvable CDI devices nvidia.com/gpu=7" in failure.value.diagnosis.found
    assert "nvidia-ctk cdi generate" in failure.value.diagnosis.fix
