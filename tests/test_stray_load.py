"""Stray load at the start of a run: a dead session's container is removed, a busy GPU is named.

The busy GPU is the H100 capture with NVML reporting utilisation and a compute process, whose
/proc entries (name, owner, container) sit in the fake host's tree; the stray container is a real
one on CI's daemon, labelled as a killed pytest-gpuhost session's.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from docker_support import busybox_image, docker_client_or_skip
from pytester_support import GpuhostPytester

from pytest_gpuhost.burn.criteria import CRITERIA
from pytest_gpuhost.docker.containers import (
    LABEL_CHECK,
    LABEL_HOSTNAME,
    LABEL_OWNER,
    LABEL_PID,
    LABEL_SESSION,
)
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.fixtures.stray_load import GpuActivity, GpuProcess, StraySurvey

CHECKS = "test_no_stray_load or test_pcie_link or test_no_clock_slowdown"
CONTAINER = "4f" * 32
PID = 4242


def busy(dump: dict[str, Any]) -> None:
    dump["gpus"][0]["utilization"] = {"gpu": 97, "memory": 41}
    dump["gpus"][0]["power_mw"] = 689_000
    dump["gpus"][0]["compute_processes"] = [{"pid": PID, "usedGpuMemory": 40 * 2**30}]


def fake_process(root: Path) -> None:
    proc = root / "proc" / str(PID)
    proc.mkdir(parents=True)
    (proc / "comm").write_text("python3\n")
    (proc / "status").write_text("Name:\tpython3\nUid:\t1000\t1000\t1000\t1000\n")
    (proc / "cgroup").write_text(f"0::/system.slice/docker-{CONTAINER}.scope\n")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
    )


def test_a_busy_gpu_fails_the_stray_check_and_is_not_measured(gpuhost_pytester: GpuhostPytester) -> None:
    host = gpuhost_pytester.setup("h100", nvml_edit=busy)
    fake_process(host.root)
    result = gpuhost_pytester.run_plain("--gpuhost-tier", "quick", "-k", CHECKS, "-rs")
    result.stdout.fnmatch_lines(
        [
            "*FOUND: GPU 0 (GPU-*) is already busy: 1 compute process(es), 97 % utilisation, 689 W of 700 W;"
            f" running: pid {PID} (python3), user alice (uid 1000), container {CONTAINER[:12]}, 40960 MiB*",
            "*CAUSE: another job or user runs on this GPU*",
        ]
    )
    result.stdout.fnmatch_lines(["SKIPPED*not measured: GPU 0 (GPU-*) is already busy*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and outcomes.get("skipped", 0) >= 2
    assert outcomes.get("passed", 0) == 0  # nothing was measured on the busy GPU


def test_an_idle_gpu_passes_and_is_measured(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run_plain("--gpuhost-tier", "quick", "-k", CHECKS)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= 2
    assert "not measured" not in result.stdout.str()


def test_a_dead_sessions_container_is_removed_by_the_next_quick_run(
    gpuhost_pytester: GpuhostPytester,
) -> None:
    client = docker_client_or_skip()
    image = busybox_image(client)
    dead_pid = "999999999"  # no such process: its pytest is gone
    labels = {
        LABEL_OWNER: "1",
        LABEL_SESSION: f"{socket.gethostname()}:{dead_pid}",
        LABEL_HOSTNAME: socket.gethostname(),
        LABEL_PID: dead_pid,
        LABEL_CHECK: "stray-load-test",
    }
    stray = client.containers.run(image, ["sleep", "600"], detach=True, labels=labels, network_mode="none")
    try:
        gpuhost_pytester.setup("h100")
        result = gpuhost_pytester.run_plain("--gpuhost-tier", "quick", "-k", "test_no_stray_load", "-s")
        result.stdout.fnmatch_lines([f"*removed containers of dead sessions: *{stray.name}*"])
        assert not client.containers.list(all=True, filters={"id": str(stray.id)})
    finally:
        for leftover in client.containers.list(all=True, filters={"id": str(stray.id)}):
            leftover.remove(force=True)


def test_an_orphaned_suite_load_is_named_as_such() -> None:
    gpu = GpuInfo(index=1, uuid="GPU-1", name="H200", pci_bus_id="00000000:19:00.0")
    orphan = GpuProcess(pid=7, name="python3", container_id=CONTAINER, suite_session="node:12, check burn")
    survey = StraySurvey(activity={"GPU-1": GpuActivity("GPU-1", 1, 100.0, 650.0, 700.0, (orphan,))})
    diagnosis = survey.diagnosis(gpu)
    assert diagnosis is not None
    assert "a pytest-gpuhost load of session node:12, check burn" in diagnosis.found
    assert "earlier pytest-gpuhost run" in diagnosis.cause


@pytest.mark.parametrize(
    ("activity", "busy_because"),
    [
        (GpuActivity("u", utilization_pct=0.0, power_w=70.0, power_limit_w=700.0), None),
        (GpuActivity("u", utilization_pct=None, power_w=None, power_limit_w=None), None),
        (GpuActivity("u", utilization_pct=35.0), "35 % utilisation"),
        (GpuActivity("u", power_w=600.0, power_limit_w=700.0), "600 W of 700 W"),
    ],
)
def test_what_counts_as_busy(activity: GpuActivity, busy_because: str | None) -> None:
    assert activity.busy_because() == busy_because


def test_this_runs_own_load_is_not_a_stranger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another pytest-xdist worker of this run (same controller) burns: not stray load."""
    import os

    from pytest_gpuhost.fixtures.stray_load import is_sibling

    me = {LABEL_OWNER: "1", LABEL_HOSTNAME: socket.gethostname(), LABEL_PID: str(os.getpid())}
    assert is_sibling(me)
    parent = {**me, LABEL_PID: str(os.getppid())}
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert not is_sibling(parent)  # our parent is not a worker of ours
    assert not is_sibling({**me, LABEL_HOSTNAME: "elsewhere"})
    own = GpuProcess(pid=7, container_id=CONTAINER, sibling=True)
    stranger = GpuProcess(pid=8)
    assert GpuActivity("u", utilization_pct=100.0, processes=(own,)).busy_because() is None
    assert GpuActivity("u", utilization_pct=100.0, processes=(own, stranger)).busy_because() == (
        "1 compute process(es), 100 % utilisation"
    )


def test_no_burn_is_stacked_on_a_busy_gpu(gpuhost_pytester: GpuhostPytester) -> None:
    """The burn's checks on the busy GPU are skipped before the burn fixture starts anything."""
    host = gpuhost_pytester.setup("h100", nvml_edit=busy)
    fake_process(host.root)
    result = gpuhost_pytester.run_plain(
        "--gpuhost-tier", "burn", "--gpuhost-burn", "5s", "-k", "test_burn", "-rs"
    )
    outcomes = result.parseoutcomes()
    assert (
        outcomes.get("skipped") == len(CRITERIA) and not outcomes.get("passed") and not outcomes.get("failed")
    )
    result.stdout.fnmatch_lines(["SKIPPED [[]7[]]*not measured: GPU 0 (GPU-*) is already busy: *pid 4242*"])


def _readings(monkeypatch: pytest.MonkeyPatch, *utilisations: float) -> list[int]:
    """``read_activity_smi`` answers these utilisations one after the other (no process runs)."""
    from pytest_gpuhost.fixtures import stray_load

    calls: list[int] = []

    def read(host: object, gpus: object, timeout: float) -> dict[str, GpuActivity]:
        value = utilisations[min(len(calls), len(utilisations) - 1)]
        calls.append(1)
        return {"GPU-1": GpuActivity("GPU-1", 0, utilization_pct=value, power_w=80, power_limit_w=700)}

    monkeypatch.setattr(stray_load, "read_activity_smi", read)
    monkeypatch.setattr(stray_load, "STALE_REREAD_GAP_S", 0.0)
    return calls


def test_the_fading_sample_of_a_load_that_just_ended_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on an H200: right after another program's load ended, NVML still read 100 % with no process."""
    from pytest_gpuhost.fixtures.stray_load import survey
    from pytest_gpuhost.hosts.host import LocalHost

    calls = _readings(monkeypatch, 100.0, 0.0)
    result = survey(LocalHost(), [], 5.0, use_nvml=False, client=None)
    assert len(calls) == 2
    assert result.activity["GPU-1"].busy_because() is None


def test_a_load_that_stays_busy_without_a_visible_process_is_still_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_gpuhost.fixtures.stray_load import STALE_REREADS, survey
    from pytest_gpuhost.hosts.host import LocalHost

    calls = _readings(monkeypatch, 100.0)
    result = survey(LocalHost(), [], 5.0, use_nvml=False, client=None)
    assert len(calls) == 1 + STALE_REREADS
    assert result.activity["GPU-1"].busy_because() == "100 % utilisation"
