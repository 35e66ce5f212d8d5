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

from pytest_gpuhost.facts.docker_engine import EngineFacts, environ_file
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.batch import Reads, batched
from pytest_gpuhost.hosts.host import Host
from pytest_gpuhost.versions import version_tuple

HOOK = "nvidia-container-runtime-hook"  # the legacy hook: dockerd finds it on its PATH for --gpus
TOOLS = ("nvidia-ctk", "nvidia-container-runtime", HOOK, "nvidia-container-cli")
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
        names = [n for n in host.listdir(directory) if n.endswith((".yaml", ".yml", ".json"))]
        with batched(host, Reads(files=tuple(f"{directory.rstrip('/')}/{n}" for n in names))):
            for name in names:
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
                with batched(host, Reads(paths=parsed.host_paths)):  # a spec names dozens of paths
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


def daemon_environ_files(engine: EngineFacts | None) -> tuple[str, ...]:
    """Where dockerd's environment is, if its process is known."""
    return () if engine is None or engine.process is None else (environ_file(engine.process.pid),)


def daemon_environment(host: Host, engine: EngineFacts | None) -> dict[str, str]:
    """dockerd's environment (root only): the runtime it starts inherits it, config path included."""
    files = daemon_environ_files(engine)
    if not files:
        return {}
    try:
        raw = host.read_text(files[0]) or ""
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


def toolkit_reads(
    timeout: float, engine: EngineFacts | None = None, env: Mapping[str, str] | None = None
) -> Reads:
    """What ``gather_toolkit`` asks a remote host first, in one round trip; without ``engine``,
    at the usual paths (the runtime's config and the spec directories, which the daemon may
    move), as a fleet host's facts ask them ahead."""
    return Reads(
        files=(daemon_config_path(engine, env), RUNTIME_CONFIG, *(daemon_environ_files(engine))),
        dirs=engine.cdi_spec_dirs if engine is not None and engine.cdi_spec_dirs else CDI_DIRS,
        commands=tuple(((name, "--version"), timeout) for name in TOOLS),
    )


def gather_toolkit(
    host: Host, timeout: float, engine: EngineFacts | None = None, env: Mapping[str, str] | None = None
) -> ToolkitFacts:
    config_path = daemon_config_path(engine, env)
    # The daemon's environment was asked ahead with its command line (docker_engine).
    with batched(host, toolkit_reads(timeout, engine, env), take_ahead=True):
        daemon_config = read_json_config(host, config_path)
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


@dataclass(frozen=True)
class HookSearch:
    """Whether the legacy hook is on the PATH dockerd started with (``path`` None: not readable)."""

    path: str | None
    found: bool


def find_hook_on_daemon_path(host: Host, engine: EngineFacts, hook: str = HOOK) -> HookSearch:
    """dockerd's PATH from its environment (root can read it) and whether ``hook`` is in one of its folders."""
    environ = daemon_environment(host, engine)
    if "PATH" not in environ:
        return HookSearch(None, False)
    dirs = [d for d in environ["PATH"].split(os.pathsep) if d]
    return HookSearch(environ["PATH"], any(host.exists(f"{d.rstrip('/')}/{hook}") for d in dirs))
