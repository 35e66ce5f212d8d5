"""One long-lived shell per SSH host that runs the suite's commands one after the other.

testinfra's SSH backend starts ``sh -c "ssh ... HOST COMMAND"`` for every command: a local shell,
an ssh client that reads its config and joins the control master, and on the host a session
with a login shell. That costs about 11 ms of the controller's CPU per command (measured on
loopback, the server's share on top), and a quick-tier host runs about 35 commands: in a fleet
run, most of the controller's work. This shell is started once per host through testinfra's own
ssh command line (the same options, the same control master, so no new handshake); each command
is written to its stdin and runs with stdin from /dev/null; its stdout goes straight back, then a
marker line, its stderr (kept in a file: empty, it costs no process) and a line with its exit
status. The markers carry a random token the shell reads from its stdin, so it is in no command
line that other users of the host could read with `ps`.

The host's first command starts the shell and goes with the token, before the shell says it is
ready: the first contact is one ssh, not two, and one round trip, not two; ssh's stderr is kept, and an ssh that fails there (exit status 255) is ``SshFailed`` with its own words, from
which an unreachable host is diagnosed as from testinfra's. A host silent at first contact is a
``Deadline`` of that first command. Anything else unexpected (the shell does not start, ends,
sends something else, or a command outlives its deadline) ends the shell for good and hands that
command back: it and all later ones go through testinfra as before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

# Backends whose command line is ``ssh`` (or sshpass + ssh) and whose remote side is a shell.
SHELL_BACKENDS = ("ssh", "safe-ssh")
SSH_FAILED = 255  # ssh's own exit status: the connection or the login failed
# The remote loop. Its first line of input is a random token; a command is the lines up to a line
# that is the token. The answer is the command's stdout, "\nTOKEN o\n", its stderr, and
# "\nTOKEN STATUS\n". Builtins only, apart from the command and a `cat` for a stderr that is not
# empty: a process per command costs the host's CPU (about 1 ms each), and a host answers about 25
# commands. The temporary directory goes with the shell.
SCRIPT = r"""IFS= read -r t || exit 1
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
trap 'exit 1' HUP INT TERM PIPE
echo "$t ready"
while :; do
  c=
  while IFS= read -r l || exit 0; do
    [ "$l" = "$t" ] && break
    c="$c$l
"
  done
  (eval "$c") </dev/null 2>"$d/e"
  s=$?
  printf '\n%s o\n' "$t"
  [ ! -s "$d/e" ] || cat "$d/e"
  printf '\n%s %s\n' "$t" "$s"
done"""


# A batched command's answer is framed as a command's, with this tag before "o" and the status.
ITEM_TAG = "i "
# Stderr of a batched command goes to a file, sent back by builtins: a `cat` would be a process.
BATCH_PROLOGUE = (
    r"""gpuhost_err() { while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; done <"$d/i"; }"""
)
BATCH_ITEM = r"""{{ {command}
}} 2>"$d/i"; s=$?; printf '\n%s i o\n' "$t"; [ ! -s "$d/i" ] || gpuhost_err; printf '\n%s i %s\n' "$t" "$s"
"""


def batch_script(commands: Sequence[str]) -> str:
    """One command for the loop that runs ``commands`` and frames each one's answer."""
    return BATCH_PROLOGUE + "\n" + "".join(BATCH_ITEM.format(command=c) for c in commands)


class ShellGone(Exception):
    """The shell could not run the command; the caller runs it another way."""


class SshFailed(ShellGone):
    """ssh itself failed as the shell started (exit status 255): ``stderr`` holds its own words."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


class Deadline(Exception):
    """No complete answer before the deadline; the shell is ended."""


def supports(backend: Any) -> bool:
    """Whether ``backend`` is testinfra's plain SSH backend that this shell can stand in for."""
    return (
        getattr(backend, "NAME", None) in SHELL_BACKENDS
        and not getattr(backend, "sudo", False)  # sudo wraps each command: left to testinfra
        and callable(getattr(backend, "_build_ssh_command", None))
        and callable(getattr(backend, "result", None))
    )


class RemoteShell:
    """A ``sh`` on the host behind testinfra's ssh command line; one command at a time."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.buffer = bytearray()
        self.lock = threading.Lock()
        self.dead = False
        self.errors: IO[bytes] | None = None

    def command_line(self) -> str:
        """testinfra's own ssh command for the host, running this module's loop."""
        remote = shlex.join(["exec", "sh", "-c", SCRIPT, "gpuhost-shell"])
        cmd, args = self.backend._build_ssh_command(remote)
        return str(" ".join(cmd) % tuple(shlex.quote(str(a)) for a in args))

    def start(self, deadline: float, first: bytes = b"") -> subprocess.Popen[bytes]:
        """Start the shell and send it ``first`` (a framed command) at once, without waiting
        for its ready line: on a distant host that wait is a round trip. ``Deadline`` if the
        ready line did not come by ``deadline`` (the host's first contact: nothing else would
        answer sooner), ``SshFailed`` if ssh failed."""
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - ssh's stderr, kept until close()
        try:
            self.process = process = subprocess.Popen(
                self.command_line(),
                shell=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.errors,
                start_new_session=True,  # its own group: close() ends the shell and the ssh client together
            )
        except (
            OSError,
            AttributeError,
            TypeError,
            ValueError,
        ) as exc:  # no process, or testinfra's command line changed
            raise ShellGone(f"the remote shell cannot start: {exc}") from None
        try:
            assert process.stdin is not None
            process.stdin.write(f"{self.token}\n".encode() + first)
            process.stdin.flush()
            line = self._read_line(process, deadline)
        except (OSError, ValueError, ShellGone):
            self._raise_ssh_failure(process)
            raise ShellGone("the remote shell ended before it started") from None
        if line != f"{self.token} ready".encode():
            raise ShellGone(f"the remote shell did not start: {line[:200]!r}")
        return process

    def _raise_ssh_failure(self, process: subprocess.Popen[bytes]) -> None:
        """``SshFailed`` with ssh's stderr if the shell ended because ssh failed."""
        try:
            status = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return
        if status == SSH_FAILED and self.errors is not None:
            self.errors.seek(0)
            raise SshFailed(self.errors.read(1 << 16).decode(errors="replace")) from None

    def run(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        """Exit status, stdout and stderr of ``command``; ``ShellGone`` when the shell cannot run
        it or ended before it answered; ``Deadline`` when no answer came in ``timeout`` seconds."""
        return self._exchange(command, 0, timeout)[-1]

    def run_many(self, commands: Sequence[str], timeout: float) -> list[tuple[int, bytes, bytes]]:
        """Exit status, stdout and stderr of each of ``commands``, run one after the other in this
        shell's own process (no subshell each: they must be commands, not scripts that ``exit``
        or ``cd``), all in one round trip; errors as ``run``'s, for all of them at once."""
        return self._exchange(batch_script(commands), len(commands), timeout)[:-1]

    def _exchange(self, command: str, items: int, timeout: float) -> list[tuple[int, bytes, bytes]]:
        """Send one command; read the answers of its ``items`` batched commands, then its own."""
        if self.dead or not self.lock.acquire(blocking=False):
            raise ShellGone("busy or ended")  # a second thread on this host: testinfra runs it
        process = self.process
        deadline = time.monotonic() + timeout
        framed = f"{command}\n{self.token}\n".encode()
        try:
            if process is None:
                process = self.start(deadline, framed)
            else:
                if process.stdin is None or self.dead:  # closed by another thread meanwhile
                    raise ShellGone("ended")
                try:
                    process.stdin.write(framed)
                    process.stdin.flush()
                except (OSError, ValueError) as exc:  # ValueError: another thread closed it
                    raise ShellGone(f"the remote shell ended: {exc}") from None
            answers = [self._answer(process, deadline, ITEM_TAG) for _ in range(items)]
            answers.append(self._answer(process, deadline, ""))
            return answers
        except BaseException:
            self.close(grace=0.0)  # whatever happened mid-exchange, the stream is out of step
            if process is not None and process.stdout is not None:
                process.stdout.close()  # the reader closes it: a close under select would not wake it
            raise
        finally:
            self.lock.release()

    def _answer(
        self, process: subprocess.Popen[bytes], deadline: float, tag: str
    ) -> tuple[int, bytes, bytes]:
        """One framed answer: stdout, "\\nTOKEN {tag}o", stderr, "\\nTOKEN {tag}STATUS"."""
        token = self.token.encode()
        out, mark = self._read_frame(process, token, deadline)
        err, status = self._read_frame(process, token, deadline)
        prefix = tag.encode()
        if mark != prefix + b"o" or not status.startswith(prefix) or not status[len(prefix) :].isdigit():
            raise ShellGone(f"unexpected answer from the remote shell: {mark!r:.100} {status!r:.100}")
        return int(status[len(prefix) :]), out, err

    def _read_frame(
        self, process: subprocess.Popen[bytes], token: bytes, deadline: float
    ) -> tuple[bytes, bytes]:
        """What the shell sent before the next marker line, and the rest of that line."""
        return self._read_until(process, b"\n" + token + b" ", deadline), self._read_line(process, deadline)

    def _fill(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        """Read what the shell has sent, waiting at most until ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Deadline("no answer in time")
        try:
            assert process.stdout is not None
            fd = process.stdout.fileno()
            with selectors.DefaultSelector() as selector:
                selector.register(fd, selectors.EVENT_READ)
                if not selector.select(remaining):
                    raise Deadline("no answer in time")
            chunk = os.read(fd, 1 << 16)
        except (OSError, ValueError) as exc:
            raise ShellGone(f"the remote shell ended: {exc}") from None
        if not chunk:
            raise ShellGone("the remote shell ended")
        self.buffer += chunk

    def _read_line(self, process: subprocess.Popen[bytes], deadline: float) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            self._fill(process, deadline)
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line

    def _read_until(self, process: subprocess.Popen[bytes], marker: bytes, deadline: float) -> bytes:
        """What the shell sent before ``marker``; the marker is consumed too."""
        searched = 0
        while (end := self.buffer.find(marker, searched)) < 0:
            searched = max(0, len(self.buffer) - len(marker) + 1)  # a long output is scanned once
            self._fill(process, deadline)
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    def hang_up(self) -> None:
        """Close the shell's stdin: the remote loop exits and removes its files, then ssh ends."""
        self.dead = True
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def close(self, grace: float = 2.0) -> None:
        """Hang up and wait for the ssh client; its process group is killed if it lingers."""
        self.hang_up()
        process, self.process = self.process, None
        errors, self.errors = self.errors, None
        if errors is not None:
            errors.close()
        if process is None:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout is not None and self.lock.acquire(blocking=False):  # else a reader has it
            try:
                process.stdout.close()
            finally:
                self.lock.release()


def close_all(shells: list[RemoteShell], grace: float = 2.0) -> None:
    """Hang up every shell first, then wait: the hosts' round trips overlap instead of adding up,
    and shells still busy with a command get ``grace`` seconds in all, not each."""
    for shell in shells:
        shell.hang_up()
    deadline = time.monotonic() + grace
    for shell in shells:
        shell.close(grace=max(0.0, deadline - time.monotonic()))
