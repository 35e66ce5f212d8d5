"""Guide step 2.3: toolkit facts from fake /etc trees and fake tools, and the runtime on real daemons."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from dockerlab import client_or_skip, run_suite, second_dockerd

from pytest_gpuhost.criteria.toolkit import (
    broken_tools,
    cdi_driver_problem,
    cdi_gpu_problem,
    cdi_host_path_problem,
    cdi_parse_problem,
    cdi_shadowing_warning,
    default_runtime_warning,
    missing_toolkit,
    rootless_cgroups_problem,
    runtime_problem,
    version_skew,
)
from pytest_gpuhost.facts import toolkit as toolkit_module
from pytest_gpuhost.facts.docker_engine import DaemonProcess, EngineFacts, parse_engine
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.toolkit import (
    TOOLS,
    ToolkitFacts,
    cdi_spec_dirs,
    daemon_config_path,
    gather_toolkit,
    mode_needs,
    parse_simple_toml,
    parse_tool_version,
    read_cdi_specs,
    runtime_config_path,
)
from pytest_gpuhost.hosts.host import LocalHost

DATA = Path(__file__).parent / "data"
SUITE = "test_step_2_3_toolkit.py"
H100_UUID = "GPU-042f1913-64c6-43ac-27c6-466e2d9041b0"
H100 = GpuInfo(index=0, uuid=H100_UUID, name="NVIDIA H100 80GB HBM3", pci_bus_id="0000:00:06.0")

# What each tool prints for --version (toolkit 1.17.x; the runtime also prints its runc's version).
VERSION_OUTPUT = {
    "nvidia-ctk": "NVIDIA Container Toolkit CLI version 1.17.8\ncommit: 5bbb6e8bd3c9\n",
    "nvidia-container-runtime": (
        "NVIDIA Container Runtime version 1.17.8\ncommit: 5bbb6e8bd3c9\nspec: 1.2.0\n\n"
        "runc version 1.2.5\ncommit: v1.2.5-0-g59923ef\nspec: 1.2.0\ngo: go1.23.6\nlibseccomp: 2.5.5\n"
    ),
    "nvidia-container-runtime-hook": "NVIDIA Container Runtime Hook version 1.17.8\ncommit: 5bbb6e8bd3c9\n",
    "nvidia-container-cli": (
        "cli-version: 1.17.8\nlib-version: 1.17.8\nbuild date: 2025-05-30T13:47+00:00\n"
        "build revision: 5bbb6e8bd3c9\nbuild compiler: x86_64-linux-gnu-gcc-7 7.5.0\n"
    ),
}
CONFIG_TOML = """\
#accept-nvidia-visible-devices-as-volume-mounts = false
disable-require = false

[nvidia-container-cli]
environment = []
ldconfig = "@/sbin/ldconfig.real"
load-kmods = true
#no-cgroups = false

[nvidia-container-runtime]
log-level = "info"
mode = "cdi" # set by nvidia-ctk config
runtimes = ["docker-runc", "runc", "crun"]
"""


def fake_tools(folder: Path, versions: dict[str, str] | None = None) -> Path:
    """Shell scripts that answer --version like the toolkit's commands."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOOLS:
        output = VERSION_OUTPUT[name]
        if versions and name in versions:
            output = output.replace("1.17.8", versions[name])
        script = folder / name
        script.write_text("#!/bin/sh\ncat <<'EOF'\n" + output + "EOF\n")
        script.chmod(0o755)
    return folder


def fake_tree(root: Path, spec: str | None = None, daemon_json: dict[str, object] | None = None) -> Path:
    """An /etc with daemon.json, the toolkit's config.toml and a CDI spec whose hostPaths exist."""
    (root / "etc" / "docker").mkdir(parents=True, exist_ok=True)
    if daemon_json is not None:
        (root / "etc" / "docker" / "daemon.json").write_text(json.dumps(daemon_json))
    (root / "etc" / "nvidia-container-runtime").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "nvidia-container-runtime" / "config.toml").write_text(CONFIG_TOML)
    text = spec if spec is not None else (DATA / "cdi" / "nvidia-h100.yaml").read_text()
    (root / "etc" / "cdi").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "cdi" / "nvidia.yaml").write_text(text)
    parsed = read_cdi_specs(LocalHost(root=root))
    for path in {p for s in parsed.specs for p in s.host_paths}:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    return root


NVIDIA_DAEMON_JSON: dict[str, object] = {
    "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
}


def engine(**changes: object) -> EngineFacts:
    version = json.loads((DATA / "docker" / "version-20.10.24.json").read_text())
    info = json.loads((DATA / "h100" / "docker-info.json").read_text())
    facts = parse_engine(version, info, docker_host=None, sdk_version="7.1.0")
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


@pytest.fixture
def installed(tmp_path: Path) -> tuple[LocalHost, ToolkitFacts]:
    root = fake_tree(tmp_path / "root", daemon_json=NVIDIA_DAEMON_JSON)
    bindir = fake_tools(tmp_path / "bin")
    host = LocalHost(root=root, env={"PATH": f"{bindir}:/usr/bin:/bin"})
    return host, gather_toolkit(host, timeout=10)


# -- tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOOLS)
def test_tool_versions_parse(name: str) -> None:
    assert parse_tool_version(VERSION_OUTPUT[name]) == "1.17.8"


def test_unversioned_output() -> None:
    assert parse_tool_version("usage: nvidia-ctk [global options]") is None


def test_gather_from_a_fake_installation(installed: tuple[LocalHost, ToolkitFacts]) -> None:
    _, facts = installed
    assert {name: t.version for name, t in facts.tools.items()} == dict.fromkeys(TOOLS, "1.17.8")
    assert facts.missing_tools == [] and missing_toolkit(facts) is None and version_skew(facts) is None
    assert "nvidia" in facts.configured_runtimes
    assert facts.runtime_mode == "cdi" and facts.no_cgroups is None
    assert facts.properties()["gpuhost.toolkit.nvidia-ctk"] == "1.17.8"
    spec = facts.cdi.nvidia[0]
    assert spec.path == "/etc/cdi/nvidia.yaml" and spec.cdi_version == "0.5.0"
    assert spec.device_names == ("0", H100_UUID, "all")
    assert spec.driver_versions == {"580.159.04"}
    assert spec.missing_paths == ()
    assert "/dev/nvidiactl" in spec.host_paths and "/usr/bin/nvidia-smi" in spec.host_paths
    for finding in (
        cdi_parse_problem(facts.cdi),
        cdi_gpu_problem(facts.cdi, H100),
        cdi_driver_problem(facts.cdi, "580.159.04"),
        cdi_host_path_problem(facts.cdi),
        cdi_shadowing_warning(facts.cdi),
    ):
        assert finding is None


def test_no_toolkit_at_all(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    host = LocalHost(root=tmp_path, env={"PATH": str(tmp_path / "bin")})
    facts = gather_toolkit(host, timeout=10)
    assert facts.missing_tools == list(TOOLS) and not facts.installed
    finding = missing_toolkit(facts)
    assert finding is not None
    assert finding.found.startswith("not on PATH: nvidia-ctk, nvidia-container-runtime")
    assert "container-toolkit/latest/install-guide.html" in finding.fix
    assert (
        "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker" in finding.fix
    )
    assert facts.cdi.specs == () and not facts.daemon_config.exists


def test_partial_upgrade_is_a_skew(tmp_path: Path) -> None:
    bindir = fake_tools(tmp_path / "bin", {"nvidia-container-cli": "1.16.2"})
    facts = gather_toolkit(LocalHost(root=tmp_path, env={"PATH": f"{bindir}:/usr/bin:/bin"}), timeout=10)
    skew = version_skew(facts)
    assert skew is not None and "nvidia-container-cli 1.16.2" in skew.found


# -- daemon.json and the runtime --------------------------------------------------------------


def toolkit_with(daemon_json: dict[str, object] | None, tools_found: bool = True) -> ToolkitFacts:
    tools = {
        name: toolkit_module.ToolInfo(name, tools_found, "1.17.8" if tools_found else None) for name in TOOLS
    }
    config = toolkit_module.ConfigFile("/etc/docker/daemon.json", daemon_json is not None, daemon_json)
    runtime = toolkit_module.ConfigFile(toolkit_module.RUNTIME_CONFIG, exists=False)
    return ToolkitFacts(tools, config, runtime)


def test_daemon_json_names_nvidia_but_daemon_does_not_know_it() -> None:
    finding = runtime_problem(engine(), toolkit_with(NVIDIA_DAEMON_JSON))
    assert finding is not None
    assert (
        "/etc/docker/daemon.json names the `nvidia` runtime, but the running daemon does not know it"
        in finding.found
    )
    assert "started before the toolkit was installed" in finding.cause
    assert finding.fix == "`sudo systemctl restart docker`"


def test_runtime_never_registered() -> None:
    finding = runtime_problem(engine(), toolkit_with({"log-driver": "json-file"}))
    assert finding is not None and "names no `nvidia` runtime" in finding.found
    assert (
        finding.fix == "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`"
    )
    rootless = runtime_problem(engine(security_options=("name=rootless",)), toolkit_with(None))
    assert rootless is not None and "--config=/etc/docker/daemon.json" in rootless.fix
    assert "systemctl --user restart docker" in rootless.fix


def test_registered_runtime_whose_binary_is_gone() -> None:
    registered = engine(runtimes={"runc": "runc", "nvidia": "nvidia-container-runtime"})
    assert runtime_problem(registered, toolkit_with(NVIDIA_DAEMON_JSON)) is None
    finding = runtime_problem(registered, toolkit_with(NVIDIA_DAEMON_JSON, tools_found=False))
    assert finding is not None and "which is not installed" in finding.found


def test_default_nvidia_runtime_is_a_warning() -> None:
    assert default_runtime_warning(engine()) is None
    finding = default_runtime_warning(engine(default_runtime="nvidia"))
    assert finding is not None and "gets every GPU" in finding.cause


def test_daemon_config_path_follows_the_daemon() -> None:
    assert daemon_config_path(None, {}) == "/etc/docker/daemon.json"
    rootless = engine(security_options=("name=rootless",))
    assert daemon_config_path(rootless, {"HOME": "/home/ann"}) == "/home/ann/.config/docker/daemon.json"
    assert daemon_config_path(rootless, {"XDG_CONFIG_HOME": "/cfg"}) == "/cfg/docker/daemon.json"
    process = DaemonProcess(7, ("dockerd", "--config-file=/srv/d.json"), "/usr/bin/dockerd")
    assert daemon_config_path(engine(process=process), {}) == "/srv/d.json"


def test_rootless_needs_no_cgroups() -> None:
    rootless = engine(security_options=("name=rootless",))
    facts = toolkit_with(None)
    finding = rootless_cgroups_problem(rootless, facts)
    assert finding is not None and "nvidia-container-cli.no-cgroups --in-place" in finding.fix
    fixed = dataclasses.replace(
        facts,
        runtime_config=toolkit_module.ConfigFile(
            "/etc/nvidia-container-runtime/config.toml",
            True,
            parse_simple_toml("[nvidia-container-cli]\nno-cgroups = true\n"),
        ),
    )
    assert rootless_cgroups_problem(rootless, fixed) is None
    assert rootless_cgroups_problem(engine(), facts) is None


def test_simple_toml() -> None:
    parsed = parse_simple_toml(CONFIG_TOML)
    assert parsed["nvidia-container-runtime"]["mode"] == "cdi"
    assert parsed["nvidia-container-cli"]["load-kmods"] is True
    assert "no-cgroups" not in parsed["nvidia-container-cli"]  # commented out
    assert parsed[""]["disable-require"] is False


# -- CDI specs --------------------------------------------------------------------------------


def test_stale_spec_after_a_driver_upgrade(tmp_path: Path) -> None:
    """A spec generated for 570 on a host now running 580: wrong versions, and its files are gone."""
    root = fake_tree(
        tmp_path, spec=(DATA / "cdi" / "nvidia-h100.yaml").read_text().replace("580.159.04", "570.133.20")
    )
    old = root / "usr" / "lib" / "x86_64-linux-gnu" / "libcuda.so.570.133.20"
    old.unlink()
    cdi = read_cdi_specs(LocalHost(root=root))
    driver = cdi_driver_problem(cdi, "580.159.04")
    assert driver is not None
    assert "/etc/cdi/nvidia.yaml has 570.133.20; the running driver is 580.159.04" in driver.found
    assert "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in driver.fix
    paths = cdi_host_path_problem(cdi)
    assert paths is not None and "/usr/lib/x86_64-linux-gnu/libcuda.so.570.133.20" in paths.found
    assert "libnvidia-ml" not in paths.found


def test_spec_without_this_gpu(tmp_path: Path) -> None:
    cdi = read_cdi_specs(LocalHost(root=fake_tree(tmp_path)))
    second = GpuInfo(
        index=1, uuid="GPU-1b94c864-4a5c-bea0-af8d-f4521d70170a", name="NVIDIA H200", pci_bus_id="x"
    )
    finding = cdi_gpu_problem(cdi, second)
    assert finding is not None and "no CDI device for GPU 1 (GPU-1b94c864" in finding.found
    assert f"it names: 0, {H100_UUID}, all" in finding.found
    by_uuid_only = dataclasses.replace(cdi.specs[0], device_names=(H100_UUID.lower(),))
    assert by_uuid_only.names_gpu(H100)
    old_style = dataclasses.replace(cdi.specs[0], device_names=("gpu0",))
    assert old_style.names_gpu(H100)


def test_broken_and_json_specs(tmp_path: Path) -> None:
    root = tmp_path
    (root / "etc" / "cdi").mkdir(parents=True)
    (root / "etc" / "cdi" / "broken.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [\n")
    (root / "etc" / "cdi" / "nameless.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- containerEdits: {}\n"
    )
    (root / "var" / "run" / "cdi").mkdir(parents=True)
    spec = {"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": [{"name": "0", "containerEdits": {}}]}
    (root / "var" / "run" / "cdi" / "nvidia.json").write_text(json.dumps(spec))
    (root / "var" / "run" / "cdi" / "notes.txt").write_text("ignored")
    cdi = read_cdi_specs(LocalHost(root=root))
    assert [s.path for s in cdi.specs] == ["/var/run/cdi/nvidia.json"]
    assert {p for p, _ in cdi.errors} == {"/etc/cdi/broken.yaml", "/etc/cdi/nameless.yaml"}
    finding = cdi_parse_problem(cdi)
    assert finding is not None and "/etc/cdi/broken.yaml: does not parse" in finding.found
    assert "every entry of devices needs a name" in finding.found


def test_yaml_spec_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_yaml() -> object:
        raise ImportError("No module named 'yaml'")

    monkeypatch.setattr(toolkit_module, "load_yaml_module", no_yaml)
    cdi = read_cdi_specs(LocalHost(root=fake_tree(tmp_path)))
    assert cdi.yaml_missing and cdi.specs == ()
    finding = cdi_parse_problem(cdi)
    assert finding is not None and "`pip install pyyaml`" in finding.fix


def test_two_specs_of_one_kind_warn(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    (root / "var" / "run" / "cdi").mkdir(parents=True)
    (root / "var" / "run" / "cdi" / "nvidia.yaml").write_text(
        (root / "etc" / "cdi" / "nvidia.yaml").read_text()
    )
    cdi = read_cdi_specs(LocalHost(root=root))
    warning = cdi_shadowing_warning(cdi)
    assert warning is not None and "2 CDI specs define nvidia.com/gpu" in warning.found


# -- the suite against fake trees and real daemons --------------------------------------------


def fake_host_conftest(pytester: pytest.Pytester, root: Path, bindir: Path) -> None:
    pytester.makeconftest(
        f"""
from pytest_gpuhost.hosts.host import LocalHost

def pytest_gpuhost_make_host(config):
    return LocalHost(root={str(root)!r}, env={{"PATH": {str(bindir) + ":/usr/bin:/bin"!r}}})
"""
    )


def test_suite_on_fake_tree_with_this_daemon(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """daemon.json names `nvidia` but this daemon was never restarted: the restart diagnosis."""
    client_or_skip()
    root = fake_tree(tmp_path / "root", daemon_json=NVIDIA_DAEMON_JSON)
    fake_host_conftest(pytester, root, fake_tools(tmp_path / "bin"))
    result = run_suite(pytester, SUITE)
    # toolkit, default runtime, daemon-reload, CDI parse and host paths pass; rootless, per-GPU and
    # driver-match skip; the runtime is unknown to the daemon, and --gpus would hit runc in cdi mode.
    result.assert_outcomes(passed=5, failed=2, skipped=3)
    result.stdout.fnmatch_lines(
        ["*FOUND: the toolkit is in cdi mode and the daemon's default runtime is `runc`*"]
    )
    result.stdout.fnmatch_lines(
        [
            "*FOUND: /etc/docker/daemon.json names the `nvidia` runtime, but the running daemon does not know it*",
            "*CAUSE: the daemon was started before the toolkit was installed or configured*",
            "*FIX:   `sudo systemctl restart docker`*",
        ]
    )
    result.stdout.fnmatch_lines(["*gpuhost.metric toolkit.nvidia-ctk=1.17.8*"])
    result.stdout.fnmatch_lines(
        ["*gpuhost.metric cdi.spec=/etc/cdi/nvidia.yaml cdi.version=0.5.0 cdi.devices=3*"]
    )


def test_suite_without_toolkit_skips_the_runtime_check(pytester: pytest.Pytester, tmp_path: Path) -> None:
    client_or_skip()
    (tmp_path / "root").mkdir()
    (tmp_path / "bin").mkdir()
    fake_host_conftest(pytester, tmp_path / "root", tmp_path / "bin")
    result = run_suite(pytester, SUITE)
    result.assert_outcomes(passed=2, failed=1, skipped=7)
    result.stdout.fnmatch_lines(
        [
            "*FOUND: not on PATH: nvidia-ctk, nvidia-container-runtime, nvidia-container-runtime-hook, "
            "nvidia-container-cli*",
            "*SKIPPED*needs the toolkit: test_toolkit_installed failed*",
        ]
    )


def test_runtime_detected_in_a_test_daemon(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second dockerd whose daemon.json registers `nvidia` (as runc) and makes it the default."""
    config = {"runtimes": {"nvidia": {"path": "runc"}}, "default-runtime": "nvidia"}
    with second_dockerd(config) as daemon:
        monkeypatch.setenv("DOCKER_HOST", daemon.docker_host)
        result = run_suite(pytester, SUITE, args=("-k", "runtime", "-W", "always::UserWarning"))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*gpuhost.metric docker.runtimes=*nvidia*"])
    result.stdout.fnmatch_lines(["*gpuhost.metric docker.default_runtime=nvidia*"])
    result.stdout.fnmatch_lines(["*GpuhostWarning: FOUND: the daemon's default runtime is `nvidia`*"])
    assert os.path.exists(daemon.socket) is False  # stopped and removed


# -- the runtime's mode decides what must be installed ----------------------------------------

TK120 = DATA / "toolkit-1.20"


def toolkit_120_install(
    tmp_path: Path, config: str, tools: tuple[str, ...], daemon_json: dict[str, object] | None = None
) -> ToolkitFacts:
    """A host with the 1.20 commands in ``tools`` (their real --version output) and a real config.toml."""
    root = tmp_path / "root"
    (root / "etc" / "nvidia-container-runtime").mkdir(parents=True)
    (root / "etc" / "nvidia-container-runtime" / "config.toml").write_text((TK120 / config).read_text())
    if daemon_json is not None:
        (root / "etc" / "docker").mkdir(parents=True)
        (root / "etc" / "docker" / "daemon.json").write_text(json.dumps(daemon_json))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in tools:
        script = bindir / name
        script.write_text("#!/bin/sh\ncat <<'EOF'\n" + (TK120 / f"{name}.version").read_text() + "EOF\n")
        script.chmod(0o755)
    return gather_toolkit(LocalHost(root=root, env={"PATH": f"{bindir}:/usr/bin:/bin"}), timeout=10)


BASE_120 = ("nvidia-ctk", "nvidia-container-runtime", "nvidia-container-runtime-hook")
DEFAULT_NVIDIA = json.loads((TK120 / "daemon.json").read_text())


@pytest.mark.parametrize("access", ["gpus", "cdi", "runtime", "devices"])
def test_cdi_mode_install_without_libnvidia_container_passes(tmp_path: Path, access: str) -> None:
    """Recipe A: nvidia-ctk, the runtime and the hook 1.20.0 in cdi mode; no nvidia-container-cli."""
    facts = toolkit_120_install(tmp_path, "config-cdi.toml", BASE_120, DEFAULT_NVIDIA)
    needs = mode_needs(facts, access)
    assert facts.missing_tools == ["nvidia-container-cli"]
    assert (needs.configured, needs.runtime, needs.hook) == ("cdi", "cdi", "cdi")
    assert "nvidia-container-cli" in needs.not_needed
    assert missing_toolkit(facts, needs) is None and broken_tools(facts, needs) is None
    assert version_skew(facts) is None
    props = needs.properties()
    assert props["gpuhost.toolkit.mode"] == "cdi"
    assert props["gpuhost.toolkit.not_needed"].endswith("nvidia-container-cli")
    assert ("nvidia-container-runtime-hook" in props["gpuhost.toolkit.needs"]) == (access == "gpus")


def test_cdi_mode_without_the_runtime_fails(tmp_path: Path) -> None:
    facts = toolkit_120_install(tmp_path, "config-cdi.toml", ("nvidia-ctk", "nvidia-container-runtime-hook"))
    finding = missing_toolkit(facts, mode_needs(facts, "runtime"))
    assert finding is not None
    assert finding.found.startswith("not on PATH: nvidia-container-runtime (found: nvidia-ctk 1.20.0")
    assert "the runtime is in cdi mode" in finding.found and "a partial install" in finding.cause


def test_gpus_in_cdi_mode_needs_the_hook(tmp_path: Path) -> None:
    """nvidia-container-toolkit-base alone (no hook): --gpus cannot work, CDI devices can."""
    facts = toolkit_120_install(tmp_path, "config-cdi.toml", ("nvidia-ctk", "nvidia-container-runtime"))
    assert missing_toolkit(facts, mode_needs(facts, "cdi")) is None
    finding = missing_toolkit(facts, mode_needs(facts, "gpus"))
    assert finding is not None and finding.found.startswith("not on PATH: nvidia-container-runtime-hook")
    assert "dockerd accepts --gpus only when the hook is on its PATH" in finding.found


def test_auto_mode_resolves_by_version_and_path(tmp_path: Path) -> None:
    """`auto`: 1.20's runtime picks jit-cdi (no cli); --gpus under runc runs the hook in legacy mode."""
    facts = toolkit_120_install(tmp_path / "a", "config-default.toml", BASE_120, DEFAULT_NVIDIA)
    needs = mode_needs(facts, "gpus")
    assert (needs.configured, needs.runtime, needs.hook) == ("auto", "jit-cdi", "legacy")
    assert missing_toolkit(facts, needs) is None  # nvidia is the default runtime: the hook never runs alone
    under_runc = toolkit_120_install(tmp_path / "b", "config-default.toml", BASE_120, NVIDIA_DAEMON_JSON)
    finding = missing_toolkit(under_runc, mode_needs(under_runc, "gpus"))
    assert finding is not None and finding.found.startswith("not on PATH: nvidia-container-cli")
    assert "--set-as-default" in finding.fix
    assert missing_toolkit(under_runc, mode_needs(under_runc, "runtime")) is None


def test_legacy_mode_needs_libnvidia_container(tmp_path: Path) -> None:
    legacy = (TK120 / "config-default.toml").read_text().replace('mode = "auto"', 'mode = "legacy"')
    facts = toolkit_120_install(tmp_path, "config-default.toml", BASE_120, DEFAULT_NVIDIA)
    facts = dataclasses.replace(
        facts,
        runtime_config=toolkit_module.ConfigFile("/etc/x.toml", True, parse_simple_toml(legacy)),
    )
    needs = mode_needs(facts, "cdi")
    assert needs.runtime == "legacy" and "nvidia-container-cli" in needs.needs
    finding = missing_toolkit(facts, needs)
    assert finding is not None and finding.found.startswith("not on PATH: nvidia-container-cli")
    assert "nvidia-container-runtime.mode=cdi" in finding.fix
    old = dataclasses.replace(
        facts,
        runtime_config=toolkit_module.ConfigFile("/etc/x.toml", True, parse_simple_toml("")),
        tools={n: dataclasses.replace(t, version="1.17.8") for n, t in facts.tools.items()},
    )
    assert mode_needs(old, "runtime").runtime == "legacy"  # auto before 1.20


def test_runtime_config_follows_the_daemons_environment(tmp_path: Path) -> None:
    """The runtime inherits NVIDIA_CTK_CONFIG_FILE_PATH from dockerd: read that config, not /etc's."""
    root = tmp_path
    (root / "proc" / "77").mkdir(parents=True)
    (root / "proc" / "77" / "environ").write_text("PATH=/bin\0NVIDIA_CTK_CONFIG_FILE_PATH=/srv/tk.toml\0")
    (root / "srv").mkdir()
    (root / "srv" / "tk.toml").write_text((TK120 / "config-cdi.toml").read_text())
    daemon = engine(process=DaemonProcess(77, ("dockerd",), "/usr/bin/dockerd"), cdi_spec_dirs=("/srv/cdi",))
    host = LocalHost(root=root, env={"PATH": "/usr/bin:/bin"})
    assert runtime_config_path(host, daemon) == "/srv/tk.toml"
    facts = gather_toolkit(host, timeout=10, engine=daemon)
    assert facts.runtime_config.path == "/srv/tk.toml" and facts.runtime_mode == "cdi"
    assert cdi_spec_dirs(daemon, facts.daemon_config) == ("/srv/cdi",)
    assert runtime_config_path(host, engine()) == "/etc/nvidia-container-runtime/config.toml"


def test_daemon_reload_opt_in_skips_without_systemd(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """--gpuhost-daemon-reload yes on a host without /run/systemd/system: a skip that says why."""
    client_or_skip()
    root = fake_tree(tmp_path / "root", daemon_json=NVIDIA_DAEMON_JSON)
    fake_host_conftest(pytester, root, fake_tools(tmp_path / "bin"))
    result = run_suite(pytester, SUITE, args=("-k", "daemon_reload", "--gpuhost-daemon-reload", "yes"))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*--gpuhost-daemon-reload yes: the host does not run systemd*"])
