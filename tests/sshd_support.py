"""Real OpenSSH servers on loopback for the fleet tests: each its own host key, config and port.

A ``SshLab`` starts ``sshd -D`` processes in the foreground (Debian's ``openssh-server``), writes
a client key authorized for the current user and an ssh config naming each server as a host
alias (``node1`` ...), and stops everything it started, control masters included.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {seconds} s")


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuhost-test", "-f", str(path)], check=True
    )
    return path


@dataclass
class SshLab:
    """Loopback sshd servers and the client files that reach them."""

    root: Path
    user: str = field(default_factory=getpass.getuser)
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    client_options: dict[str, str] = field(default_factory=dict)  # more ssh_config lines per host

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.client_key = keygen(self.root / "id_ed25519")
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory

    def start(self, name: str, **overrides: str) -> int:
        """Start one server; ``name`` becomes its host alias in the ssh config. ``overrides`` are
        sshd_config options (``AllowStreamLocalForwarding="no"``)."""
        assert SSHD is not None
        host_key = keygen(self.root / f"host-{name}")
        port = free_port()
        options = {
            "ListenAddress": f"127.0.0.1:{port}",
            "HostKey": str(host_key),
            "AuthorizedKeysFile": str(self.authorized_keys),
            "PermitRootLogin": "prohibit-password",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "UsePAM": "no",
            "StrictModes": "no",  # the files live in a temporary directory
            "PidFile": "none",
            "MaxSessions": "64",
            "MaxStartups": "64",
            "LogLevel": "ERROR",
            **overrides,
        }
        argv = [SSHD, "-D", "-e", "-f", "/dev/null"]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        log = (self.root / f"sshd-{name}.log").open("wb")
        self.servers[name] = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        self.ports[name] = port
        wait_for_port(port)
        return port

    def closed(self, name: str) -> None:
        """An alias whose port nothing listens on: a host that refuses SSH."""
        self.ports[name] = free_port()

    def ssh_config(self, identity: bool = True) -> Path:
        """The client config: one ``Host`` block per alias; no known_hosts to trust or update."""
        blocks = []
        for name, port in self.ports.items():
            lines = [
                f"Host {name}",
                "  HostName 127.0.0.1",
                f"  Port {port}",
                f"  User {self.user}",
                "  IdentitiesOnly yes",
                "  StrictHostKeyChecking no",
                "  UserKnownHostsFile /dev/null",
                "  BatchMode yes",
                "  LogLevel ERROR",
            ]
            if identity:
                lines.append(f"  IdentityFile {self.client_key}")
            lines += [f"  {key} {value}" for key, value in self.client_options.items()]
            blocks.append("\n".join(lines))
        path = self.root / ("ssh_config" if identity else "ssh_config.nokey")
        path.write_text("\n\n".join(blocks) + "\n")
        return path

    def inventory(self, group: str, *names: str) -> Path:
        """An Ansible inventory (ini) whose ``group`` holds ``names``, reached as in ``ssh_config``."""
        common = (
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
        )
        lines = [f"[{group}]"]
        for name in names:
            lines.append(
                f"{name} ansible_host=127.0.0.1 ansible_port={self.ports[name]} ansible_user={self.user} "
                f"ansible_ssh_private_key_file={self.client_key} ansible_ssh_common_args='{common}'"
            )
        path = self.root / "inventory.ini"
        path.write_text("\n".join(lines) + "\n")
        return path

    def args(self, *names: str, identity: bool = True) -> list[str]:
        """testinfra's options that check ``names``."""
        return [
            "--hosts=" + ",".join(f"ssh://{n}" for n in names),
            f"--ssh-config={self.ssh_config(identity)}",
        ]

    def start_master(self, name: str, control: Path) -> None:
        """A control master for ``name`` as testinfra's first command leaves one: in the
        background, persisting 60 s after its last client."""
        options = ["ControlMaster=auto", "ControlPersist=60", f"ControlPath={control}"]
        argv = ["ssh", "-F", str(self.ssh_config())]
        for option in options:
            argv += ["-o", option]
        subprocess.run([*argv, name, "true"], check=True, timeout=30)

    def master_alive(self, name: str, control: Path) -> bool:
        ask = ["ssh", "-F", str(self.ssh_config()), "-o", f"ControlPath={control}", "-O", "check", name]
        return subprocess.run(ask, capture_output=True, timeout=10).returncode == 0

    def stop(self) -> None:
        """Stop the servers and the sessions they forked: the clients' control masters then exit."""
        for server in self.servers.values():
            for child in children(server.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            if server.poll() is None:
                server.terminate()
        for server in self.servers.values():
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def children(pid: int) -> list[int]:
    """The processes ``pid`` forked (one sshd per connection)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def sshd_or_skip() -> str:
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH (Debian: apt-get install openssh-server)")
    if os.geteuid() != 0 and not os.access("/run/sshd", os.W_OK):
        pytest.skip("sshd needs /run/sshd: run as root or create it")
    return SSHD
