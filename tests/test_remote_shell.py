"""The one shell per SSH host (``pytest_gpuhost.hosts.remote_shell``) against a real loopback sshd: after
the first command, testinfra starts no more ssh clients, and every answer is the one testinfra's
own path gives, down to exit statuses, stderr, bytes and timeouts; a shell that ends or hangs
hands its commands back to testinfra."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hosts_support import HereBackend
from sshd_support import SshLab, sshd_or_skip

from pytest_gpuhost.hosts import remote_shell
from pytest_gpuhost.hosts.remote import TestinfraHost, control_path


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    sshd_or_skip()
    lab = SshLab(tmp_path_factory.mktemp("shelllab"))
    try:
        lab.start("node1", SetEnv="SHLVL=1")
        yield lab
    finally:
        lab.stop()


class Counting:
    """testinfra's host, counting the commands that testinfra itself runs."""

    def __init__(self, backend_host: Any) -> None:
        self.inner = backend_host
        self.backend = backend_host.backend
        self.commands: list[str] = []

    def run(self, command: str) -> Any:
        self.commands.append(command)
        return self.inner.run(command)


def make_host(lab: SshLab) -> tuple[TestinfraHost, Counting]:
    import testinfra

    kwargs = {"ssh_config": str(lab.ssh_config())}
    backend_host = testinfra.get_host(
        "ssh://node1", controlpath=control_path("ssh://node1", kwargs), **kwargs
    )
    counting = Counting(backend_host)
    host = TestinfraHost(counting, "node1", "ssh://node1")
    assert host.shell is not None
    return host, counting


@pytest.fixture
def proven(lab: SshLab) -> Iterator[tuple[TestinfraHost, Counting]]:
    """A host after its first command, which started the shell: testinfra ran none of them."""
    host, counting = make_host(lab)
    try:
        assert host.run(["true"]).ok and host.connected
        assert counting.commands == []
        yield host, counting
    finally:
        host.close()


COMMANDS = [
    ["printf", "a\\nb\\n"],
    ["sh", "-c", "echo out; echo err >&2; exit 3"],
    ["printf", "no newline"],
    ["printf", "caf\\303\\251"],  # UTF-8: decoded as testinfra decodes it
    ["sh", "-c", "printf '%s|' \"$1\"", "sh", "two\nlines\n"],  # a newline inside an argument
    ["cat"],  # stdin is empty: it must not read the next command
    ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"],  # more than one read's worth
    ["cat", "--", "/nonexistent"],
    ["no-such-command-gpuhost"],
]


def test_one_shell_gives_testinfras_answers(
    proven: tuple[TestinfraHost, Counting],
) -> None:
    host, counting = proven
    through_shell = [host.run(argv) for argv in COMMANDS]
    assert counting.commands == [], "a command went through testinfra, not the shell"
    assert host.shell is not None and host.shell.process is not None
    host.shell.close()  # from now on testinfra runs everything: the reference answers
    through_testinfra = [host.run(argv) for argv in COMMANDS]
    assert len(counting.commands) == len(COMMANDS)
    for argv, mine, theirs in zip(COMMANDS, through_shell, through_testinfra, strict=True):
        assert (mine.returncode, mine.stdout, mine.stderr, mine.missing, mine.timed_out) == (
            theirs.returncode,
            theirs.stdout,
            theirs.stderr,
            theirs.missing,
            theirs.timed_out,
        ), argv
    assert through_shell[1].returncode == 3 and through_shell[1].stderr == "err\n"
    assert through_shell[6].stdout == "x" * 200000
    assert through_shell[8].missing


def test_a_remote_timeout_is_a_timeout_in_the_shell_too(proven: tuple[TestinfraHost, Counting]) -> None:
    host, counting = proven
    result = host.run(["sleep", "5"], timeout=1)
    assert result.timed_out and not result.ok
    assert host.run(["echo", "next"]).stdout == "next\n"  # the shell is still in step
    assert counting.commands == []


def test_a_shell_that_ends_hands_its_commands_back_to_testinfra(
    proven: tuple[TestinfraHost, Counting],
) -> None:
    host, counting = proven
    assert host.run(["echo", "one"]).stdout == "one\n"
    shell = host.shell
    assert shell is not None and shell.process is not None
    os.killpg(shell.process.pid, signal.SIGKILL)  # the ssh client dies under it
    shell.process.wait()
    assert host.run(["echo", "two"]).stdout == "two\n"  # testinfra ran it
    assert counting.commands[-1].endswith("echo two")
    assert shell.dead and shell.process is None
    assert host.run(["echo", "three"]).stdout == "three\n"
    assert counting.commands[-1].endswith("echo three")  # the shell stays ended


def test_a_command_past_its_local_deadline_ends_the_shell(proven: tuple[TestinfraHost, Counting]) -> None:
    host, _ = proven
    shell = host.shell
    assert shell is not None
    with pytest.raises(remote_shell.Deadline):
        shell.run("sleep 5", timeout=0.5)
    assert shell.dead and shell.process is None
    with pytest.raises(remote_shell.ShellGone):
        shell.run("true", timeout=5)


def test_an_unreachable_host_is_diagnosed_from_the_ssh_of_its_shell(lab: SshLab) -> None:
    """The first command starts the shell; when ssh fails there, the result carries ssh's own
    words, as testinfra's would, and later commands get the same diagnosis from testinfra."""
    lab.closed("down")
    import testinfra

    kwargs = {"ssh_config": str(lab.ssh_config())}
    backend_host = testinfra.get_host("ssh://down", controlpath=control_path("ssh://down", kwargs), **kwargs)
    counting = Counting(backend_host)
    host = TestinfraHost(counting, "down", "ssh://down")
    down = host.run(["true"])
    assert down.unreachable and "Connection refused" in down.stderr, down
    assert counting.commands == []  # the shell's ssh said it, not a second connection
    assert host.shell is not None and host.shell.dead and not host.connected
    again = host.run(["true"])
    assert again.unreachable and "Connection refused" in again.stderr
    assert len(counting.commands) == 1


def test_sudo_and_other_backends_keep_testinfras_path() -> None:
    class Backend:
        NAME = "ssh"
        sudo = True

        def _build_ssh_command(self, command: str) -> tuple[list[str], list[str]]:
            return ["ssh", "%s"], [command]

        def result(self, *args: Any) -> None:
            return None

    assert not remote_shell.supports(Backend())
    Backend.sudo = False
    assert remote_shell.supports(Backend())
    Backend.NAME = "paramiko"
    assert not remote_shell.supports(Backend())


def test_closing_busy_shells_takes_the_grace_once_not_per_shell() -> None:
    """Ctrl-C in a fleet run: every shell is busy with a command; the run must still end promptly."""
    shells = [remote_shell.RemoteShell(HereBackend()) for _ in range(4)]
    errors: list[BaseException] = []

    def busy(shell: remote_shell.RemoteShell) -> None:
        try:
            shell.run("sleep 30", timeout=60)
        except BaseException as exc:  # the shell ends under it
            errors.append(exc)

    threads = [threading.Thread(target=busy, args=(shell,)) for shell in shells]
    for thread in threads:
        thread.start()

    def running(shell: remote_shell.RemoteShell) -> bool:
        """Started and inside a command: its lock is taken."""
        if shell.process is None or shell.lock.acquire(blocking=False) is False:
            return shell.process is not None
        shell.lock.release()
        return False

    deadline = time.monotonic() + 10
    while not all(running(shell) for shell in shells):
        assert time.monotonic() < deadline, "the shells did not start their commands"
        time.sleep(0.05)
    started = time.monotonic()
    remote_shell.close_all(shells, grace=1.0)
    assert time.monotonic() - started < 3.0
    for thread in threads:
        thread.join(timeout=10)
    assert len(errors) == 4 and all(isinstance(e, remote_shell.ShellGone) for e in errors)
    assert all(s.dead and s.process is None for s in shells)


class BrokenBackend(HereBackend):
    def __init__(self, line: str) -> None:
        self.line = line

    def _build_ssh_command(self, command: str) -> tuple[list[str], list[str]]:
        return [self.line, "#", "%s"], [command]  # the shell's own command line is commented out


@pytest.mark.parametrize(
    "line",
    [
        "exit 3",  # ssh fails: nothing on stdout
        "echo 'Welcome to gpu01'; sleep 1",  # an rc file that prints: not the shell's first line
        "nonexistent-ssh-client-gpuhost",
    ],
)
def test_a_shell_that_does_not_start_is_gone_for_good(line: str) -> None:
    shell = remote_shell.RemoteShell(BrokenBackend(line))
    with pytest.raises(remote_shell.ShellGone) as gone:
        shell.run("true", timeout=10)
    assert not isinstance(gone.value, remote_shell.SshFailed)  # not ssh's 255: testinfra tries
    assert shell.dead and shell.process is None
    with pytest.raises(remote_shell.ShellGone):
        shell.run("true", timeout=10)


def test_ssh_failing_as_the_shell_starts_gives_its_own_words() -> None:
    refused = "echo 'ssh: connect to host gpu01 port 22: Connection refused' >&2; exit 255"
    shell = remote_shell.RemoteShell(BrokenBackend(refused))
    with pytest.raises(remote_shell.SshFailed) as failed:
        shell.run("true", timeout=10)
    assert failed.value.stderr == "ssh: connect to host gpu01 port 22: Connection refused\n"
    assert shell.dead and shell.process is None and shell.errors is None


def test_a_host_silent_at_first_contact_is_a_deadline() -> None:
    """The first command's own deadline bounds the connection: a host that never answers is a
    timed-out command, not a shell that waits for ever (or a second wait through testinfra)."""
    shell = remote_shell.RemoteShell(BrokenBackend("sleep 30"))
    started = time.monotonic()
    with pytest.raises(remote_shell.Deadline):
        shell.run("true", timeout=0.5)
    assert time.monotonic() - started < 3.0
    assert shell.dead and shell.process is None


class ReadyAfterFirstCommand(HereBackend):
    """A host that says it is ready only once the first command has come: a client that waited
    for the ready line before sending it would wait for ever."""

    def _build_ssh_command(self, command: str) -> tuple[list[str], list[str]]:
        # The token, the command and its end line are read here first, then handed to the loop.
        held = 'IFS= read -r t; IFS= read -r c; IFS= read -r e; { printf "%%s\\n" "$t" "$c" "$e"; exec cat; }'
        return [held + " | sh -c %s"], [command]


def test_the_first_command_goes_with_the_token_not_after_the_ready_line() -> None:
    """The first contact is one round trip: the shell's start and its first command."""
    shell = remote_shell.RemoteShell(ReadyAfterFirstCommand())
    try:
        assert shell.run("echo first", timeout=5) == (0, b"first\n", b"")
        assert shell.run("echo second", timeout=5) == (0, b"second\n", b"")
    finally:
        shell.close()


def test_the_shell_runs_here_as_on_a_host() -> None:
    """The loop itself, without SSH: exit status, both outputs, and the next command in step."""
    shell = remote_shell.RemoteShell(HereBackend())
    try:
        assert shell.run("sh -c 'echo out; echo err >&2; exit 7'", timeout=10) == (7, b"out\n", b"err\n")
        assert shell.run("printf 'x\\n\\ny'", timeout=10) == (0, b"x\n\ny", b"")
    finally:
        shell.close()


def test_the_token_is_in_no_command_line_on_the_host() -> None:
    """The markers' token comes on stdin: `ps` on the host shows the loop, not the token, so no
    other user there can forge an answer."""
    shell = remote_shell.RemoteShell(HereBackend())
    try:
        assert shell.token not in shell.command_line()
        assert shell.run("printf 'a\\n%s o\\nb' x", timeout=10) == (0, b"a\nx o\nb", b"")
        process = shell.process
        assert process is not None
        with open(f"/proc/{process.pid}/cmdline", "rb") as cmdline:
            assert shell.token.encode() not in cmdline.read()
    finally:
        shell.close()
