"""The access modes' pitfalls from the real error texts (toolkit 1.20, Docker 20.10 / 26), and the
daemon-reload preconditions, from files."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_gpuhost.criteria.daemon_reload import CREATE_LINKS, daemon_reload_problem, reload_unavailable
from pytest_gpuhost.criteria.toolkit_pitfalls import (
    cdi_support_problem,
    diagnose_toolkit_error,
    gpus_under_runc_problem,
    hook_path_problem,
)
from pytest_gpuhost.docker.containers import diagnose_daemon_error
from pytest_gpuhost.facts import toolkit as toolkit_module
from pytest_gpuhost.facts.daemon_reload import DevChar, missing_links, parse_stat, read_dev_char, read_links
from pytest_gpuhost.facts.docker_engine import DaemonProcess, EngineFacts, parse_engine
from pytest_gpuhost.facts.toolkit import ToolkitFacts, find_hook_on_daemon_path, parse_simple_toml
from pytest_gpuhost.hosts.host import CommandResult, LocalHost

DATA = Path(__file__).parent / "data"
ERRORS = DATA / "toolkit-1.20" / "errors"


def error(name: str) -> str:
    return (ERRORS / name).read_text().removeprefix("docker: Error response from daemon: ").strip()


def engine(version: str = "20.10.24", **changes: object) -> EngineFacts:
    raw = json.loads((DATA / "docker" / "version-20.10.24.json").read_text())
    raw["Version"] = version
    info = json.loads((DATA / "h100" / "docker-info.json").read_text())
    facts = parse_engine(raw, info, docker_host=None, sdk_version="7.1.0")
    return dataclasses.replace(facts, engine_version=version, **changes)  # type: ignore[arg-type]


def toolkit(
    mode: str | None, daemon_json: dict[str, object] | None = None, version: str = "1.20.0"
) -> ToolkitFacts:
    tools = {n: toolkit_module.ToolInfo(n, True, version) for n in toolkit_module.TOOLS}
    text = f'[nvidia-container-runtime]\nmode = "{mode}"\n' if mode else ""
    runtime = toolkit_module.ConfigFile(toolkit_module.RUNTIME_CONFIG, True, parse_simple_toml(text))
    daemon = toolkit_module.ConfigFile("/etc/docker/daemon.json", daemon_json is not None, daemon_json)
    return ToolkitFacts(tools, daemon, runtime)


# -- the daemon's words -----------------------------------------------------------------------


def test_hook_refuses_gpus_under_runc() -> None:
    text = error("gpus-under-runc-cdi-mode.txt")
    finding = diagnose_daemon_error(text, "gpus", "gpuhost-base")
    assert finding.found.startswith(
        "the toolkit's hook refused the container (gpus mode): invoking the NVIDIA"
    )
    assert "error during container init" not in finding.found  # runc's wrapping is cut
    assert "cdi/jit-cdi mode" in finding.cause
    assert "--set-as-default" in finding.fix and "--runtime nvidia" in finding.fix


def test_no_gpu_driver_names_the_hook_on_dockerds_path() -> None:
    finding = diagnose_daemon_error(error("gpus-without-hook.txt"), "gpus", "img")
    assert "the daemon cannot give containers GPUs" in finding.found
    assert "nvidia-container-runtime-hook was not on dockerd's PATH when the daemon started" in finding.cause
    assert "nvidia-ctk runtime configure --runtime=docker" in finding.fix


def test_no_cdi_driver_names_both_causes() -> None:
    finding = diagnose_daemon_error(error("cdi-not-enabled.txt"), "cdi", "img")
    assert "does not accept CDI devices" in finding.found
    assert (
        "Docker 20.10-24 have no CDI at all" in finding.cause and '"features": {"cdi": true}' in finding.cause
    )
    assert "--cdi.enabled" in finding.fix


def test_stale_spec_mount() -> None:
    finding = diagnose_daemon_error(error("stale-cdi-spec.txt"), "runtime", "img")
    assert "the CDI spec mounts /tmp/gpuhost-tk/driver/lib64/libnvidia-ml.so.570.124.06" in finding.found
    assert "generated for driver 570.124.06, not the loaded driver" in finding.cause
    assert "nvidia-ctk cdi generate" in finding.fix
    other = diagnose_toolkit_error(
        'error mounting "/data/x" to rootfs at "/x": stat /data/x: no such file or directory: unknown', "gpus"
    )
    assert other is not None and "--gpuhost-volume" in other.cause


def test_auto_mode_hook_without_libnvidia_container() -> None:
    """`auto` with --gpus under runc: the hook picks legacy and looks for nvidia-container-cli."""
    finding = diagnose_daemon_error(error("gpus-under-runc-auto-mode-no-cli.txt"), "gpus", "img")
    assert finding.found.startswith("the toolkit's hook needs libnvidia-container, which is not installed")
    assert "couldn't find binary nvidia-container-cli in PATH" in finding.found
    assert "auto" in finding.cause and "nvidia-container-runtime.mode=cdi" in finding.fix


def test_jit_cdi_without_nvml() -> None:
    finding = diagnose_daemon_error(error("runtime-auto-mode-jit-cdi-failed.txt"), "runtime", "img")
    assert "could not build the container's CDI spec" in finding.found
    assert "ERROR_LIBRARY_NOT_FOUND" in finding.found and "jit-cdi" in finding.cause
    assert "--driver-root" in finding.fix


def test_other_texts_are_not_pitfalls() -> None:
    assert diagnose_toolkit_error("unknown or invalid runtime name: nvidia", "runtime") is None


# -- the same pitfalls from facts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "default", "expected"),
    [("cdi", None, True), ("jit-cdi", "runc", True), ("cdi", "nvidia", False), ("auto", None, False)],
)
def test_gpus_under_runc(mode: str, default: str | None, expected: bool) -> None:
    finding = gpus_under_runc_problem(engine(default_runtime=default), toolkit(mode), "gpus")
    assert (finding is not None) == expected
    assert gpus_under_runc_problem(engine(), toolkit("cdi"), "runtime") is None


@pytest.mark.parametrize(
    ("version", "features", "dirs", "expected"),
    [
        ("20.10.24", None, None, "has no CDI"),
        ("26.1.5", None, (), 'without `"features": {"cdi": true}`'),
        ("26.1.5", {"cdi": True}, (), None),
        ("26.1.5", None, ("/etc/cdi",), None),  # the daemon reports its CDI dirs: CDI is on
        ("28.0.1", None, (), 'without `"features": {"cdi": true}`'),  # on by default from 28.2 only
        ("28.2.0", None, (), None),
    ],
)
def test_cdi_support(
    version: str, features: object, dirs: tuple[str, ...] | None, expected: str | None
) -> None:
    daemon_json = {"features": features} if features is not None else {}
    finding = cdi_support_problem(engine(version, cdi_spec_dirs=dirs), toolkit("cdi", daemon_json), "cdi")
    if expected is None:
        assert finding is None
    else:
        assert finding is not None and expected in finding.found
    assert cdi_support_problem(engine(version), toolkit("cdi"), "gpus") is None


def test_hook_on_dockerds_path(tmp_path: Path) -> None:
    (tmp_path / "proc" / "9").mkdir(parents=True)
    (tmp_path / "proc" / "9" / "environ").write_text("PATH=/opt/tk/bin:/usr/bin\0")
    daemon = engine(process=DaemonProcess(9, ("dockerd",), "/usr/bin/dockerd"))
    host = LocalHost(root=tmp_path)
    finding = hook_path_problem(find_hook_on_daemon_path(host, daemon), "gpus")
    assert finding is not None and "(/opt/tk/bin:/usr/bin)" in finding.found
    (tmp_path / "opt" / "tk" / "bin").mkdir(parents=True)
    (tmp_path / "opt" / "tk" / "bin" / "nvidia-container-runtime-hook").touch()
    assert hook_path_problem(find_hook_on_daemon_path(host, daemon), "gpus") is None
    assert (
        hook_path_problem(find_hook_on_daemon_path(host, engine()), "gpus") is None
    )  # no process facts: nothing to say


# -- daemon-reload preconditions --------------------------------------------------------------

STAT = """\
c3,0,character special file,/dev/nvidia0
c3,1,character special file,/dev/nvidia1
c3,ff,character special file,/dev/nvidiactl
1fd,0,character special file,/dev/nvidia-uvm
0,0,directory,/dev/nvidia-caps
"""


def test_dev_char_links() -> None:
    nodes = parse_stat(STAT)
    assert nodes == {
        "/dev/nvidia0": "195:0",
        "/dev/nvidia1": "195:1",
        "/dev/nvidiactl": "195:255",
        "/dev/nvidia-uvm": "509:0",
    }
    links = {
        "/dev/char/195:0": "../nvidia0",
        "/dev/char/195:1": "../nvidia0",
        "/dev/char/195:255": "../nvidiactl",
    }
    assert missing_links(nodes, links) == ("/dev/nvidia1", "/dev/nvidia-uvm")


def test_reload_risk_by_cgroup_driver_links_and_mode() -> None:
    dev = DevChar({"/dev/nvidia0": "195:0"}, ("/dev/nvidia0",))
    systemd = engine(cgroup_driver="systemd")
    finding = daemon_reload_problem(systemd, toolkit("cdi"), dev, "cdi")
    assert finding is not None and "/dev/char has no link for /dev/nvidia0 (195:0)" in finding.found
    assert CREATE_LINKS in finding.fix and "udev" in finding.fix
    assert daemon_reload_problem(engine(cgroup_driver="cgroupfs"), toolkit("cdi"), dev, "cdi") is None
    linked = DevChar({"/dev/nvidia0": "195:0"})
    assert daemon_reload_problem(systemd, toolkit("cdi"), linked, "gpus") is None
    legacy = daemon_reload_problem(systemd, toolkit("legacy"), linked, "runtime")
    assert legacy is not None and "legacy hook" in legacy.found
    old_auto = daemon_reload_problem(systemd, toolkit(None, version="1.17.8"), linked, "gpus")
    assert old_auto is not None
    assert daemon_reload_problem(systemd, toolkit("legacy"), DevChar({}), "gpus") is None  # no GPU nodes


def test_read_dev_char_on_this_machine() -> None:
    """No /dev/nvidia* here: no nodes, nothing missing, no error."""
    dev = read_dev_char(LocalHost(), 10)
    assert dev.error is None and set(dev.missing) <= set(dev.nodes)


def test_read_links_asks_once_for_every_link(tmp_path: Path) -> None:
    """Targets in order, None for a plain file and for a missing path, from one command."""
    (tmp_path / "nvidia0").write_text("")
    (tmp_path / "195:0").symlink_to("../nvidia0")
    (tmp_path / "195:255").symlink_to("../nvidiactl")  # dangling: still a link
    commands: list[list[str]] = []

    class Counting(LocalHost):
        def run(self, argv: Sequence[str], timeout: float = 10) -> CommandResult:
            commands.append(list(argv))
            return super().run(argv, timeout)

    paths = [str(tmp_path / n) for n in ("195:0", "nvidia0", "195:255", "absent")]
    assert read_links(Counting(), paths, 10) == dict(
        zip(paths, ["../nvidia0", None, "../nvidiactl", None], strict=True)
    )
    assert len(commands) == 1
    assert read_links(Counting(), [], 10) == {} and len(commands) == 1


def test_reload_only_where_it_can_run() -> None:
    assert reload_unavailable(True, True, ["systemctl"]) == "the reload runs only on the local host"
    assert "does not run systemd" in (reload_unavailable(False, False, ["systemctl"]) or "")
    assert reload_unavailable(False, True, None) == "systemctl is not on PATH"
    assert reload_unavailable(False, True, ["systemctl"]) is None


@pytest.mark.parametrize(
    ("name", "count"), [("docker-compose.yml", "all"), ("docker-compose.one-gpu.yml", 1)]
)
def test_example_compose_files_reserve_gpus(name: str, count: object) -> None:
    """The device run's step 3.2 uses these two: one reserves every GPU, one reserves one."""
    from pytest_gpuhost.docker.compose import validate_compose_file

    reservations, problems = validate_compose_file(str(Path(__file__).parent.parent / "examples" / name))
    assert problems == [] and len(reservations) == 1
    assert reservations[0].count == count
