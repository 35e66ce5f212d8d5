"""Facts about the NVIDIA Container Toolkit (guide step 2.3) and the findings they lead to.

Everything is read through a ``Host`` (commands, files), so the same code serves the local
machine, remote hosts, and the unit tests' fake ``/etc`` trees. Findings are returned as
``Diagnosis`` objects; the suite turns them into failures or warnings.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.docker_engine import EngineFacts, version_tuple
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.host import Host

TOOLS = ("nvidia-ctk", "nvidia-container-runtime", "nvidia-container-runtime-hook", "nvidia-container-cli")
DAEMON_JSON = "/etc/docker/daemon.json"
RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")  # in rising priority, as the CDI spec orders them
CDI_KIND = "nvidia.com/gpu"
INSTALL_GUIDE = "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"
CONFIGURE = "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker"
INSTALL_FIX = f"install nvidia-container-toolkit: follow {INSTALL_GUIDE}, then `{CONFIGURE}`"
CDI_GENERATE = "sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
_TOOL_VERSION = re.compile(r"version[:\s]+v?(\d+\.\d+(?:\.\d+)?(?:[-~+][\w.]+)?)", re.IGNORECASE)
_DRIVER_LIB = re.compile(r"^lib(?:cuda|nvidia-ml)\.so\.(\d+\.\d+(?:\.\d+)?)$")
# The runtime reads its config.toml from this variable (or $XDG_CONFIG_HOME) of its environment,
# which it inherits from dockerd: recipe A and the CI toolkit daemon set it.
CONFIG_ENV = "NVIDIA_CTK_CONFIG_FILE_PATH"
CDI_MODES = (
    "cdi",
    "jit-cdi",
    "csv",
)  # modes in which the runtime injects devices itself, without libnvidia-container
AUTO_IS_JIT_CDI_SINCE = (1, 20)  # the runtime resolves `auto` to jit-cdi from here on; before, to legacy


# -- tools ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolInfo:
    name: str
    found: bool
    version: str | None = None
    error: str | None = None


def parse_tool_version(output: str) -> str | None:
    """The first ``version X.Y.Z`` in a toolkit tool's ``--version`` output."""
    match = _TOOL_VERSION.search(output)
    return match.group(1) if match else None


def probe_tool(
    host: Host,
    name: str,
    timeout: float,
    argv: Sequence[str] | None = None,
    parse: Callable[[str], str | None] | None = None,
) -> ToolInfo:
    """Whether ``name`` is installed and which version it reports (``argv``: default ``--version``)."""
    result = host.run(list(argv) if argv is not None else [name, "--version"], timeout=timeout)
    if result.missing:
        return ToolInfo(name, found=False, error=result.describe())
    version = (parse or parse_tool_version)(result.stdout + "\n" + result.stderr)
    if not result.ok:
        return ToolInfo(name, found=True, version=version, error=result.describe())
    return ToolInfo(name, found=True, version=version)


# -- configuration files ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file: its parsed content, or why it has none."""

    path: str
    exists: bool
    data: Mapping[str, Any] | None = None
    error: str | None = None


def read_json_config(host: Host, path: str) -> ConfigFile:
    try:
        text = host.read_text(path)
    except (PermissionError, IsADirectoryError) as exc:
        return ConfigFile(path, exists=True, error=f"{path} is not readable: {exc}")
    if text is None:
        return ConfigFile(path, exists=False)
    if not text.strip():
        return ConfigFile(path, exists=True, data={})
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return ConfigFile(path, exists=True, error=f"{path} is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return ConfigFile(path, exists=True, error=f"{path} does not hold a JSON object")
    return ConfigFile(path, exists=True, data=data)


def _toml_value(raw: str) -> Any:
    raw = raw.strip()
    if raw[:1] in ('"', "'"):
        quote = raw[0]
        end = raw.find(quote, 1)
        return raw[1:end] if end > 0 else raw[1:]
    raw = raw.split("#", 1)[0].strip()
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return int(raw)
    except ValueError:
        return raw


def parse_simple_toml(text: str) -> dict[str, dict[str, Any]]:
    """The ``[section]`` / ``key = value`` subset that the toolkit's config.toml uses.

    Enough to read ``nvidia-container-runtime.mode`` and ``nvidia-container-cli.no-cgroups`` on
    Python 3.10, which has no ``tomllib``. Arrays and inline tables are kept as raw text.
    """
    sections: dict[str, dict[str, Any]] = {"": {}}
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped.strip("[]").strip().strip('"')
            sections.setdefault(current, {})
            continue
        key, sep, value = stripped.partition("=")
        if sep:
            sections.setdefault(current, {})[key.strip().strip('"')] = _toml_value(value)
    return sections


def read_runtime_config(host: Host, path: str = RUNTIME_CONFIG) -> ConfigFile:
    try:
        text = host.read_text(path)
    except (PermissionError, IsADirectoryError) as exc:
        return ConfigFile(path, exists=True, error=f"{path} is not readable: {exc}")
    if text is None:
        return ConfigFile(path, exists=False)
    return ConfigFile(path, exists=True, data=parse_simple_toml(text))


def daemon_config_path(engine: EngineFacts | None, env: Mapping[str, str] | None = None) -> str:
    """The daemon.json the running daemon reads: its ``--config-file``, the rootless one, or /etc's."""
    env = env if env is not None else os.environ
    if engine is not None and engine.config_file:
        return engine.config_file
    if engine is not None and engine.rootless:
        config_home = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "~"), ".config")
        return os.path.join(config_home, "docker", "daemon.json")
    return DAEMON_JSON


# -- CDI specifications -----------------------------------------------------------------------


@dataclass(frozen=True)
class CdiSpec:
    """One CDI spec file, reduced to what the checks need."""

    path: str
    cdi_version: str
    kind: str
    device_names: tuple[str, ...]
    host_paths: tuple[str, ...]
    driver_versions: frozenset[str]
    missing_paths: tuple[str, ...] = ()

    def names_gpu(self, gpu: GpuInfo) -> bool:
        """nvidia-ctk names GPUs by index (``0``), UUID, or, in old releases, ``gpu0``."""
        names = {n.lower() for n in self.device_names}
        return bool({str(gpu.index), f"gpu{gpu.index}", gpu.uuid.lower()} & names - {""})


@dataclass(frozen=True)
class CdiFacts:
    specs: tuple[CdiSpec, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()  # (path, why it cannot be used)
    yaml_missing: bool = False

    @property
    def nvidia(self) -> tuple[CdiSpec, ...]:
        return tuple(s for s in self.specs if s.kind == CDI_KIND)


def load_yaml_module() -> Any:
    """PyYAML, imported only when a YAML spec must be read (nvidia-ctk writes YAML by default)."""
    return importlib.import_module("yaml")


def _edits(node: Any) -> Iterable[Mapping[str, Any]]:
    edits = node.get("containerEdits") if isinstance(node, Mapping) else None
    if isinstance(edits, Mapping):
        yield edits


def _spec_host_paths(spec: Mapping[str, Any]) -> list[str]:
    paths: list[str] = []
    sources = [*_edits(spec)]
    for device in spec.get("devices") or []:
        sources.extend(_edits(device))
    for edits in sources:
        for mount in edits.get("mounts") or []:
            if isinstance(mount, Mapping) and mount.get("hostPath"):
                paths.append(str(mount["hostPath"]))
        for node in edits.get("deviceNodes") or []:
            if isinstance(node, Mapping) and (node.get("hostPath") or node.get("path")):
                paths.append(str(node.get("hostPath") or node.get("path")))
    return list(dict.fromkeys(paths))


def parse_cdi_spec(path: str, data: Any) -> CdiSpec | str:
    """The spec, or why it is not a usable CDI spec."""
    if not isinstance(data, Mapping):
        return "not a CDI spec (no mapping at the top level)"
    missing = [key for key in ("cdiVersion", "kind", "devices") if not data.get(key)]
    if missing:
        return "missing required field(s): " + ", ".join(missing)
    kind = str(data["kind"])
    if "/" not in kind:
        return f"kind {kind!r} is not of the form vendor.com/class"
    devices = data["devices"]
    if not isinstance(devices, list) or not all(
        isinstance(d, Mapping) and d.get("name") not in (None, "") for d in devices
    ):
        return "every entry of devices needs a name"
    host_paths = _spec_host_paths(data)
    versions = frozenset(
        m.group(1) for m in (_DRIVER_LIB.match(os.path.basename(p)) for p in host_paths) if m is not None
    )
    return CdiSpec(
        path=path,
        cdi_version=str(data["cdiVersion"]),
        kind=kind,
        device_names=tuple(str(d["name"]) for d in devices),
        host_paths=tuple(host_paths),
        driver_versions=versions,
    )


def read_cdi_specs(host: Host, dirs: Iterable[str] = CDI_DIRS) -> CdiFacts:
    specs: list[CdiSpec] = []
    errors: list[tuple[str, str]] = []
    yaml_missing = False
    for directory in dirs:
        for name in host.listdir(directory):
            if not name.endswith((".yaml", ".yml", ".json")):
                continue
            path = f"{directory.rstrip('/')}/{name}"
            try:
                text = host.read_text(path)
            except (PermissionError, IsADirectoryError) as exc:
                errors.append((path, f"not readable: {exc}"))
                continue
            if text is None:
                continue
            try:
                if name.endswith(".json"):
                    data = json.loads(text)
                else:
                    try:
                        yaml = load_yaml_module()
                    except ImportError:
                        yaml_missing = True
                        errors.append((path, "PyYAML is not installed, so YAML specs cannot be read"))
                        continue
                    data = yaml.safe_load(text)
            except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError: a broken file
                errors.append((path, f"does not parse: {' '.join(str(exc).split())}"))
                continue
            parsed = parse_cdi_spec(path, data)
            if isinstance(parsed, str):
                errors.append((path, parsed))
                continue
            missing = tuple(p for p in parsed.host_paths if not host.exists(p))
            specs.append(
                CdiSpec(
                    parsed.path,
                    parsed.cdi_version,
                    parsed.kind,
                    parsed.device_names,
                    parsed.host_paths,
                    parsed.driver_versions,
                    missing,
                )
            )
    return CdiFacts(tuple(specs), tuple(errors), yaml_missing)


# -- all toolkit facts ------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolkitFacts:
    tools: Mapping[str, ToolInfo]
    daemon_config: ConfigFile
    runtime_config: ConfigFile
    cdi: CdiFacts = field(default_factory=CdiFacts)

    @property
    def missing_tools(self) -> list[str]:
        return [name for name, tool in self.tools.items() if not tool.found]

    @property
    def installed(self) -> bool:
        """Any part of the toolkit is on this host."""
        return any(tool.found for tool in self.tools.values())

    @property
    def configured_runtimes(self) -> dict[str, Any]:
        runtimes = (self.daemon_config.data or {}).get("runtimes") or {}
        return dict(runtimes) if isinstance(runtimes, Mapping) else {}

    @property
    def configured_default_runtime(self) -> str | None:
        value = (self.daemon_config.data or {}).get("default-runtime")
        return str(value) if value else None

    @property
    def runtime_mode(self) -> str | None:
        """``nvidia-container-runtime.mode`` in config.toml; None when the file does not set it (auto)."""
        section = (self.runtime_config.data or {}).get("nvidia-container-runtime") or {}
        mode = section.get("mode") if isinstance(section, Mapping) else None
        return str(mode) if mode else None

    @property
    def no_cgroups(self) -> bool | None:
        section = (self.runtime_config.data or {}).get("nvidia-container-cli") or {}
        value = section.get("no-cgroups") if isinstance(section, Mapping) else None
        return value if isinstance(value, bool) else None

    def properties(self) -> dict[str, str]:
        values = {
            f"gpuhost.toolkit.{name}": tool.version or "unknown"
            for name, tool in self.tools.items()
            if tool.found
        }
        values["gpuhost.toolkit.mode"] = self.runtime_mode or (
            "auto" if self.runtime_config.exists else "none"
        )
        return values


def daemon_environment(host: Host, engine: EngineFacts | None) -> dict[str, str]:
    """dockerd's environment (root only): the runtime it starts inherits it, config path included."""
    if engine is None or engine.process is None:
        return {}
    try:
        raw = host.read_text(f"/proc/{engine.process.pid}/environ") or ""
    except (PermissionError, IsADirectoryError):
        return {}
    pairs = (item.partition("=") for item in raw.split("\0") if "=" in item)
    return {key: value for key, _, value in pairs}


def runtime_config_path(host: Host, engine: EngineFacts | None) -> str:
    """The config.toml the daemon's nvidia runtime reads, as the runtime itself looks it up."""
    environ = daemon_environment(host, engine)
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV]
    if environ.get("XDG_CONFIG_HOME"):
        return os.path.join(environ["XDG_CONFIG_HOME"], "nvidia-container-runtime", "config.toml")
    return RUNTIME_CONFIG


def cdi_spec_dirs(engine: EngineFacts | None, daemon_config: ConfigFile) -> tuple[str, ...]:
    """Where the daemon looks for CDI specs: what `docker info` says, then daemon.json, then the defaults."""
    if engine is not None and engine.cdi_spec_dirs:
        return engine.cdi_spec_dirs
    configured = (daemon_config.data or {}).get("cdi-spec-dirs")
    if isinstance(configured, list) and configured and all(isinstance(d, str) for d in configured):
        return tuple(configured)
    return CDI_DIRS


def gather_toolkit(
    host: Host, timeout: float, engine: EngineFacts | None = None, env: Mapping[str, str] | None = None
) -> ToolkitFacts:
    daemon_config = read_json_config(host, daemon_config_path(engine, env))
    return ToolkitFacts(
        tools={name: probe_tool(host, name, timeout) for name in TOOLS},
        daemon_config=daemon_config,
        runtime_config=read_runtime_config(host, runtime_config_path(host, engine)),
        cdi=read_cdi_specs(host, cdi_spec_dirs(engine, daemon_config)),
    )


# -- what the runtime's mode needs ------------------------------------------------------------


@dataclass(frozen=True)
class ModeNeeds:
    """What the toolkit's configured mode makes Docker run, and which commands that takes."""

    configured: str  # config.toml's mode; "auto" when the file does not set one
    runtime: str  # what the nvidia runtime does in that mode (auto resolved)
    hook: str  # what the hook does when runc calls it directly (--gpus without the nvidia runtime)
    access: str  # the suite's --gpuhost-gpu-access
    needs: Mapping[str, str]  # command -> why this host needs it, in TOOLS order

    @property
    def not_needed(self) -> tuple[str, ...]:
        return tuple(t for t in TOOLS if t not in self.needs)

    def properties(self) -> dict[str, str]:
        return {
            "gpuhost.toolkit.mode": self.configured,
            "gpuhost.toolkit.mode_runtime": self.runtime,
            "gpuhost.toolkit.mode_hook": self.hook,
            "gpuhost.toolkit.needs": ",".join(self.needs) or "none",
            "gpuhost.toolkit.not_needed": ",".join(self.not_needed) or "none",
        }


def resolve_mode(mode: str, version: str | None, for_hook: bool = False) -> str:
    """What ``auto`` means: toolkit 1.20's runtime picks jit-cdi (legacy before); the hook stays legacy."""
    if mode != "auto":
        return mode
    if for_hook:
        return "legacy"
    parsed = version_tuple(version)
    return "jit-cdi" if parsed is not None and parsed >= AUTO_IS_JIT_CDI_SINCE else "legacy"


def mode_needs(toolkit: ToolkitFacts, access: str) -> ModeNeeds:
    """The commands this host needs, from the runtime's mode, the access mode and the default runtime."""
    tools = toolkit.tools
    version = next(
        (
            tools[n].version
            for n in ("nvidia-container-runtime", "nvidia-ctk")
            if n in tools and tools[n].version
        ),
        None,
    )
    configured = toolkit.runtime_mode or "auto"
    runtime = resolve_mode(configured, version)
    hook = resolve_mode(configured, version, for_hook=True)
    why: dict[str, str] = {
        "nvidia-ctk": "configures Docker and generates CDI specs",
        "nvidia-container-runtime": f"the `nvidia` runtime ({runtime} mode)",
    }
    if runtime == "legacy":
        why["nvidia-container-runtime-hook"] = "legacy mode runs the hook in every GPU container"
        why["nvidia-container-cli"] = "legacy mode's hook injects GPUs through libnvidia-container"
    if access == "gpus":
        why["nvidia-container-runtime-hook"] = "dockerd accepts --gpus only when the hook is on its PATH"
        direct = toolkit.configured_default_runtime != "nvidia"
        if direct and hook == "legacy":
            why["nvidia-container-cli"] = (
                "--gpus under runc calls the hook directly, which injects GPUs through libnvidia-container"
            )
    return ModeNeeds(configured, runtime, hook, access, {t: why[t] for t in TOOLS if t in why})


# -- findings ---------------------------------------------------------------------------------


def missing_toolkit(toolkit: ToolkitFacts, needs: ModeNeeds | None = None) -> Diagnosis | None:
    """The commands the mode needs that are not installed (every command when ``needs`` is None)."""
    required = list(needs.needs) if needs is not None else list(TOOLS)
    missing = [name for name in required if name in toolkit.missing_tools]
    if not missing:
        return None
    found = ", ".join(f"{t.name} {t.version or '?'}" for t in toolkit.tools.values() if t.found)
    if needs is None or not found:
        return Diagnosis(
            f"not on PATH: {', '.join(missing)}" + (f" (found: {found})" if found else ""),
            "the NVIDIA Container Toolkit is not installed (or only in part): Docker cannot give containers GPUs",
            INSTALL_FIX,
        )
    reasons = "; ".join(f"{name}: {needs.needs[name]}" for name in missing)
    return Diagnosis(
        f"not on PATH: {', '.join(missing)} (found: {found}); the runtime is in {needs.configured} mode"
        + (f" (resolved: {needs.runtime})" if needs.runtime != needs.configured else "")
        + f" and the suite uses --gpuhost-gpu-access {needs.access}, which need it: {reasons}",
        "a partial install of the NVIDIA Container Toolkit: this mode cannot give containers GPUs",
        _missing_fix(missing, needs),
    )


def _missing_fix(missing: Sequence[str], needs: ModeNeeds) -> str:
    if "nvidia-container-cli" in missing and needs.runtime in CDI_MODES:
        return (
            "`--gpus` under runc needs libnvidia-container: make `nvidia` the default runtime (`sudo nvidia-ctk "
            "runtime configure --runtime=docker --set-as-default && sudo systemctl restart docker`), or install "
            f"the full nvidia-container-toolkit ({INSTALL_GUIDE})"
        )
    if (
        set(missing) <= {"nvidia-container-cli", "nvidia-container-runtime-hook"}
        and needs.runtime == "legacy"
    ):
        return (
            "install nvidia-container-toolkit and libnvidia-container-tools (legacy mode needs them), or switch "
            "to CDI: `sudo nvidia-ctk config --in-place --set nvidia-container-runtime.mode=cdi` and `"
            + CDI_GENERATE
            + "`"
        )
    return INSTALL_FIX


def broken_tools(toolkit: ToolkitFacts, needs: ModeNeeds | None = None) -> Diagnosis | None:
    required = set(needs.needs) if needs is not None else set(TOOLS)
    broken = [t for t in toolkit.tools.values() if t.found and t.error and t.name in required]
    if not broken:
        return None
    return Diagnosis(
        "toolkit commands fail: " + "; ".join(t.error or "" for t in broken),
        "a broken or partial installation (missing libnvidia-container, a hung driver)",
        f"reinstall the toolkit's packages ({INSTALL_GUIDE})",
    )


def version_skew(toolkit: ToolkitFacts) -> Diagnosis | None:
    versions = {t.name: t.version for t in toolkit.tools.values() if t.found and t.version}
    if len(set(versions.values())) <= 1:
        return None
    return Diagnosis(
        "toolkit components differ in version: " + ", ".join(f"{n} {v}" for n, v in versions.items()),
        "a partial upgrade: nvidia-container-toolkit, -base, libnvidia-container-tools and "
        "libnvidia-container1 are released together",
        "upgrade all four packages to one version (e.g. `sudo apt-get install --only-upgrade "
        "nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools libnvidia-container1`)",
    )


def daemon_config_problem(toolkit: ToolkitFacts) -> Diagnosis | None:
    config = toolkit.daemon_config
    if config.error is None:
        return None
    if "not readable" in config.error:
        return None  # an ordinary user may not read it; the runtime check uses `docker info` instead
    return Diagnosis(
        config.error,
        "a hand edit broke the file: the daemon refuses to start with it at its next restart",
        f"fix the JSON (`python3 -m json.tool {config.path}` shows where), or let "
        "`sudo nvidia-ctk runtime configure --runtime=docker` rewrite it",
    )


def runtime_problem(engine: EngineFacts, toolkit: ToolkitFacts) -> Diagnosis | None:
    """The ``nvidia`` runtime is registered in daemon.json and known to the running daemon."""
    in_daemon = "nvidia" in engine.runtimes
    in_config = "nvidia" in toolkit.configured_runtimes
    where = toolkit.daemon_config.path
    restart = "systemctl --user restart docker" if engine.rootless else "sudo systemctl restart docker"
    configure = (
        f"nvidia-ctk runtime configure --runtime=docker --config={where} && {restart}"
        if engine.rootless
        else CONFIGURE
    )
    if in_config and not in_daemon:
        return Diagnosis(
            f"{where} names the `nvidia` runtime, but the running daemon does not know it "
            f"(`docker info` Runtimes: {', '.join(sorted(engine.runtimes)) or 'none'})",
            "the daemon was started before the toolkit was installed or configured, and not restarted since",
            f"`{restart}`",
        )
    if not in_daemon:
        not_in = "does not exist" if not toolkit.daemon_config.exists else "names no `nvidia` runtime"
        if toolkit.daemon_config.error:
            not_in = "cannot be read"
        return Diagnosis(
            f"the daemon has no `nvidia` runtime (`docker info` Runtimes: "
            f"{', '.join(sorted(engine.runtimes)) or 'none'}), and {where} {not_in}",
            "the toolkit is not installed or was never registered with Docker",
            INSTALL_FIX if toolkit.missing_tools else f"`{configure}`",
        )
    path = engine.runtimes["nvidia"]
    tool = toolkit.tools.get("nvidia-container-runtime")
    if os.path.basename(path) == "nvidia-container-runtime" and tool is not None and not tool.found:
        return Diagnosis(
            f"the daemon's `nvidia` runtime runs {path}, which is not installed",
            "the toolkit was removed but daemon.json still registers its runtime",
            INSTALL_FIX,
        )
    return None


def default_runtime_warning(engine: EngineFacts, toolkit: ToolkitFacts | None = None) -> Diagnosis | None:
    """`nvidia` as the default runtime: --gpus works without --runtime nvidia, and every image's
    NVIDIA_VISIBLE_DEVICES is honoured too. In cdi/jit-cdi mode --gpus needs it, so the fix differs."""
    if engine.default_runtime != "nvidia":
        return None
    envvar_off = (
        "`sudo nvidia-ctk config --in-place --set accept-nvidia-visible-devices-envvar-when-unprivileged=false` "
        "(then only explicit requests get GPUs)"
    )
    hook_mode = mode_needs(toolkit, "gpus").hook if toolkit is not None else "legacy"
    if hook_mode in CDI_MODES:
        fix = (
            f"keep the default (in {hook_mode} mode `--gpus` works only through the nvidia runtime) and stop images "
            f"from taking GPUs by their environment: {envvar_off}"
        )
    else:
        fix = (
            'remove `"default-runtime": "nvidia"` from daemon.json, restart docker, and request GPUs per '
            "container (`--gpus`, CDI devices, or compose reservations); or keep it and " + envvar_off
        )
    return Diagnosis(
        "the daemon's default runtime is `nvidia`: `--gpus` then also works without `--runtime nvidia`",
        "every container whose image sets NVIDIA_VISIBLE_DEVICES (all CUDA images set it to `all`) gets "
        "every GPU without asking for one: no isolation between jobs",
        fix,
    )


def daemon_reload_risk(engine: EngineFacts, toolkit: ToolkitFacts) -> Diagnosis | None:
    """NVIDIA's known issue: systemd cgroups + the legacy hook lose GPUs on ``systemctl daemon-reload``."""
    if (engine.cgroup_driver or "").lower() != "systemd":
        return None
    hook = toolkit.tools.get("nvidia-container-runtime-hook")
    uses_hook = (hook is not None and hook.found) or "nvidia" in engine.runtimes
    if not uses_hook:
        return None
    mode = toolkit.runtime_mode or "auto"
    return Diagnosis(
        f"the daemon uses the systemd cgroup driver (cgroup v{engine.cgroup_version or '?'}) and GPUs reach "
        f"containers through the toolkit's hook (`--gpus`, or the nvidia runtime in {mode} mode)",
        "NVIDIA's known issue: after `systemctl daemon-reload` running containers lose their GPUs "
        '("Failed to initialize NVML: Unknown Error") because runc was never told about the devices',
        "NVIDIA's documented workarounds: inject GPUs with CDI (`" + CDI_GENERATE + "`, then "
        "`docker run --device nvidia.com/gpu=all` or `sudo nvidia-ctk config --in-place --set "
        'nvidia-container-runtime.mode=cdi`); or use the cgroupfs driver: `"exec-opts": '
        '["native.cgroupdriver=cgroupfs"]` in /etc/docker/daemon.json and `sudo systemctl restart docker`; '
        "or pass the /dev/nvidia* nodes explicitly with --device",
    )


def rootless_cgroups_problem(engine: EngineFacts, toolkit: ToolkitFacts) -> Diagnosis | None:
    if not engine.rootless or not toolkit.installed or toolkit.no_cgroups:
        return None
    return Diagnosis(
        f"rootless Docker, but {toolkit.runtime_config.path} does not set "
        "`no-cgroups = true` under [nvidia-container-cli]",
        "a rootless daemon may not write device cgroups: the toolkit's hook fails to start GPU containers",
        "`sudo nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place`",
    )


def _spec_list(specs: Iterable[CdiSpec]) -> str:
    return ", ".join(s.path for s in specs) or "none"


def cdi_parse_problem(cdi: CdiFacts) -> Diagnosis | None:
    if not cdi.errors:
        return None
    if cdi.yaml_missing:
        return Diagnosis(
            "CDI specs cannot be checked: " + "; ".join(f"{p}: {why}" for p, why in cdi.errors),
            "PyYAML is missing from the Python that runs pytest-gpuhost",
            "`pip install pyyaml` (or reinstall pytest-gpuhost, which depends on it)",
        )
    return Diagnosis(
        "unusable CDI spec(s): " + "; ".join(f"{p}: {why}" for p, why in cdi.errors),
        "a hand-edited or truncated spec: CDI-enabled engines refuse every device while one spec is broken",
        f"regenerate it: `{CDI_GENERATE}`, and delete specs you did not generate",
    )


def cdi_gpu_problem(cdi: CdiFacts, gpu: GpuInfo) -> Diagnosis | None:
    specs = cdi.nvidia
    if not specs or any(spec.names_gpu(gpu) for spec in specs):
        return None
    names = sorted({n for s in specs for n in s.device_names})
    return Diagnosis(
        f"no CDI device for GPU {gpu.index} ({gpu.uuid}) in {_spec_list(specs)}; it names: {', '.join(names)}",
        "the spec was generated before this GPU was added or swapped, or for MIG devices only",
        f"`{CDI_GENERATE}`; `nvidia-ctk cdi list` shows the names",
    )


def cdi_driver_problem(cdi: CdiFacts, driver_version: str | None) -> Diagnosis | None:
    if not driver_version:
        return None
    stale = [s for s in cdi.nvidia if s.driver_versions and driver_version not in s.driver_versions]
    if not stale:
        return None
    return Diagnosis(
        "CDI spec(s) mount another driver's libraries: "
        + "; ".join(f"{s.path} has {', '.join(sorted(s.driver_versions))}" for s in stale)
        + f"; the running driver is {driver_version}",
        "the driver was upgraded after the spec was generated (a stale spec)",
        f"`{CDI_GENERATE}` after every driver upgrade; toolkit 1.18+ does it with "
        "`sudo systemctl enable --now nvidia-cdi-refresh.path`",
    )


def cdi_host_path_problem(cdi: CdiFacts) -> Diagnosis | None:
    broken = [s for s in cdi.nvidia if s.missing_paths]
    if not broken:
        return None
    parts = []
    for spec in broken:
        shown = ", ".join(spec.missing_paths[:5])
        more = f" and {len(spec.missing_paths) - 5} more" if len(spec.missing_paths) > 5 else ""
        parts.append(f"{spec.path}: {shown}{more}")
    return Diagnosis(
        "CDI spec(s) mount host paths that do not exist: " + "; ".join(parts),
        "a stale spec from before a driver upgrade or removal: containers asking for these devices fail to start",
        f"`{CDI_GENERATE}`",
    )


def cdi_shadowing_warning(cdi: CdiFacts) -> Diagnosis | None:
    specs = cdi.nvidia
    if len(specs) <= 1:
        return None
    return Diagnosis(
        f"{len(specs)} CDI specs define {CDI_KIND}: {_spec_list(specs)}",
        "an old spec next to a newly generated one (e.g. /etc/cdi by hand, /var/run/cdi by nvidia-cdi-refresh): "
        "devices defined twice in one directory conflict, and across directories the later one wins silently",
        "keep one spec: delete the stale file, then `nvidia-ctk cdi list`",
    )
