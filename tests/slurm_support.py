"""A real single-node Slurm on loopback for the health-check example: munged, slurmctld and
slurmd with a private configuration, key and state under one directory, stopped afterwards.

Debian's ``slurm-wlm`` and ``munge`` packages (``.ci/run`` installs them); root, since slurmd
runs as root on a real node too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "scontrol")


def slurm_or_skip() -> None:
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"needs Debian's slurm-wlm and munge ({', '.join(missing)} not found)")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs as root")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SlurmLab:
    """One node (this machine, named as ``hostname -s`` says) in a cluster of its own."""

    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    pids: list[int] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, health_check: Path, interval: int = 2) -> None:
        root = self.root
        for name in ("state", "spool", "log", "run"):
            (root / name).mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        key = root / "munge.key"
        subprocess.run(["mungekey", "-c", "-k", str(key), "-b", "1024"], check=True)
        key.chmod(0o400)
        munge = root / "munge.socket"
        subprocess.run(
            [
                "munged", f"--socket={munge}", f"--key-file={key}", f"--pid-file={root}/run/munged.pid",
                f"--log-file={root}/log/munged.log", f"--seed-file={root}/run/munge.seed", "--force",
            ],
            check=True,
        )  # fmt: skip
        self._remember("munged")
        ctld, slurmd = free_port(), free_port()
        self.conf.write_text(
            f"""ClusterName=gpuhosttest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/linear
MpiDefault=none
ReturnToService=2
HealthCheckProgram={health_check}
HealthCheckInterval={interval}
HealthCheckNodeState=ANY
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=1 RealMemory=100 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        subprocess.run(["slurmctld", "-f", str(self.conf), "-i"], check=True, env=self.env())
        self._remember("slurmctld")
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=self.env())
        self._remember("slurmd")

    def _remember(self, daemon: str) -> None:
        pid_file = self.root / "run" / f"{daemon}.pid"
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{daemon} wrote no pid file: {self.log(daemon)}")
            time.sleep(0.05)
        self.pids.append(int(pid_file.read_text().split()[0]))

    def log(self, daemon: str) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def show_node(self) -> str:
        result = subprocess.run(
            ["scontrol", "show", "node", self.node], capture_output=True, text=True, env=self.env()
        )
        return result.stdout + result.stderr

    def stop(self) -> None:
        """The daemons this lab started, by their pids, newest first."""
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()
