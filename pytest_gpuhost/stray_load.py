"""Stray load: what already runs on the GPUs before the suite measures them.

A measurement on a GPU that someone else keeps busy measures garbage, and a burn stacked on an
orphaned one doubles the heat. So before the first check that measures, the session removes the
suite's containers of dead sessions (the sweep) and reads each selected GPU's utilisation, power
and compute processes, naming each process, its owner and its container. A busy GPU fails the
stray-load check with that diagnosis, and every measuring check on it is skipped, not measured.

Checks measure when they use one of :data:`MEASURING_FIXTURES` or carry the
``gpuhost_measures`` marker (for new tiers). The survey is read through NVML where pytest runs on
the host and NVML answered, else through ``nvidia-smi`` (remote hosts).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuhost.containers import (
    LABEL_CHECK,
    LABEL_HOSTNAME,
    LABEL_OWNER,
    LABEL_PID,
    LABEL_SESSION,
    sweep,
)
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.host import Host
from pytest_gpuhost.timeouts import NativeCallTimeout

if TYPE_CHECKING:
    import docker

    from pytest_gpuhost.session import GpuhostSession

MEASURES_MARKER = "gpuhost_measures"
MEASURING_FIXTURES = frozenset({"gpuhost_burn", "gpuhost_matmul", "gpuhost_live", "gpuhost_gpu_load"})
BUSY_UTILIZATION_PCT = 10.0  # an idle GPU reads 0 %; a desktop or a monitor stays well below
STALE_REREADS = 4  # a GPU busy with no process is read again this often, STALE_REREAD_GAP_S apart
STALE_REREAD_GAP_S = 0.5
BUSY_POWER_FRACTION = 0.4  # an idle H100/H200 draws about 10 % of its limit, a load 90 % and more
CONTAINER_ID = re.compile(r"(?:docker[-/]|containerd[-/]|cri-containerd-|libpod-)([0-9a-f]{64})")
QUERY_GPUS = "--query-gpu=uuid,utilization.gpu,power.draw,enforced.power.limit"
QUERY_APPS = "--query-compute-apps=gpu_uuid,pid,process_name,used_memory"


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU, as far as the host tells who it is."""

    pid: int
    name: str = ""
    used_mib: float | None = None
    owner: str = ""
    container_id: str = ""
    container_name: str = ""
    suite_session: str = ""  # the pytest-gpuhost session that started its container, if any
    sibling: bool = False  # started by this run itself (another pytest-xdist worker of it)

    def describe(self) -> str:
        parts = [f"pid {self.pid}" + (f" ({self.name})" if self.name else "")]
        if self.owner:
            parts.append(f"user {self.owner}")
        if self.container_id:
            name = f" {self.container_name}" if self.container_name else ""
            parts.append(f"container{name} {self.container_id[:12]}")
        if self.suite_session:
            parts.append(f"a pytest-gpuhost load of session {self.suite_session}")
        if self.used_mib is not None:
            parts.append(f"{self.used_mib:.0f} MiB")
        return ", ".join(parts)


@dataclass(frozen=True)
class GpuActivity:
    """One GPU's state when the session looked."""

    uuid: str
    index: int = -1
    utilization_pct: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: tuple[GpuProcess, ...] = ()

    def busy_because(self) -> str | None:
        """Why the GPU counts as busy, or None when it is idle."""
        foreign = [p for p in self.processes if not p.sibling]
        if self.processes and not foreign:
            return None  # only this run's own load (another xdist worker): not a stranger's
        reasons = []
        if foreign:
            reasons.append(f"{len(foreign)} compute process(es)")
        if self.utilization_pct is not None and self.utilization_pct >= BUSY_UTILIZATION_PCT:
            reasons.append(f"{self.utilization_pct:.0f} % utilisation")
        if (
            self.power_w is not None
            and self.power_limit_w
            and self.power_w >= BUSY_POWER_FRACTION * self.power_limit_w
        ):
            reasons.append(f"{self.power_w:.0f} W of {self.power_limit_w:.0f} W")
        return ", ".join(reasons) or None


@dataclass
class StraySurvey:
    """The session's look at the host before measuring: swept containers, each GPU's activity."""

    removed: list[str] = field(default_factory=list)
    activity: dict[str, GpuActivity] = field(default_factory=dict)
    error: str | None = None  # the GPUs could not be read: measuring goes ahead, the check says so

    def diagnosis(self, gpu: GpuInfo) -> Diagnosis | None:
        """The busy GPU's diagnosis, naming what runs there; None when it is idle or unread."""
        seen = self.activity.get(gpu.uuid)
        why = seen.busy_because() if seen is not None else None
        if seen is None or why is None:
            return None
        foreign = [p for p in seen.processes if not p.sibling]
        running = "; ".join(p.describe() for p in foreign) or "no process visible from here"
        orphan = any(p.suite_session for p in seen.processes)
        cause = (
            "a load of an earlier pytest-gpuhost run still runs (its pytest was killed)"
            if orphan
            else "another job or user runs on this GPU, or a load whose process this host cannot see"
        )
        return Diagnosis(
            f"GPU {gpu.index} ({gpu.uuid}) is already busy: {why}; running: {running}",
            cause,
            "wait for the job to end or stop it (`nvidia-smi` lists the processes; `docker ps` the "
            "containers), then run the suite again; measuring a busy GPU would measure the other job",
        )


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def describe_process(host: Host, pid: int, used_mib: float | None, name: str = "") -> GpuProcess:
    """Name, owner and container of ``pid`` from the host's /proc."""
    comm = host.read_text(f"/proc/{pid}/comm")
    status = host.read_text(f"/proc/{pid}/status") or ""
    cgroup = host.read_text(f"/proc/{pid}/cgroup") or ""
    owner = ""
    for line in status.splitlines():
        if line.startswith("Uid:") and len(line.split()) > 1:
            uid = line.split()[1]
            owner = _user_name(host, uid)
    found = CONTAINER_ID.search(cgroup)
    return GpuProcess(
        pid=pid,
        name=(comm or "").strip() or name,
        used_mib=used_mib,
        owner=owner,
        container_id=found.group(1) if found else "",
    )


def _user_name(host: Host, uid: str) -> str:
    for line in (host.read_text("/etc/passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2] == uid:
            return f"{parts[0]} (uid {uid})"
    return f"uid {uid}"


def read_activity_nvml(nvml: Any, host: Host, gpus: Sequence[GpuInfo]) -> dict[str, GpuActivity]:
    """Utilisation, power and compute processes of ``gpus`` through NVML (one init, one shutdown)."""

    def optional(fn: Any) -> Any:
        try:
            return fn()
        except nvml.NVMLError:
            return None

    nvml.nvmlInit()
    try:
        activity: dict[str, GpuActivity] = {}
        for gpu in gpus:
            handle = nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
            rates = optional(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h))
            power = optional(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h))
            limit = optional(lambda h=handle: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
            running = optional(lambda h=handle: nvml.nvmlDeviceGetComputeRunningProcesses(h)) or []
            processes = []
            for entry in running:
                used = getattr(entry, "usedGpuMemory", None)
                used_mib = int(used) / 2**20 if isinstance(used, int) and used >= 0 else None
                processes.append(describe_process(host, int(entry.pid), used_mib))
            activity[gpu.uuid] = GpuActivity(
                uuid=gpu.uuid,
                index=gpu.index,
                utilization_pct=float(rates.gpu) if rates is not None else None,
                power_w=power / 1000.0 if power is not None else None,
                power_limit_w=limit / 1000.0 if limit is not None else None,
                processes=tuple(processes),
            )
        return activity
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def read_activity_smi(host: Host, gpus: Sequence[GpuInfo], timeout: float) -> dict[str, GpuActivity]:
    """The same through ``nvidia-smi`` queries, for remote hosts or when NVML did not answer."""
    fmt = "--format=csv,noheader,nounits"
    listing = host.run(["nvidia-smi", QUERY_GPUS, fmt], timeout=timeout)
    if not listing.ok:
        raise RuntimeError(f"nvidia-smi {QUERY_GPUS}: {(listing.stderr or listing.stdout).strip()[:200]}")
    apps = host.run(["nvidia-smi", QUERY_APPS, fmt], timeout=timeout)
    by_gpu: dict[str, list[GpuProcess]] = {}
    for line in apps.stdout.splitlines() if apps.ok else []:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 4 and cells[1].isdigit():
            process = describe_process(host, int(cells[1]), _number(cells[3]), name=cells[2])
            by_gpu.setdefault(cells[0], []).append(process)
    wanted = {g.uuid: g for g in gpus}
    activity: dict[str, GpuActivity] = {}
    for line in listing.stdout.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 4 and cells[0] in wanted:
            activity[cells[0]] = GpuActivity(
                uuid=cells[0],
                index=wanted[cells[0]].index,
                utilization_pct=_number(cells[1]),
                power_w=_number(cells[2]),
                power_limit_w=_number(cells[3]),
                processes=tuple(by_gpu.get(cells[0], ())),
            )
    return activity


def is_sibling(labels: dict[str, str]) -> bool:
    """The container of this very run: this process, or another pytest-xdist worker of its controller."""
    if labels.get(LABEL_HOSTNAME) != socket.gethostname():
        return False
    pid = labels.get(LABEL_PID, "")
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return len(fields) > 1 and fields[1] == str(os.getppid())


def name_containers(
    client: docker.DockerClient | None, activity: dict[str, GpuActivity]
) -> dict[str, GpuActivity]:
    """Container names and, for the suite's own, the session that started them."""
    if client is None:
        return activity
    from dataclasses import replace

    import docker as docker_sdk

    named: dict[str, GpuActivity] = {}
    for uuid, seen in activity.items():
        processes = []
        for process in seen.processes:
            if process.container_id:
                with contextlib.suppress(docker_sdk.errors.DockerException):
                    container = client.containers.get(process.container_id)
                    labels = container.labels or {}
                    session = labels.get(LABEL_SESSION, "") if LABEL_OWNER in labels else ""
                    if session and labels.get(LABEL_CHECK):
                        session = f"{session}, check {labels[LABEL_CHECK]}"
                    process = replace(
                        process,
                        container_name=str(container.name),
                        suite_session=session,
                        sibling=LABEL_OWNER in labels and is_sibling(labels),
                    )
            processes.append(process)
        named[uuid] = replace(seen, processes=tuple(processes))
    return named


def survey(
    host: Host,
    gpus: Sequence[GpuInfo],
    timeout: float,
    *,
    use_nvml: bool,
    client: docker.DockerClient | None,
    loader: Any = None,
) -> StraySurvey:
    """Sweep the dead sessions' containers, then read what runs on ``gpus``."""
    result = StraySurvey()
    if client is not None:
        with contextlib.suppress(Exception):  # a daemon that fails here is diagnosed by its own checks
            result.removed = sweep(client)
    try:
        if use_nvml:
            from pytest_gpuhost.facts.nvml import load_pynvml, nvml_call

            nvml: ModuleType = (loader or load_pynvml)()

            def read() -> dict[str, GpuActivity]:
                return nvml_call(lambda: read_activity_nvml(nvml, host, gpus), timeout, "NVML activity read")
        else:

            def read() -> dict[str, GpuActivity]:
                return read_activity_smi(host, gpus, timeout)

        activity = read()
        for _ in range(STALE_REREADS):
            if not any(busy_without_process(a) for a in activity.values()):
                break
            # The driver's utilisation is an average over its last sample period: a load that
            # ended a moment ago (the previous run's) still reads busy. A real one stays busy.
            time.sleep(STALE_REREAD_GAP_S)
            activity = read()
    except (NativeCallTimeout, RuntimeError, ImportError) as exc:
        result.error = str(exc)
        return result
    except Exception as exc:  # an NVMLError of a GPU gone bad: the health checks diagnose it
        result.error = f"NVML: {exc}"
        return result
    result.activity = name_containers(client, activity)
    return result


def busy_without_process(activity: GpuActivity) -> bool:
    """Busy by utilisation or power alone: possibly the fading sample of a load that just ended."""
    return activity.busy_because() is not None and not activity.processes


# --- the session's survey, once per host, and the gate in front of the measuring checks ---------

SURVEYS_KEY = pytest.StashKey[dict[str, StraySurvey]]()
_lock = threading.Lock()


def session_survey(config: pytest.Config, target: str) -> StraySurvey:
    """The survey of host ``target``, taken the first time any check asks for it."""
    from pytest_gpuhost.docker_fixtures import docker_connection
    from pytest_gpuhost.remote import is_remote
    from pytest_gpuhost.session import SESSION_KEY, select_gpus

    with _lock:
        surveys = config.stash.setdefault(SURVEYS_KEY, {})
        if target not in surveys:
            session: GpuhostSession = config.stash[SESSION_KEY]
            host = session.host_named(target)
            facts = session.facts_for(target)
            settings = session.settings
            try:
                gpus = select_gpus(facts.gpus, settings.gpus)
            except Exception:
                gpus = facts.gpus
            connection = docker_connection(config, host, settings.timeout)
            surveys[target] = survey(
                host,
                [g for g in gpus if g.uuid],
                settings.timeout,
                use_nvml=facts.nvml.ok and not is_remote(host),
                client=connection.client,
            )
        return surveys[target]


def measures(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    return bool(names & MEASURING_FIXTURES) or item.get_closest_marker(MEASURES_MARKER) is not None


def busy_gpus(config: pytest.Config, target: str, gpus: Sequence[GpuInfo]) -> dict[str, Diagnosis]:
    """The busy ones among ``gpus``, with their diagnoses: a session-wide load leaves them out."""
    found = session_survey(config, target)
    return {g.uuid: d for g in gpus if (d := found.diagnosis(g)) is not None}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MEASURES_MARKER}: the check measures its GPU: skipped when the GPU is already busy"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A measuring check on a busy GPU is skipped before its fixtures start any load."""
    if not measures(item):
        return
    callspec = getattr(item, "callspec", None)
    gpu = callspec.params.get("gpu") if callspec is not None else None
    if not isinstance(gpu, GpuInfo):
        return
    from pytest_gpuhost.session import SESSION_KEY

    session = item.config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    diagnosis = session_survey(item.config, session.target_of(item)).diagnosis(gpu)
    if diagnosis is not None:
        pytest.skip(f"not measured: {diagnosis.found} (see test_no_stray_load)")


@pytest.fixture(scope="session")
def gpuhost_stray_load(pytestconfig: pytest.Config, gpuhost_target: str) -> StraySurvey:
    """What ran on the host's GPUs before the suite measured them (taken once per host)."""
    return session_survey(pytestconfig, gpuhost_target)
