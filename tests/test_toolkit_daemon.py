"""The access modes, runtime detection, CDI checks and the mode-aware toolkit check against the
real NVIDIA Container Toolkit 1.20 with Docker 26 and a mock driver (``.ci/toolkit-daemon.sh``).

This proves the wiring of the toolkit path (dockerd -> nvidia runtime / hook -> CDI edits in the
container), never a GPU: the device nodes are fakes and NVML is a mock.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from dockerlab import busybox_image, client_or_skip, run_suite
from toolkit_daemon import STALE_DRIVER, ToolkitDaemon, misconfigured_toolkit_daemon

from pytest_gpuhost.criteria.toolkit import (
    cdi_driver_problem,
    cdi_gpu_problem,
    cdi_host_path_problem,
    cdi_parse_problem,
    missing_toolkit,
    runtime_problem,
)
from pytest_gpuhost.criteria.toolkit_pitfalls import (
    cdi_support_problem,
    gpus_under_runc_problem,
    hook_path_problem,
)
from pytest_gpuhost.docker.containers import ContainerFailure, Containers, GpuRequest
from pytest_gpuhost.facts.docker_engine import gather_engine
from pytest_gpuhost.facts.toolkit import find_hook_on_daemon_path, gather_toolkit, mode_needs
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.versions import version_tuple

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
    assert re.search(rf"^GPU 0: .* \(UUID: {re.escape(tk.uuid)}\)", result.stdout, re.MULTILINE), (
        result.stdout
    )
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


# -- the pitfalls of item 2, provoked against the real toolkit --------------------------------


def test_gpus_under_runc_in_cdi_mode(toolkit_daemon: ToolkitDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--gpus --runtime runc`: the hook refuses in cdi mode; the diagnosis says use the nvidia runtime."""
    tk = toolkit_daemon
    with pytest.raises(ContainerFailure) as failure:
        containers(tk, "gpus").run(
            tk.image, ["true"], check="toolkit-runc", timeout=60, gpus=GpuRequest(), runtime="runc"
        )
    diagnosis = failure.value.diagnosis
    assert "invoking the NVIDIA Container Runtime Hook directly" in diagnosis.found
    assert "--set-as-default" in diagnosis.fix and "--runtime nvidia" in diagnosis.fix
    host = toolkit_host(tk, monkeypatch)
    engine = gather_engine(tk.client, host, 30, tk.docker_host)
    facts = gather_toolkit(host, 30, engine)
    assert gpus_under_runc_problem(engine, facts, "gpus") is None  # nvidia is the default here
    as_runc = dataclasses.replace(engine, default_runtime="runc")
    static = gpus_under_runc_problem(as_runc, facts, "gpus")
    assert static is not None and "the toolkit is in cdi mode" in static.found


def test_cdi_mode_on_docker_20_10(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own Docker 20.10 has no CDI: the daemon's refusal and the static check agree."""
    client = client_or_skip()
    engine = gather_engine(client, LocalHost(), 30, None)
    if (version_tuple(engine.engine_version) or (99,)) >= (25,):
        pytest.skip(f"the machine's daemon is Docker {engine.engine_version}, which has CDI")
    with busybox_image(client) as image, pytest.raises(ContainerFailure) as failure:
        Containers(client, LocalHost(), "cdi", "never").run(
            image, ["true"], check="toolkit-cdi-20", timeout=60, gpus=GpuRequest()
        )
    assert 'could not select device driver "cdi"' in failure.value.diagnosis.found
    assert "Docker 25" in failure.value.diagnosis.cause
    facts = gather_toolkit(LocalHost(), 30, engine)
    static = cdi_support_problem(engine, facts, "cdi")
    assert static is not None and static.found.startswith(f"Docker {engine.engine_version} has no CDI")


def test_misconfigured_toolkit_daemon(
    toolkit_daemon: ToolkitDaemon, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No CDI feature, no hook on dockerd's PATH, a spec for another driver: each a diagnosis."""
    tk = toolkit_daemon
    work = tmp_path_factory.mktemp("tk-wrong")
    with misconfigured_toolkit_daemon(tk, work) as client:
        wrong = Containers(client, LocalHost(), "gpus", "never")
        with pytest.raises(ContainerFailure) as no_hook:
            wrong.run(tk.image, ["true"], check="toolkit-nohook", timeout=60, gpus=GpuRequest())
        assert 'could not select device driver "" with capabilities: [[gpu]]' in no_hook.value.diagnosis.found
        assert "nvidia-container-runtime-hook was not on dockerd's PATH" in no_hook.value.diagnosis.cause
        engine = gather_engine(client, LocalHost(), 30, f"unix://{work / 'd.sock'}")
        static = hook_path_problem(find_hook_on_daemon_path(LocalHost(), engine), "gpus")
        assert (
            static is not None and "nvidia-container-runtime-hook is on none of the folders" in static.found
        )
        assert hook_path_problem(find_hook_on_daemon_path(LocalHost(), engine), "cdi") is None

        wrong.access_mode = "cdi"
        with pytest.raises(ContainerFailure) as no_cdi:
            wrong.run(tk.image, ["true"], check="toolkit-nocdi", timeout=60, gpus=GpuRequest())
        assert 'could not select device driver "cdi"' in no_cdi.value.diagnosis.found
        assert '"features": {"cdi": true}' in no_cdi.value.diagnosis.cause
        facts = gather_toolkit(LocalHost(), 30, engine)
        assert facts.daemon_config.path == str(work / "daemon.json")
        not_on = cdi_support_problem(engine, facts, "cdi")
        assert not_on is not None and 'without `"features": {"cdi": true}`' in not_on.found

        wrong.access_mode = "runtime"
        with pytest.raises(ContainerFailure) as stale:
            wrong.run(tk.image, ["true"], check="toolkit-stale", timeout=60, gpus=GpuRequest())
        assert f"libnvidia-ml.so.{STALE_DRIVER}, which does not exist" in stale.value.diagnosis.found
        assert f"generated for driver {STALE_DRIVER}" in stale.value.diagnosis.cause
        assert facts.runtime_config.path == str(work / "config.toml")
        spec_problem = cdi_driver_problem(facts.cdi, tk.driver_version)
        assert spec_problem is not None and f"has {STALE_DRIVER}" in spec_problem.found
