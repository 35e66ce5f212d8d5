"""Fleet runs against real OpenSSH servers on loopback: the remote path of the facts, ids that
name hosts, an unreachable host, a refused identity file, and a parallel run with pytest-xdist.

This machine has no GPU, so through SSH each host fails ``test_nvidia_gpus_on_pci_bus`` with
"no NVIDIA GPU" and skips what depends on it: the diagnosis of a GPU-less node, per host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_support import SshLab, sshd_or_skip

from conftest import GpuhostPytester
from pytest_gpuhost.host import CommandResult
from pytest_gpuhost.remote import TestinfraHost, diagnose_connection
from pytest_gpuhost.session import render_fleet_table
from pytest_gpuhost.xdist_hosts import host_in_nodeid

FLEET_CHECKS = "test_fleet or test_step_1_1_hardware or test_step_2_1_driver or test_daemon_json_parses"
NO_GPU = "no NVIDIA GPU"


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    sshd_or_skip()
    lab = SshLab(tmp_path_factory.mktemp("sshlab"))
    try:
        yield lab
    finally:
        lab.stop()


def run_fleet(gp: GpuhostPytester, *args: str) -> pytest.RunResult:
    return gp.runpytest(
        "-p", "testinfra.plugin", "--gpuhost", "--gpuhost-tier", "quick", "-k", FLEET_CHECKS, "-rs", *args
    )


def outcomes_by_id(result: pytest.RunResult) -> dict[str, str]:
    """``test_x[node1]`` to PASSED/FAILED/SKIPPED, from ``-v`` lines."""
    found = {}
    for line in result.outlines:
        match = re.search(r"::(\w+\[[^\]]+\])(?:@\S+)? (PASSED|FAILED|SKIPPED|ERROR)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_two_hosts_over_ssh_name_their_hosts_and_fail_without_gpu(
    gpuhost_pytester: GpuhostPytester, lab: SshLab, tmp_path: Path
) -> None:
    lab.start("node1")
    lab.start("node2")
    report = tmp_path / "fleet.json"
    result = run_fleet(gpuhost_pytester, *lab.args("node1", "node2"), "-v", f"--gpuhost-json={report}")
    seen = outcomes_by_id(result)
    for node in ("node1", "node2"):
        assert seen[f"test_host_reachable[{node}]"] == "PASSED"
        assert seen[f"test_nvidia_gpus_on_pci_bus[{node}]"] == "FAILED"
        assert seen[f"test_nvidia_smi_runs[{node}]"] == "SKIPPED"
        assert seen[f"test_gpu_device_node[{node}-no-gpu]"] == "SKIPPED"
        assert seen[f"test_daemon_json_parses[{node}]"] == "SKIPPED"
    result.stdout.fnmatch_lines(
        [
            f"FAILED test_nvidia_gpus_on_pci_bus[[]node1[]]: {NO_GPU}*",
            f"FAILED test_nvidia_gpus_on_pci_bus[[]node2[]]: {NO_GPU}*",
        ]
    )
    result.stdout.fnmatch_lines(["*gpuhost: fleet (passed/failed/skipped)*", "host*fleet*", "node1  1/0/0*"])
    result.stdout.fnmatch_lines(["*Docker checks on remote hosts: not yet supported*"])
    document = json.loads(report.read_text())
    assert [h["host"] for h in document["hosts"]] == ["node1", "node2"]
    assert set(document["summary"]["table"]) == {"node1", "node2"}


def test_unreachable_host_fails_only_its_own_check(gpuhost_pytester: GpuhostPytester, lab: SshLab) -> None:
    lab.start("node1")
    lab.closed("down")
    result = run_fleet(gpuhost_pytester, *lab.args("node1", "down"), "-v")
    seen = outcomes_by_id(result)
    assert seen["test_host_reachable[down]"] == "FAILED"
    assert seen["test_host_reachable[node1]"] == "PASSED"
    down = {k: v for k, v in seen.items() if k.endswith("[down]") or "[down-" in k}
    assert {v for k, v in down.items() if not k.startswith("test_host_reachable")} == {"SKIPPED"}
    assert seen["test_nvidia_gpus_on_pci_bus[node1]"] == "FAILED"  # node1's own diagnosis, unaffected
    result.stdout.fnmatch_lines(["FAILED test_host_reachable[[]down[]]: down: SSH connection refused*"])
    result.stdout.fnmatch_lines(
        ["*needs reachable: test_host_reachable failed: down: SSH connection refused*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_identity_file_that_ssh_refuses_is_diagnosed(gpuhost_pytester: GpuhostPytester, lab: SshLab) -> None:
    lab.start("node1")
    key = lab.root / "loose_key"
    key.write_bytes(lab.client_key.read_bytes())
    key.chmod(0o644)
    args = [*lab.args("node1", identity=False), f"--ssh-identity-file={key}"]
    result = run_fleet(gpuhost_pytester, *args, "-k", "test_host_reachable")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"FOUND: node1: SSH refuses the identity file {key}: its permissions are too open",
            f"FIX:   `chmod 600 {key}`",
        ]
    )


def test_parallel_run_keeps_each_host_on_one_worker(gpuhost_pytester: GpuhostPytester, lab: SshLab) -> None:
    lab.start("node1")
    lab.start("node2")
    result = gpuhost_pytester.runpytest(
        "-p",
        "xdist.plugin",
        "-p",
        "testinfra.plugin",
        "--gpuhost",
        "--gpuhost-tier",
        "quick",
        "-k",
        FLEET_CHECKS,
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "-v",
        *lab.args("node1", "node2"),
    )
    workers: dict[str, set[str]] = {}
    for line in result.outlines:
        # The host is in the test id (pytest 9.2 no longer shows xdist's "@group" suffix here).
        match = re.search(r"\[(gw\d)\] .*\[(node\d)[\]-]", line)
        if match:
            workers.setdefault(match.group(2), set()).add(match.group(1))
    assert set(workers) == {"node1", "node2"}, result.stdout.str()
    assert all(len(w) == 1 for w in workers.values()), workers
    assert result.parseoutcomes()["failed"] == 2  # test_nvidia_gpus_on_pci_bus on each host


# -- units: no SSH server needed -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodeid", "host"),
    [
        ("suites/test_a.py::test_x[gpu1]", "gpu1"),
        ("suites/test_a.py::test_x[gpu1-b-gpu0-1a2b3c4d]", "gpu1-b"),
        ("suites/test_a.py::test_x[gpu1-gpu0-1a2b3c4d]", "gpu1"),
        ("suites/test_a.py::test_x[float32-gpu1-gpu0-1a2b3c4d]", "gpu1"),
        ("suites/test_a.py::test_x[node:2222]@node:2222", "node:2222"),
        ("suites/test_a.py::test_x[gpu10]", None),
        ("suites/test_a.py::test_x", None),
    ],
)
def test_host_in_nodeid_finds_the_longest_matching_host(nodeid: str, host: str | None) -> None:
    assert host_in_nodeid(nodeid, ["gpu1", "gpu1-b", "node:2222"]) == host


class FakeBackend:
    def get_connection_type(self) -> str:
        return "ssh"


class FakeResult:
    def __init__(self, rc: int, stdout: str = "", stderr: str = "") -> None:
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


class FakeTestinfra:
    """What ``testinfra.get_host`` returns, answering from a table of commands."""

    backend = FakeBackend()

    def __init__(self, answers: dict[str, FakeResult]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    def run(self, command: str) -> FakeResult:
        self.commands.append(command)
        for suffix, result in self.answers.items():
            if command.endswith(suffix):
                return result
        raise RuntimeError(FakeResult(255, "", "ssh: connect to host gpu01 port 22: Connection refused"))


def test_every_remote_command_is_bounded_by_a_remote_timeout() -> None:
    fake = FakeTestinfra(
        {
            "cat -- /proc/modules": FakeResult(0, "nvidia 1 0 - Live\n"),
            "cat -- /nope": FakeResult(1, "", "cat: /nope: No such file or directory"),
            "cat -- /secret": FakeResult(1, "", "cat: /secret: Permission denied"),
            "ls -1A -- /dev": FakeResult(0, "nvidiactl\nnvidia0\n"),
            "nvidia-smi -q -x": FakeResult(124),
            "nvidia-bug-report.sh": FakeResult(127, "", "timeout: failed to run command 'x': No such file"),
        }
    )
    host = TestinfraHost(fake, "gpu01", "ssh://gpu01")
    assert host.remote and host.name == "gpu01"
    assert host.read_text("/proc/modules") == "nvidia 1 0 - Live\n"
    assert host.read_text("/nope") is None
    with pytest.raises(PermissionError):
        host.read_text("/secret")
    assert host.listdir("/dev") == ["nvidia0", "nvidiactl"]
    assert host.run(["nvidia-smi", "-q", "-x"], timeout=7).timed_out
    assert host.run(["nvidia-bug-report.sh"]).missing
    assert all(c.startswith("timeout -k 5 ") for c in fake.commands)
    assert "timeout -k 5 7 nvidia-smi -q -x" in fake.commands
    down = host.run(["true"])
    assert down.unreachable and "Connection refused" in down.stderr and not down.ok


def test_connection_diagnoses_name_the_fix() -> None:
    host = TestinfraHost(FakeTestinfra({}), "gpu01", "ssh://ops@gpu01")
    wrong_user = diagnose_connection(host, "ops@gpu01: Permission denied (publickey).")
    assert "check the user" in wrong_user.fix and "Permission denied (publickey)" in wrong_user.found
    loose = diagnose_connection(
        host,
        "Permissions 0644 for '/home/ops/.ssh/id' are too open.\nThis private key will be ignored.\n"
        "ops@gpu01: Permission denied (publickey).",
    )
    assert loose.fix == "`chmod 600 /home/ops/.ssh/id`"
    assert "does not resolve" in diagnose_connection(host, "ssh: Could not resolve hostname gpu01").found
    assert (
        "no answer" in diagnose_connection(host, "ssh: connect to host x port 22: Connection timed out").found
    )
    assert CommandResult(("true",), None, "", "refused", unreachable=True).describe().endswith("refused")


def test_fleet_table_counts_errors_as_failures() -> None:
    table = {
        "gpu01": {"test_step_1_1_hardware": {"passed": 1, "failed": 0, "error": 1, "skipped": 2}},
        "gpu02": {},
    }
    lines = render_fleet_table(table, ["gpu01", "gpu02"])
    assert lines == ["host   1_1_hardware", "gpu01  1/1/2", "gpu02  -"]


FAKE_FLEET = """
_one_host = pytest_gpuhost_make_host


def pytest_gpuhost_make_host(config):
    one = _one_host(config)
    return [LocalHost(root=one.root, env=one.env, name=name) for name in ("gpu01", "gpu02")]
"""


def test_fake_fleet_ids_name_host_and_gpu(gpuhost_pytester: GpuhostPytester, tmp_path: Path) -> None:
    """Several hosts from ``pytest_gpuhost_make_host``: per-GPU ids are host-gpu, facts per host."""
    gpuhost_pytester.setup("h100", extra_conftest=FAKE_FLEET)
    report = tmp_path / "fleet.json"
    result = gpuhost_pytester.run(
        "-k", "test_fleet or test_step_2_1_driver", "-v", f"--gpuhost-json={report}"
    )
    seen = outcomes_by_id(result)
    assert seen["test_gpu_device_node[gpu01-gpu0-042f1913]"] == "PASSED"
    assert seen["test_gpu_device_node[gpu02-gpu0-042f1913]"] == "PASSED"
    assert seen["test_nvidia_smi_runs[gpu02]"] == "PASSED"
    assert seen["test_host_reachable[gpu01]"] == "PASSED"
    result.stdout.fnmatch_lines(["gpuhost: host gpu01, *", "gpuhost: host gpu02, *"])
    document = json.loads(report.read_text())
    assert {r["host"] for r in document["results"]} == {"gpu01", "gpu02"}
    result.assert_outcomes(passed=len(seen))
