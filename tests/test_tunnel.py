"""The Docker tunnel on the host's control master: one SSH connection per host, not two.

Real OpenSSH servers on loopback stand in for the hosts, and this machine's Docker daemon for
theirs (the loopback "host" is this machine).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from docker_support import docker_client_or_skip
from pytester_support import GpuhostPytester
from sshd_support import SshLab

from pytest_gpuhost.hosts import ssh_mux
from pytest_gpuhost.hosts.host import LocalHost
from pytest_gpuhost.hosts.remote import TestinfraHost
from pytest_gpuhost.hosts.tunnel import DockerTunnel, master_control_path


def ping(url: str) -> bool:
    import docker

    client = docker.DockerClient(base_url=url, version="1.24", timeout=10)
    try:
        return bool(client.ping())
    finally:
        client.close()


def test_the_control_path_is_known_only_where_the_plugin_named_it() -> None:
    import testinfra

    def host(spec: str, **kwargs: str) -> TestinfraHost:
        return TestinfraHost(testinfra.get_host(spec, **kwargs), "gpu01", spec)

    assert master_control_path(host("ssh://gpu01", controlpath="/tmp/gpuhost-ssh-0/abc")) == (
        "/tmp/gpuhost-ssh-0/abc"
    )
    # The user's own control options decide where the master is, if any: no forwarding on it.
    mine = host("ssh://gpu01", controlpath="/tmp/x", ssh_extra_args="-o ControlPath=/tmp/mine")
    assert master_control_path(mine) is None
    assert master_control_path(host("ssh://gpu01")) is None
    assert master_control_path(host("local://")) is None


def test_the_tunnel_rides_the_hosts_control_master(lab: SshLab, tmp_path: Path) -> None:
    docker_client_or_skip()
    lab.start("node1")
    config, control = lab.ssh_config(), tmp_path / "ctl"
    lab.start_master("node1", control)
    base = ["ssh", "-F", str(config), "node1"]
    master = ["ssh", "-o", "ControlMaster=no", "-o", f"ControlPath={control}", "-F", str(config), "node1"]
    tunnel = DockerTunnel(LocalHost(name="node1"), base, "/var/run/docker.sock", master)
    try:
        tunnel.open(timeout=10)
        assert tunnel.on_master and tunnel.process is None  # no ssh of its own
        assert ping(tunnel.url)
    finally:
        tunnel.close()
    assert not Path(tunnel.directory).exists()
    assert lab.master_alive("node1", control)  # cancelled on the master, which the host's commands keep
    # The forwarding is gone from the master: the same path may be forwarded again.
    again = DockerTunnel(LocalHost(name="node1"), base, "/var/run/docker.sock", master)
    try:
        again.open(timeout=10)
        assert again.on_master and ping(again.url)
    finally:
        again.close()


def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_the_master_is_asked_over_its_control_socket_not_by_ssh_o(
    lab: SshLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening and cancelling the forwarding start no process (``ssh -O`` would be two per host)."""
    docker_client_or_skip()
    lab.start("node1")
    config, control = lab.ssh_config(), tmp_path / "ctl"
    lab.start_master("node1", control)
    base = ["ssh", "-F", str(config), "node1"]
    master = ["ssh", "-o", "ControlMaster=no", "-o", f"ControlPath={control}", "-F", str(config), "node1"]
    tunnel = DockerTunnel(LocalHost(name="node1"), base, "/var/run/docker.sock", master, str(control))
    with monkeypatch.context() as patched:
        no_processes(patched)
        try:
            tunnel.open(timeout=10)
            assert tunnel.on_master and ping(tunnel.url)
        finally:
            tunnel.close()
    assert lab.master_alive("node1", control)
    # Cancelled for real: the master listens on the same path again when asked, and only then.
    os.mkdir(tunnel.directory)
    try:
        ssh_mux.open_forward(str(control), tunnel.local_socket, "/var/run/docker.sock", 10)
        assert ping(tunnel.url)
        ssh_mux.close_forward(str(control), tunnel.local_socket, "/var/run/docker.sock", 10)
        with pytest.raises(ssh_mux.MuxError, match="failure: port not forwarded"):
            ssh_mux.close_forward(str(control), tunnel.local_socket, "/var/run/docker.sock", 10)
    finally:
        shutil.rmtree(tunnel.directory, ignore_errors=True)


def serve_once(path: Path, answer: bytes) -> threading.Thread:
    """A unix socket at ``path`` that answers its first client ``answer`` and hangs up."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # hangs up
        b"SSH-2.0-OpenSSH_9.2\r\n",  # something else listens there
        struct.pack(">III", 8, 1, 3),  # a master of protocol version 3
        struct.pack(">I", 1 << 30),  # a length no master sends
    ],
)
def test_what_is_not_a_master_is_a_mux_error(tmp_path: Path, answer: bytes) -> None:
    path = tmp_path / "ctl"
    thread = serve_once(path, answer)
    with pytest.raises(ssh_mux.MuxError):
        ssh_mux.open_forward(str(path), str(tmp_path / "l.sock"), "/var/run/docker.sock", 5)
    thread.join(timeout=5)
    with pytest.raises(ssh_mux.MuxError, match="No such file"):
        ssh_mux.open_forward(str(tmp_path / "none"), str(tmp_path / "l.sock"), "/r.sock", 5)


def test_a_control_socket_that_fails_leaves_the_forwarding_to_ssh_o(lab: SshLab, tmp_path: Path) -> None:
    docker_client_or_skip()
    lab.start("node1")
    config, control = lab.ssh_config(), tmp_path / "ctl"
    lab.start_master("node1", control)
    base = ["ssh", "-F", str(config), "node1"]
    master = ["ssh", "-o", "ControlMaster=no", "-o", f"ControlPath={control}", "-F", str(config), "node1"]
    broken = tmp_path / "broken"
    serve_once(broken, b"")
    tunnel = DockerTunnel(LocalHost(name="node1"), base, "/var/run/docker.sock", master, str(broken))
    try:
        tunnel.open(timeout=10)
        assert tunnel.on_master and tunnel.process is None and ping(tunnel.url)
    finally:
        tunnel.close()
    assert not Path(tunnel.directory).exists()


def test_without_a_master_the_tunnel_makes_its_own_connection(lab: SshLab, tmp_path: Path) -> None:
    docker_client_or_skip()
    lab.start("node1")
    config = lab.ssh_config()
    master = ["ssh", "-o", "ControlMaster=no", "-o", f"ControlPath={tmp_path / 'none'}", "node1"]
    base = ["ssh", "-F", str(config), "node1"]
    tunnel = DockerTunnel(LocalHost(name="node1"), base, "/var/run/docker.sock", master)
    try:
        tunnel.open(timeout=10)
        assert not tunnel.on_master
        assert tunnel.process is not None and tunnel.process.poll() is None
        assert ping(tunnel.url)
    finally:
        tunnel.close()
    assert not Path(tunnel.directory).exists()


def test_a_fleet_host_costs_one_ssh_connection(
    gpuhost_pytester: GpuhostPytester, lab: SshLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ssh client of the run, logged by a stand-in first on PATH: each host's Docker
    checks reach its daemon through a forwarding on its master, asked over its control socket:
    no ssh of the tunnel's own, and no ``ssh -O`` either."""
    docker_client_or_skip()
    bin_dir, log = tmp_path / "bin", tmp_path / "ssh.log"
    bin_dir.mkdir()
    real_ssh = subprocess.run(["sh", "-c", "command -v ssh"], capture_output=True, text=True).stdout.strip()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real_ssh} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for node in ("node1", "node2"):
        lab.start(node)
    result = gpuhost_pytester.runpytest(
        "-p", "testinfra.plugin", "--gpuhost", "--gpuhost-tier", "quick", "-v",
        "-k", "test_host_reachable or test_docker_daemon_answers", *lab.args("node1", "node2"),
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        ["*test_docker_daemon_answers?node1? PASSED*", "*test_docker_daemon_answers?node2? PASSED*"]
    )
    clients = log.read_text().splitlines()
    assert not [c for c in clients if "ControlPath=none" in c], "a tunnel made a connection of its own"
    assert not [c for c in clients if " -O " in c], "the master was asked through ssh -O"


def test_the_remote_socket_is_the_docker_clis_own_and_asked_of_it_only_when_configured(
    tmp_path: Path,
) -> None:
    """The real docker CLI behind a logging wrapper: untouched without any configuration (its
    default socket), asked when DOCKER_HOST or a current context may point elsewhere."""
    import shutil

    from pytest_gpuhost.hosts.tunnel import remote_socket_path

    real = shutil.which("docker")
    if real is None:
        pytest.skip("needs the docker CLI")
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.log"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}

    assert remote_socket_path(LocalHost(env=env), 10) == "/var/run/docker.sock"
    assert not log.exists()
    with_host = {**env, "DOCKER_HOST": "unix:///run/other/docker.sock"}
    assert remote_socket_path(LocalHost(env=with_host), 10) == "/run/other/docker.sock"
    config = tmp_path / "docker-config"
    create = ["docker", "context", "create", "rootless", "--docker", "host=unix:///run/user/1000/docker.sock"]
    subprocess.run(create, env={**env, "DOCKER_CONFIG": str(config)}, check=True, capture_output=True)
    subprocess.run(
        ["docker", "context", "use", "rootless"], env={**env, "DOCKER_CONFIG": str(config)}, check=True,
        capture_output=True,
    )  # fmt: skip
    in_context = {**env, "DOCKER_CONFIG": str(config)}
    assert remote_socket_path(LocalHost(env=in_context), 10) == "/run/user/1000/docker.sock"
    assert len([line for line in log.read_text().splitlines() if line.startswith("context inspect")]) == 2
