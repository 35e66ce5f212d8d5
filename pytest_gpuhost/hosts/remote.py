"""Remote hosts through pytest-testinfra: ``pytest --gpuhost --hosts=ssh://user@gpu01,...``.

testinfra's own options (``--hosts``, ``--connection``, ``--ssh-config``, ``--ssh-identity-file``,
``--ansible-inventory``, ``--sudo``) choose the hosts; this module adapts each one to the ``Host``
protocol. testinfra runs commands without a timeout, so every command gets one twice: coreutils
``timeout`` on the remote side ends a hung ``nvidia-smi`` there, and a local deadline stops the
wait for a connection that hangs.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.model import GpuListing, HostFacts, KernelFacts, Precondition
from pytest_gpuhost.hosts import remote_shell
from pytest_gpuhost.hosts.batch import BUILTIN_SCRIPTS, Reads
from pytest_gpuhost.hosts.host import DEFAULT_COMMAND_TIMEOUT, CommandResult, Host
from pytest_gpuhost.hosts.remote_shell import SSH_FAILED, RemoteShell
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

if TYPE_CHECKING:
    import pytest

CHECK_REACHABLE = "test_host_reachable"
# Seconds the local side waits beyond the remote timeout: the SSH handshake and the kill grace.
CONNECT_GRACE = 20.0
# Exit statuses of coreutils `timeout`: the command ran out of time, or could not be started.
TIMED_OUT, NOT_EXECUTABLE, NOT_FOUND = 124, 126, 127
SSH_CONNECTIONS = ("ssh", "safe-ssh")
# Set by Ctrl-C (``stop_background_commands``): the hosts' background threads get no more answers.
_interrupted = threading.Event()
# testinfra's options, as its plugin names them (``config.option.<dest>``).
TESTINFRA_OPTIONS = (
    "connection",
    "ssh_config",
    "ssh_identity_file",
    "sudo",
    "sudo_user",
    "ansible_inventory",
    "force_ansible",
)


def is_remote(host: Host) -> bool:
    """Whether ``host`` is reached over a connection rather than being where pytest runs."""
    return bool(getattr(host, "remote", False))


class TestinfraHost:
    """A host that testinfra reaches; commands and file reads run as remote commands."""

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, backend_host: Any, name: str, spec: str) -> None:
        self.testinfra = backend_host
        self.name = name
        self.spec = spec
        self.remote = backend_host.backend.get_connection_type() != "local"
        # Commands go through one shell (remote_shell); testinfra runs those it cannot.
        self.shell = (
            RemoteShell(backend_host.backend) if remote_shell.supports(backend_host.backend) else None
        )
        self.connected = False
        # thread -> (what was asked, e.g. ("file", path)) -> (batch, answer): see preload
        self._preloaded: dict[int, dict[tuple[str, str], tuple[int, CommandResult]]] = {}
        self._batches = 0
        # Answers asked ahead for a later batch of any thread (``preload``'s ``ahead``).
        self._ahead: dict[tuple[str, str], CommandResult] = {}
        self._ahead_lock = threading.Lock()

    def run(self, argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        args = tuple(argv)
        command = self._command(args, timeout)
        preloaded = self._take(("run", command))
        if preloaded is not None:
            return preloaded
        background = threading.current_thread() is not threading.main_thread()
        if background and _interrupted.is_set():
            return CommandResult(args, None, "", "the run was interrupted", unreachable=True)
        try:
            out = self._run_in_shell(command, timeout + CONNECT_GRACE)
            if out is None:
                out = call_with_timeout(
                    lambda: self.testinfra.run(command),
                    timeout + CONNECT_GRACE,
                    f"{self.name}: {args[0]}",
                    stop=_interrupted if background else None,
                )
                self.connected = True
            rc, stdout, stderr = int(out.rc), _output(out, "stdout"), _output(out, "stderr")
        except (NativeCallTimeout, remote_shell.Deadline):
            return CommandResult(args, None, "", f"no answer from {self.name} in time", timed_out=True)
        except Exception as exc:  # testinfra raises for a connection that fails (ssh exits 255)
            return CommandResult(args, None, "", connection_error_text(exc), unreachable=True)
        return command_result(args, rc, stdout, stderr)

    @staticmethod
    def _command(args: tuple[str, ...], timeout: float) -> str:
        """``args`` bounded by coreutils ``timeout`` on the host."""
        return f"timeout -k 5 {max(1, int(timeout + 0.999))} {shlex.join(args)}"

    # -- batches (hosts/batch.py) -------------------------------------------------------------

    def preload(self, reads: Reads, ahead: Reads | None = None, take_ahead: bool = False) -> int | None:
        """Answer ``reads`` in one round trip and keep the answers for this thread; the batch's
        id for ``drop_preloaded``, or None when this host asks one question at a time.

        ``ahead`` is asked in the same round trip for the one later batch that takes it
        (``take_ahead``, in any thread): a fleet host's facts carry what its prefetch will ask
        first, so that round trip is saved. A batch that takes them drops what it did not ask for.
        """
        if self.shell is None or not self.connected or _interrupted.is_set():
            return None
        kept = self._preloaded.setdefault(threading.get_ident(), {})
        taken: dict[tuple[str, str], CommandResult] = {}
        if take_ahead:
            with self._ahead_lock:
                taken, self._ahead = self._ahead, {}
        needed = [item for item in batch_items(reads, self._command) if item.key not in kept]
        later = batch_items(ahead, self._command) if ahead else []
        wanted = {item.key: item for item in [*needed, *later] if item.key not in taken}  # once each
        answers = dict(taken)
        if wanted:
            budget = sum(item.seconds for item in wanted.values()) + CONNECT_GRACE
            try:
                results = self.shell.run_many([item.remote for item in wanted.values()], budget)
            except (remote_shell.ShellGone, remote_shell.Deadline):
                return None  # each read asks on its own (through testinfra if the shell ended)
            for item, (rc, stdout, stderr) in zip(wanted.values(), results, strict=True):
                answers[item.key] = command_result(item.argv, rc, _text(stdout), _text(stderr))
        if later:
            with self._ahead_lock:
                self._ahead.update((item.key, answers[item.key]) for item in later)
        if not needed:
            return None  # an enclosing batch of this thread holds every answer
        self._batches += 1
        for item in needed:
            kept[item.key] = (self._batches, answers[item.key])
        return self._batches

    def drop_preloaded(self, batch: int) -> None:
        """Forget the answers of ``batch`` that were not asked for: later reads ask the host."""
        kept = self._preloaded.get(threading.get_ident(), {})
        for key in [key for key, (number, _) in kept.items() if number == batch]:
            del kept[key]

    def _take(self, key: tuple[str, str]) -> CommandResult | None:
        """A preloaded answer for this thread, handed out once."""
        kept = self._preloaded.get(threading.get_ident())
        found = kept.pop(key, None) if kept else None
        return found[1] if found is not None else None

    def _run_in_shell(self, command: str, deadline: float) -> Any:
        """testinfra's result of ``command`` run by the host's shell; None: let testinfra run it.
        The host's first command starts the shell, and an ssh that fails there fails the command
        with its own words, as testinfra's ssh would."""
        if self.shell is None:
            return None
        backend = self.testinfra.backend
        try:
            rc, stdout, stderr = self.shell.run(backend.get_command(command), deadline)
        except remote_shell.SshFailed as failed:  # answered below as testinfra's ssh would
            rc, stdout, stderr = SSH_FAILED, b"", failed.stderr.encode()
        except remote_shell.ShellGone:
            return None
        result = backend.result(rc, backend.encode(command), stdout, stderr)
        if rc == SSH_FAILED:  # what testinfra's ssh backend makes of 255, for the same diagnosis
            raise RuntimeError(result)
        self.connected = True
        return result

    def close(self) -> None:
        if self.shell is not None:
            self.shell.close()

    def read_text(self, path: str) -> str | None:
        result = self._take(("file", path)) or self.run(["cat", "--", path])
        if result.ok:
            return result.stdout
        if "Permission denied" in result.stderr:
            raise PermissionError(f"{self.name}:{path}: {result.stderr.strip()}")
        return None

    def listdir(self, path: str) -> list[str]:
        result = self._take(("dir", path)) or self.run(["sh", "-c", LIST_SCRIPT, "sh", path])
        return sorted(line for line in result.stdout.splitlines() if line) if result.ok else []

    def exists(self, path: str) -> bool:
        result = self._take(("path", path)) or self.run(["sh", "-c", EXISTS_SCRIPT, "sh", path])
        return result.ok

    def readlink(self, path: str) -> str | None:
        result = self._take(("link", path)) or self.run(["readlink", "--", path])
        return result.stdout.strip() or None if result.ok else None


def command_result(args: tuple[str, ...], rc: int, stdout: str, stderr: str) -> CommandResult:
    """What coreutils ``timeout``'s exit status says about ``args``."""
    if rc == TIMED_OUT:
        return CommandResult(args, None, stdout, stderr, timed_out=True)
    if rc in (NOT_FOUND, NOT_EXECUTABLE) and "timeout: failed to run command" in stderr:
        return CommandResult(args, None, stdout, stderr, missing=True)
    return CommandResult(args, rc, stdout, stderr)


def _text(data: bytes) -> str:
    """A command's output as text; bytes that are not UTF-8 are replaced, not a reason to fail."""
    return data.decode("utf-8", errors="replace")


def _output(result: Any, stream: str) -> str:
    """testinfra's ``stdout`` or ``stderr`` as ``_text`` decodes it (testinfra's own decoding
    raises for bytes that are not UTF-8)."""
    raw = getattr(result, f"{stream}_bytes", None)
    return _text(raw) if isinstance(raw, bytes) else str(getattr(result, stream))


EXISTS_SCRIPT = 'test -e "$1" || test -L "$1"'  # a dangling link exists too, as os.path.lexists says
# A directory's entries by the shell's own globbing, one per line; none for a file, as
# os.listdir raises for one (`ls` would print the file's own name).
LIST_SCRIPT = (
    'for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do '
    'if [ -e "$f" ] || [ -L "$f" ]; then printf "%s\\n" "${f##*/}"; fi; done; [ -d "$1" ]'
)
READ_SECONDS = 5.0  # what a batch allows a file read (no `timeout` of its own: that is a process)


@dataclass(frozen=True)
class BatchItem:
    """One read of a batch: how the host method looks it up, and how the host answers it."""

    key: tuple[str, str]
    argv: tuple[str, ...]  # the command the answer is reported as
    remote: str
    seconds: float


def batch_items(reads: Reads, bounded: Callable[[tuple[str, ...], float], str]) -> list[BatchItem]:
    """The host's commands for ``reads``: file, directory and path reads by builtins or one
    process; commands as ``run`` sends them (``bounded``), so that each keeps its own timeout."""
    items: dict[tuple[str, str], BatchItem] = {}

    def add(key: tuple[str, str], argv: tuple[str, ...], remote: str, seconds: float = READ_SECONDS) -> None:
        items.setdefault(key, BatchItem(key, argv, remote, seconds))

    for path in reads.files:
        add(("file", path), ("cat", "--", path), shlex.join(["cat", "--", path]))
    # A script of builtins runs in the batch's own shell, not in a `sh` of its own.
    for path in reads.dirs:
        add(
            ("dir", path), ("sh", "-c", LIST_SCRIPT, "sh", path), f"set -- {shlex.quote(path)}; {LIST_SCRIPT}"
        )
    for path in reads.paths:
        add(
            ("path", path),
            ("sh", "-c", EXISTS_SCRIPT, "sh", path),
            f"set -- {shlex.quote(path)}; {EXISTS_SCRIPT}",
        )
    for path in reads.links:
        add(("link", path), ("readlink", "--", path), shlex.join(["readlink", "--", path]))
    for argv, timeout in reads.commands:
        command = bounded(argv, timeout)
        add(("run", command), argv, _builtin_script(argv) or command, timeout + 5)
    return list(items.values())


def _builtin_script(argv: tuple[str, ...]) -> str | None:
    """``sh -c SCRIPT [NAME ARGS...]`` of a ``builtins_only`` script as a subshell of the batch's
    shell (its variables stay there); None for any other command."""
    if len(argv) < 3 or argv[:2] != ("sh", "-c") or argv[2] not in BUILTIN_SCRIPTS:
        return None
    return f"( set -- {shlex.join(argv[4:])}; {argv[2]}\n)"


def connection_error_text(exc: BaseException) -> str:
    """The SSH client's own words: testinfra raises ``RuntimeError(CommandResult)`` for exit 255."""
    arg = exc.args[0] if exc.args else exc
    stderr = getattr(arg, "stderr", None)
    if isinstance(stderr, str) and stderr.strip():
        return stderr.strip()
    return f"{type(exc).__name__}: {exc}"


def _option(config: pytest.Config, name: str) -> Any:
    return getattr(config.option, name, None)


def host_specs(config: pytest.Config) -> list[str]:
    """The ``--hosts`` list of testinfra, or empty when it is not given (or testinfra not loaded)."""
    hosts = _option(config, "hosts")
    return [spec.strip() for spec in str(hosts).split(",") if spec.strip()] if hosts else []


def allow_background_commands() -> None:
    """A new run (pytester runs several in one process): background threads may ask again."""
    _interrupted.clear()


def stop_background_commands(hosts: Sequence[Host]) -> None:
    """Ctrl-C: the threads that gather the hosts' facts (or prefetch them) get no more answers, and
    the remote shells end, so that the commands in flight end too. pytest then exits at once
    instead of waiting for them at interpreter exit; the main thread's cleanup still runs its
    commands (through testinfra)."""
    _interrupted.set()
    for host in hosts:
        shell = getattr(host, "shell", None)
        if isinstance(shell, RemoteShell):
            shell.close(grace=0.0)


def control_dir() -> str:
    """Where the SSH control sockets live: one connection per host serves every command."""
    path = os.path.join(tempfile.gettempdir(), f"gpuhost-ssh-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def control_path(spec: str, kwargs: dict[str, Any]) -> str:
    """A control socket per host and client settings. Named by a hash, not ssh's ``%C``: testinfra
    puts the path through %-formatting."""
    key = repr((spec, kwargs.get("ssh_config"), kwargs.get("ssh_identity_file"), kwargs.get("sudo")))
    return os.path.join(control_dir(), hashlib.sha256(key.encode()).hexdigest()[:20])


def host_name(backend: Any) -> str:
    """The host's name from its spec; with the port when one is given, so that two sshd on one
    address stay apart."""
    name = str(backend.get_hostname())
    port = getattr(getattr(backend, "host", None), "port", None)
    return f"{name}:{port}" if port else name


def ansible_over_ssh(backend_host: Any, spec: str, kwargs: dict[str, Any]) -> Any:
    """An Ansible inventory host reached by SSH, as testinfra's SSH host with our control socket.

    testinfra derives that SSH host from the inventory anew for every command, without a control
    socket unless ansible.cfg names one: each command would open a connection of its own.
    """
    backend = backend_host.backend
    if getattr(backend, "NAME", None) != "ansible" or getattr(backend, "force_ansible", False):
        return backend_host
    resolved = backend.ansible_runner.get_host(
        backend.host, ssh_config=backend.ssh_config, ssh_identity_file=backend.ssh_identity_file
    )
    ssh_backend: Any = getattr(resolved, "backend", None)
    if getattr(ssh_backend, "NAME", None) not in SSH_CONNECTIONS:
        return backend_host  # a local, docker or lxc inventory host: testinfra's own path
    if not ssh_backend.controlpath and "controlpath" not in str(ssh_backend.ssh_extra_args or "").lower():
        ssh_backend.controlpath = control_path(f"{spec}#{backend.host}", kwargs)
    return resolved


def hosts_from_config(config: pytest.Config) -> list[Host]:
    """One ``TestinfraHost`` per host that ``--hosts`` names (an Ansible group gives several)."""
    import testinfra
    from testinfra.backend import parse_hostspec

    hosts: list[Host] = []
    common = {name: _option(config, name) for name in TESTINFRA_OPTIONS}
    for spec in host_specs(config):
        kwargs = dict(common)
        connection = parse_hostspec(spec)[1].get("connection") or kwargs["connection"]
        extra = str(_option(config, "ssh_extra_args") or "")
        if connection in SSH_CONNECTIONS and "controlpath" not in extra.lower():
            kwargs["controlpath"] = control_path(spec, kwargs)
        if extra:
            kwargs["ssh_extra_args"] = extra
        for backend_host in testinfra.get_hosts([spec], **kwargs):
            name = host_name(backend_host.backend)
            hosts.append(TestinfraHost(ansible_over_ssh(backend_host, spec, kwargs), name, spec))
    shells = [h.shell for h in hosts if isinstance(h, TestinfraHost) and h.shell is not None]
    config.add_cleanup(lambda: remote_shell.close_all(shells))
    names = [h.name for h in hosts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        from pytest_gpuhost.options import UsageError

        raise UsageError(f"--hosts names {', '.join(duplicates)} more than once")
    return hosts


# -- reachability ------------------------------------------------------------------------------


def diagnose_connection(host: Host, error: str) -> Diagnosis:
    """What a failed SSH connection means and what fixes it, from the client's message."""
    where = getattr(host, "spec", host.name)
    lowered = error.lower()
    last = error.strip().splitlines()[-1] if error.strip() else "no output"
    if "are too open" in lowered:
        key = error.split("for '", 1)[1].split("'", 1)[0] if "for '" in error else "<identity file>"
        return Diagnosis(
            f"{host.name}: SSH refuses the identity file {key}: its permissions are too open",
            "ssh ignores a private key that other users can read, and then has no key to log in with",
            f"`chmod 600 {key}`",
        )
    if "permission denied" in lowered:
        return Diagnosis(
            f"{host.name}: SSH login refused ({last})",
            "the user in the host spec is wrong, or the key is not in that user's authorized_keys",
            f"check the user (ssh://USER@host) and the key (--ssh-identity-file); `ssh -v {where.split('://')[-1]}` "
            "shows which keys are offered; `ssh-copy-id` installs one",
        )
    if "connection refused" in lowered:
        return Diagnosis(
            f"{host.name}: SSH connection refused ({last})",
            "no SSH server listens on that address and port, or the host is still booting",
            "`sudo systemctl status ssh` on the host; check the port in the spec or the ssh config",
        )
    if "could not resolve" in lowered or "name or service not known" in lowered:
        return Diagnosis(
            f"{host.name}: the host name does not resolve ({last})",
            "a typo in --hosts, or the name is missing from DNS, /etc/hosts or the ssh config",
            "check the name; `getent hosts NAME`; or give the address in the spec",
        )
    if "host key verification failed" in lowered or "identification has changed" in lowered:
        return Diagnosis(
            f"{host.name}: the SSH host key is unknown or changed ({last})",
            "the host is new to this machine's known_hosts, or was reinstalled",
            f"`ssh-keygen -R NAME` then `ssh {where.split('://')[-1]}` once to accept the key, "
            "or `StrictHostKeyChecking accept-new` in the ssh config",
        )
    if "timed out" in lowered or "no answer" in lowered:
        return Diagnosis(
            f"{host.name}: no answer over SSH ({last})",
            "the host is down, unreachable from here, or a firewall drops the connection",
            "`ping` the host; check its console; `ssh -v` shows where the connection stops",
        )
    return Diagnosis(
        f"{host.name}: cannot run commands over the connection ({last})",
        "the connection or the remote shell fails",
        f"run `ssh -v {where.split('://')[-1]} true` by hand: it shows the same error",
    )


def probe_reachable(host: Host, timeout: float) -> tuple[Precondition, Diagnosis | None]:
    """Run ``true`` on the host: the connection, the login and coreutils ``timeout`` must work."""
    if not is_remote(host):
        return Precondition("reachable", ok=True, check=CHECK_REACHABLE), None
    result = host.run(["true"], timeout=timeout)
    if result.ok:
        return Precondition("reachable", ok=True, check=CHECK_REACHABLE), None
    if result.missing:
        diagnosis = Diagnosis(
            f"{host.name}: coreutils `timeout` cannot run `true`: {result.stderr.strip()}",
            "the host lacks coreutils, which the suite uses to bound every remote command",
            "install coreutils on the host (`apt-get install coreutils`)",
        )
    elif result.returncode is not None and "timeout:" in result.stderr:
        diagnosis = Diagnosis(
            f"{host.name}: the remote shell has no coreutils `timeout`: {result.stderr.strip()}",
            "the suite bounds every remote command with coreutils `timeout`",
            "install coreutils on the host",
        )
    else:
        diagnosis = diagnose_connection(host, result.stderr or result.describe())
    return Precondition("reachable", ok=False, check=CHECK_REACHABLE, reason=diagnosis.found), diagnosis


def unreachable_facts(name: str, reachable: Precondition) -> HostFacts:
    """Facts of a host that cannot be reached: every precondition fails with the connection's reason."""
    nothing = KernelFacts(frozenset(), None, reachable.reason, None, frozenset())
    preconditions = {
        need: Precondition(need, ok=False, check=reachable.check, reason=reachable.reason)
        for need in ("gpu_present", "driver", "nvml", "nvidia_smi", "gpu_listing", "telemetry")
    }
    preconditions["reachable"] = reachable
    return HostFacts(
        name,
        (),
        nothing,
        GpuListing("nvml", ok=False, error=reachable.reason, error_kind="unreachable"),
        GpuListing("nvidia-smi", ok=False, error=reachable.reason, error_kind="unreachable"),
        preconditions,
    )
