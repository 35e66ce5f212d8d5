"""Ctrl-C wins in a fleet run too: a host that hangs in the middle of a command does not hold
pytest's exit, whether its facts are being gathered or prefetched in a background thread.

Real OpenSSH servers on loopback; the hung command is a stand-in first on one host's PATH that
never answers (its remote ``timeout`` would end it only after 30 s).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd_support import SshLab

PROMISE_S = 5.0  # from Ctrl-C to exit; the hung command alone would take 30 s


def hung_command(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A ``name`` that says it started and then hangs; its folder, and the file it touches."""
    bin_dir, started = tmp_path / "bin", tmp_path / f"{name}.started"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    (bin_dir / name).chmod(0o755)
    return bin_dir, started


@pytest.mark.parametrize(
    ("command", "phase"),
    [("nvidia-smi", "the fact gathering"), ("id", "the prefetch of the login user")],
    ids=["gathering", "prefetch"],
)
def test_ctrl_c_while_a_host_hangs_ends_the_run_at_once(
    lab: SshLab, tmp_path: Path, command: str, phase: str
) -> None:
    bin_dir, started = hung_command(tmp_path, command)
    lab.start("node1", SetEnv="SHLVL=1")
    lab.start("node2", SetEnv=f"SHLVL=1 PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    report = tmp_path / "run.json"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    argv += ["--gpuhost", "--gpuhost-tier", "quick", f"--gpuhost-json={report}", *lab.args("node1", "node2")]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not started.exists():
            proc.kill()
            pytest.fail(f"{phase} never ran {command} on node2:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.3)  # the run now waits on node2
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert took < PROMISE_S, f"pytest exited {took:.1f} s after Ctrl-C during {phase}\n{out[-2000:]}"
    assert "KeyboardInterrupt" in out
    assert "INTERNALERROR" not in out and "Traceback" not in out, out[-3000:]
