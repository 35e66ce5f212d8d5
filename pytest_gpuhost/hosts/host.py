"""One way to reach a host: run commands and read files, always with a timeout.

Every fact about a host is gathered through this interface so that the same code serves the
local machine and, later, remote hosts. ``LocalHost(root=...)`` reads files below another
root: the unit tests use it to replay the ``/proc`` and ``/sys`` captures of real GPU hosts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# The supported API (docs/api.md); everything else here is private and may change.
__all__ = ["DEFAULT_COMMAND_TIMEOUT", "CommandResult", "Host", "LocalHost"]

DEFAULT_COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class CommandResult:
    """What a command did. ``missing``: the executable was not found; ``unreachable``: the remote
    host's connection failed, ``stderr`` says why."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    missing: bool = False
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.missing and not self.unreachable

    def describe(self) -> str:
        """A one-line account of a failed command, for diagnoses."""
        cmd = " ".join(self.argv)
        if self.missing:
            return f"`{self.argv[0]}` is not installed or not on PATH"
        if self.unreachable:
            return f"`{cmd}` could not run: the host's connection failed: {self.stderr.strip()}"
        if self.timed_out:
            return f"`{cmd}` did not finish in time (hung driver or daemon?)"
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()
        last = tail[-1] if tail else "no output"
        return f"`{cmd}` exited with {self.returncode}: {last}"


class Host(Protocol):
    """The access that checks need to a host."""

    name: str

    def run(self, argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult: ...

    def read_text(self, path: str) -> str | None:
        """The file's text, or None if it does not exist. PermissionError propagates."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Entry names of a directory, sorted; empty if it does not exist."""
        ...

    def exists(self, path: str) -> bool: ...

    def readlink(self, path: str) -> str | None: ...


class LocalHost:
    """The machine pytest runs on."""

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.env = dict(env) if env is not None else None
        self.name = name or socket.gethostname() or "localhost"

    def _path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def run(self, argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        args = tuple(argv)
        try:
            proc = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env,
                stdin=subprocess.DEVNULL,
                errors="replace",
            )
        except FileNotFoundError as exc:
            return CommandResult(args, None, "", str(exc), missing=True)
        except PermissionError as exc:
            return CommandResult(args, None, "", str(exc), missing=True)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, str) else ""
            err = exc.stderr if isinstance(exc.stderr, str) else ""
            return CommandResult(args, None, out, err, timed_out=True)
        return CommandResult(args, proc.returncode, proc.stdout, proc.stderr)

    def read_text(self, path: str) -> str | None:
        try:
            return self._path(path).read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._path(path))

    def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(self._path(path))
        except OSError:
            return None


def pid_alive(pid: int) -> bool:
    """Whether a process of that number runs on this machine (another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process by that number
        return True
    return True


def end_process_group(process: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children, SIGKILL them
    after ``grace_s``, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(grace_s)
