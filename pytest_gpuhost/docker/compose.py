"""Guide step 3.2: GPU reservations in compose files, validated statically and brought up for real.

A GPU reservation is a ``deploy.resources.reservations.devices`` entry. Docker's compose docs
require ``capabilities`` (``[gpu]``), allow ``count`` (a number or ``all``) or ``device_ids``
(strings) but not both, and take ``driver: nvidia`` (or ``cdi`` with CDI device names). Every
problem names the file, the service and the key.

Projects the suite brings up are named ``gpuhost-compose-<random>``: leftovers of a killed run
are found by that prefix on the ``com.docker.compose.project`` label and swept.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.facts.toolkit import INSTALL_FIX, load_yaml_module
from pytest_gpuhost.hosts.host import CommandResult, Host

if TYPE_CHECKING:
    import docker

PROJECT_PREFIX = "gpuhost-compose-"
PROJECT_LABEL = "com.docker.compose.project"
GPU_DRIVERS = ("nvidia", "cdi")
# The capabilities Docker's built-in nvidia device driver answers to (`gpu` is the usual one).
NVIDIA_CAPABILITIES = frozenset(
    {"gpu", "nvidia", "compute", "compat32", "graphics", "utility", "video", "display"}
)
DEVICES_KEY = "deploy.resources.reservations.devices"
_CDI_NAME = re.compile(r"^[\w.-]+/[\w.-]+=[\w.:-]+$")
_SMI_LINE = re.compile(r"GPU (\d+): (.+?) \(UUID: (GPU-[0-9a-fA-F-]+)\)")


@dataclass(frozen=True)
class ComposeProblem:
    file: str
    service: str | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"service {self.service!r}, " if self.service else ""
        return f"{self.file}: {where}{self.key}: {self.message}"


@dataclass(frozen=True)
class GpuReservation:
    """One GPU device entry of one service."""

    file: str
    service: str
    index: int
    driver: str | None
    count: int | str | None  # an int, "all", or None (then: all GPUs)
    device_ids: tuple[str, ...] | None
    capabilities: tuple[str, ...]

    def expected_gpus(self, gpus: Sequence[GpuInfo]) -> tuple[GpuInfo, ...] | int:
        """The host's GPUs this reservation should give, or how many when ``count`` leaves it open."""
        if self.device_ids is not None:
            wanted = {d.lower() for d in self.device_ids}
            return tuple(g for g in gpus if str(g.index) in wanted or g.uuid.lower() in wanted)
        if self.count is None or self.count == "all":
            return tuple(gpus)
        return int(self.count)


def _interpolated(value: Any) -> bool:
    """``${GPU_COUNT:-1}``: compose substitutes it at run time, so its type cannot be checked here."""
    return isinstance(value, str) and "$" in value


def _check_device(
    file: str, service: str, index: int, entry: Any
) -> tuple[GpuReservation | None, list[ComposeProblem]]:
    key = f"services.{service}.{DEVICES_KEY}[{index}]"
    problems: list[ComposeProblem] = []

    def problem(field: str, message: str) -> None:
        problems.append(ComposeProblem(file, service, f"{key}.{field}" if field else key, message))

    if not isinstance(entry, Mapping):
        problem("", "each device reservation must be a mapping (driver, count or device_ids, capabilities)")
        return None, problems
    driver = entry.get("driver")
    capabilities = entry.get("capabilities")
    caps: tuple[str, ...] = ()
    if capabilities is None:
        problem("capabilities", "is required (e.g. `capabilities: [gpu]`); without it the deployment fails")
    elif not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        problem("capabilities", f"must be a list of strings such as [gpu], not {capabilities!r}")
    elif not capabilities:
        problem("capabilities", "is empty: give `[gpu]`")
    else:
        caps = tuple(capabilities)
    if driver is not None and not isinstance(driver, str):
        problem("driver", f"must be a string such as nvidia, not {driver!r}")
        driver = None
    is_gpu = driver in GPU_DRIVERS or bool(set(caps) & NVIDIA_CAPABILITIES) or (driver is None and not caps)
    if not is_gpu:
        return None, problems  # another kind of device (not ours to judge)
    if driver is not None and driver not in GPU_DRIVERS and not _interpolated(driver):
        problem("driver", f"{driver!r} cannot provide NVIDIA GPUs: use `driver: nvidia` (or omit it)")
    count = entry.get("count")
    device_ids = entry.get("device_ids")
    if count is not None and device_ids is not None:
        problem("", "count and device_ids are mutually exclusive: keep one")
    parsed_count: int | str | None = None
    if count is not None and not _interpolated(count):
        numeric = isinstance(count, int) and not isinstance(count, bool)
        if not (numeric or count == "all" or (isinstance(count, str) and count.isdigit())):
            problem("count", f"must be a number or `all`, not {count!r}")
        elif count != "all" and int(count) < 1:
            problem("count", f"{count} reserves no GPU: use 1 or more, or `all`")
        else:
            parsed_count = count if count == "all" else int(count)
    ids: tuple[str, ...] | None = None
    if device_ids is not None and not _interpolated(device_ids):
        if not isinstance(device_ids, list) or not device_ids:
            problem("device_ids", f"must be a non-empty list of strings, not {device_ids!r}")
        elif not all(isinstance(d, str) for d in device_ids):
            quoted = ", ".join(f"'{d}'" for d in device_ids)
            problem("device_ids", f"entries must be strings: write [{quoted}], not {device_ids!r}")
        else:
            ids = tuple(device_ids)
    if driver == "cdi":
        if count is not None:
            problem("count", "the cdi driver takes device_ids (CDI names), not count")
        if ids is not None and not all(_CDI_NAME.match(d) for d in ids):
            problem(
                "device_ids", f"the cdi driver needs CDI names such as nvidia.com/gpu=all, not {list(ids)}"
            )
        elif device_ids is None:
            problem("device_ids", "the cdi driver needs device_ids such as [nvidia.com/gpu=all]")
    if problems:
        return None, problems
    return GpuReservation(file, service, index, driver, parsed_count, ids, caps), problems


def validate_compose(doc: Any, file: str) -> tuple[list[GpuReservation], list[ComposeProblem]]:
    """GPU reservations of every service of a parsed compose file, and every problem with them."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("services"), Mapping):
        return [], [ComposeProblem(file, None, "services", "a compose file needs a `services` mapping")]
    reservations: list[GpuReservation] = []
    problems: list[ComposeProblem] = []
    for service, spec in doc["services"].items():
        resources = (
            ((spec or {}).get("deploy") or {}).get("resources") or {} if isinstance(spec, Mapping) else {}
        )
        if not isinstance(resources, Mapping):
            continue
        limits = resources.get("limits")
        if isinstance(limits, Mapping) and "devices" in limits:
            problems.append(
                ComposeProblem(
                    file,
                    str(service),
                    f"services.{service}.deploy.resources.limits.devices",
                    "devices can only be reserved: move them to deploy.resources.reservations.devices",
                )
            )
        reservations_node = resources.get("reservations")
        devices = reservations_node.get("devices") if isinstance(reservations_node, Mapping) else None
        if devices is None:
            continue
        if not isinstance(devices, list):
            problems.append(
                ComposeProblem(file, str(service), f"services.{service}.{DEVICES_KEY}", "must be a list")
            )
            continue
        for index, entry in enumerate(devices):
            reservation, found = _check_device(file, str(service), index, entry)
            problems.extend(found)
            if reservation is not None:
                reservations.append(reservation)
    return reservations, problems


def load_compose_file(path: str | Path) -> tuple[Any, ComposeProblem | None]:
    """The parsed file, or the problem that keeps it from being read."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        return None, ComposeProblem(file, None, "(file)", f"cannot be read: {exc.strerror or exc}")
    try:
        yaml = load_yaml_module()
    except ImportError:
        return None, ComposeProblem(file, None, "(file)", "PyYAML is not installed: `pip install pyyaml`")
    try:
        return yaml.safe_load(text), None
    except yaml.YAMLError as exc:
        return None, ComposeProblem(file, None, "(file)", f"is not valid YAML: {' '.join(str(exc).split())}")


def validate_compose_file(path: str | Path) -> tuple[list[GpuReservation], list[ComposeProblem]]:
    doc, problem = load_compose_file(path)
    if problem is not None:
        return [], [problem]
    return validate_compose(doc, str(path))


def example_compose(image: str) -> str:
    """``examples/docker-compose.yml`` for a given CUDA image: one service that lists its GPUs."""
    return (
        "services:\n"
        "  gpu-smoke:\n"
        f"    image: {image}\n"
        '    command: ["nvidia-smi", "-L"]\n'
        "    network_mode: none\n"
        "    deploy:\n"
        "      resources:\n"
        "        reservations:\n"
        "          devices:\n"
        "            - driver: nvidia\n"
        "              count: all\n"
        "              capabilities: [gpu]\n"
    )


# -- bringing a project up for real ------------------------------------------------------------


@dataclass(frozen=True)
class ComposeCommand:
    """How this host runs compose: the v2 plugin (``docker compose``) or v1 (``docker-compose``)."""

    argv: tuple[str, ...]
    version: str

    @property
    def name(self) -> str:
        return " ".join(self.argv)


def detect_compose(host: Host, timeout: float = 30.0) -> ComposeCommand | None:
    """The v2 plugin when it is there, else v1, else None."""
    for argv in (("docker", "compose"), ("docker-compose",)):
        result = host.run([*argv, "version", "--short"], timeout=timeout)
        if result.ok and result.stdout.strip():
            return ComposeCommand(argv, result.stdout.strip().splitlines()[0].lstrip("v"))
    return None


def host_tag(hostname: str | None = None) -> str:
    """A project name may hold only ``[a-z0-9_-]``: the control machine's name, hashed."""
    return hashlib.sha256((hostname or socket.gethostname()).encode()).hexdigest()[:8]


def new_project_name() -> str:
    """``gpuhost-compose-<host>-<pid>-<random>``: the sweep can tell a live session's project."""
    return f"{PROJECT_PREFIX}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def project_owner(project: str) -> tuple[str, str] | None:
    """The (host tag, pid) in a project's name; None for a name without them (older runs)."""
    parts = project.removeprefix(PROJECT_PREFIX).split("-")
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], parts[1]
    return None


@dataclass(frozen=True)
class ComposeRun:
    project: str
    up: CommandResult
    logs: CommandResult | None
    down: CommandResult

    @property
    def output(self) -> str:
        return "\n".join(
            part for part in (self.up.stdout, self.up.stderr, self.logs and self.logs.stdout) if part
        )


def up_and_down(
    host: Host,
    compose: ComposeCommand,
    file: str | Path,
    service: str | None = None,
    project: str | None = None,
    timeout: float = 300.0,
) -> ComposeRun:
    """``up`` until ``service`` (or any container) exits, read its logs, and ``down -v`` in any case."""
    project = project or new_project_name()
    up_args = ["up", "--no-color", "--abort-on-container-exit"]
    if service:
        up_args += ["--exit-code-from", service]
    logs: CommandResult | None = None
    with file_on_host(host, file) as path:
        base = [*compose.argv, "-p", project, "-f", path]
        try:
            up = host.run([*base, *up_args], timeout=timeout)
            logs = host.run([*base, "logs", "--no-color", *([service] if service else [])], timeout=60)
        finally:
            down = host.run([*base, "down", "-v", "--remove-orphans", "-t", "5"], timeout=120)
    return ComposeRun(project, up, logs, down)


@contextmanager
def file_on_host(host: Host, file: str | Path) -> Iterator[str]:
    """``file`` as a path on ``host``: itself locally, a temporary copy on a remote host.

    The copy travels base64-encoded in the command line (compose files are small); files the
    compose file refers to by relative path (build contexts, env files) are not copied.
    """
    from pytest_gpuhost.hosts.remote import is_remote

    if not is_remote(host):
        yield str(file)
        return
    data = base64.b64encode(Path(file).read_bytes()).decode()
    name = Path(file).name
    made = host.run(
        ["sh", "-c", 'd=$(mktemp -d) && printf %s "$1" | base64 -d > "$d/$2" && echo "$d"', "sh", data, name],
        timeout=30,
    )
    folder = made.stdout.strip()
    if not made.ok or not folder.startswith("/"):
        from pytest_gpuhost.docker.containers import ContainerFailure

        raise ContainerFailure(
            Diagnosis(
                f"cannot copy {file} to {host.name}: {made.describe()}",
                "the host has no writable temporary directory, or no `base64` (coreutils)",
                f"check `mktemp -d` and `base64 --version` on {host.name}",
            )
        )
    try:
        yield f"{folder}/{name}"
    finally:
        host.run(["rm", "-rf", "--", folder], timeout=30)


def gpus_in_output(text: str) -> list[tuple[int, str, str]]:
    """``nvidia-smi -L`` lines anywhere in compose output: (index, name, UUID)."""
    seen: dict[str, tuple[int, str, str]] = {}
    for match in _SMI_LINE.finditer(text):
        seen.setdefault(match.group(3), (int(match.group(1)), match.group(2), match.group(3)))
    return list(seen.values())


def diagnose_compose_failure(run: ComposeRun, compose: ComposeCommand) -> Diagnosis:
    text = run.output
    driver = re.search(r'could not select device driver "([^"]*)" with capabilities: \[\[([^\]]*)\]\]', text)
    if driver:
        return Diagnosis(
            f"`{compose.name} up` failed: {driver.group(0)}",
            "the daemon has no NVIDIA device driver: the NVIDIA Container Toolkit is not installed, or Docker "
            "was not restarted after installing it",
            INSTALL_FIX,
        )
    if re.search(r"unknown or invalid runtime name: nvidia|unknown runtime specified nvidia", text):
        return Diagnosis(
            f"`{compose.name} up` failed: the service asks for `runtime: nvidia`, which the daemon lacks",
            "the toolkit's runtime is not registered with Docker",
            "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`",
        )
    last = [line for line in text.strip().splitlines() if line.strip()][-3:]
    return Diagnosis(
        f"`{compose.name} up` exited with {run.up.returncode}"
        + (" (timed out)" if run.up.timed_out else "")
        + ": "
        + " / ".join(last or ["no output"]),
        "the compose file or the daemon refused the project",
        f"run `{compose.name} -f FILE up` by hand and read the daemon's message",
    )


def project_leftovers(client: docker.DockerClient, project: str) -> list[str]:
    """Containers, networks and volumes that still carry the project's label."""
    selector: dict[str, str | list[str] | bool] = {"label": f"{PROJECT_LABEL}={project}"}
    found = [f"container {c.name}" for c in client.containers.list(all=True, filters=selector)]
    found += [f"network {n.name}" for n in client.networks.list(filters=selector)]
    found += [f"volume {v.name}" for v in client.volumes.list(filters=selector)]
    return found


def _own_projects(client: docker.DockerClient) -> Iterator[str]:
    projects = set()
    for container in client.containers.list(all=True, filters={"label": PROJECT_LABEL}, ignore_removed=True):
        projects.add((container.labels or {}).get(PROJECT_LABEL, ""))
    for network in client.networks.list(filters={"label": PROJECT_LABEL}):
        projects.add((network.attrs.get("Labels") or {}).get(PROJECT_LABEL, ""))
    for volume in client.volumes.list(filters={"label": PROJECT_LABEL}):
        projects.add((volume.attrs.get("Labels") or {}).get(PROJECT_LABEL, ""))
    yield from sorted(p for p in projects if p.startswith(PROJECT_PREFIX))


def _project_is_live(client: docker.DockerClient, project: str) -> bool:
    """Another session's project that may still be in use, judged as the container sweep judges."""
    from pytest_gpuhost.docker.containers import session_is_live

    owner = project_owner(project)
    if owner is None:
        return False  # named before names carried their session: as before, swept
    tag, pid = owner
    running = bool(
        client.containers.list(filters={"label": f"{PROJECT_LABEL}={project}", "status": "running"})
    )
    return session_is_live(socket.gethostname() if tag == host_tag() else None, pid, running)


def sweep_projects(client: docker.DockerClient) -> list[str]:
    """Remove what killed runs left of ``gpuhost-compose-*`` projects; returns what was removed.

    Projects of other live sessions (an xdist worker, a second pytest on this machine, a running
    project another machine brought up) are kept; removals that race another sweep are tolerated.
    """
    import docker as docker_sdk

    def tolerant(remove: Any) -> bool:
        try:
            remove()
        except docker_sdk.errors.NotFound:
            return False
        except docker_sdk.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a removal already in progress, or still in use
                raise
            return False
        return True

    removed = []
    for project in _own_projects(client):
        if _project_is_live(client, project):
            continue
        selector: dict[str, str | list[str] | bool] = {"label": f"{PROJECT_LABEL}={project}"}
        for container in client.containers.list(all=True, filters=selector, ignore_removed=True):
            if tolerant(lambda c=container: c.remove(force=True, v=True)):
                removed.append(f"container {container.name}")
        for network in client.networks.list(filters=selector):
            if tolerant(network.remove):
                removed.append(f"network {network.name}")
        for volume in client.volumes.list(filters=selector):
            if tolerant(lambda v=volume: v.remove(force=True)):
                removed.append(f"volume {volume.name}")
    return removed
