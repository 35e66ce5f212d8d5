#!/usr/bin/env python3
"""Runs one workload as a child and ends it within a second when its runner is gone.

The lifeline is this process's stdin: the runner (pytest) holds the other end, an attached
Docker stdin (``StdinOnce``: the daemon closes it when the runner's connection drops) or a pipe
of a host process. Whatever ends the runner, SIGKILL included, the kernel closes its end, this
process reads end-of-file and ends the child. No timer, and no cooperation of the workload.

Protocol: the runner writes one byte once it holds the lifeline (``arm``); a lifeline that is
never armed within ``--arm-timeout`` seconds means nobody watches, and the child is ended too.
A stdin that is a character device (``/dev/null``: a container started without the runner's
attach) gives no lifeline; the child then runs on its own deadline and this says so on stderr.

Standalone like the other workload scripts: standard library only, Python 3.8 and later.
Exit status: the child's, or 128 + signal; 125 when the lifeline was lost or never armed.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Any

EXIT_LOST = 125
GRACE_S = 0.8  # SIGTERM, then SIGKILL: well inside the 2 s promise
POLL_S = 0.05


def say(message: str) -> None:
    with_prefix = f"gpuhost-lifeline: {message}\n"
    try:
        sys.stderr.write(with_prefix)
        sys.stderr.flush()
    except OSError:
        pass


def stdin_is_a_lifeline() -> bool:
    """A pipe or a socket can close; /dev/null or a terminal cannot tell us anything."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class Lifeline(threading.Thread):
    """Reads stdin until end-of-file: ``armed`` on the first byte, ``lost`` at the end."""

    def __init__(self) -> None:
        super().__init__(name="lifeline", daemon=True)
        self.armed = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            while True:
                data = os.read(0, 4096)
                if not data:
                    break
                self.armed.set()
        except OSError:
            pass
        self.lost.set()


def end_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a short grace, SIGKILL; then whatever else runs in our group (the child's own
    children) is killed with us, unless we are a container's PID 1, whose exit ends them all."""
    child.terminate()
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    if child.poll() is None:
        child.kill()
        child.wait()
    if os.getpid() != 1 and os.getpgrp() == os.getpid():
        sys.stderr.flush()
        os.killpg(os.getpid(), signal.SIGKILL)


def unblock_stop_signals() -> None:
    """A signal mask survives exec: a runner that started us with SIGTERM blocked (some thread of
    it blocked signals when it forked) would leave us, and the workload, deaf to every stop."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def status_of(code: int | None) -> int:
    if code is None:
        return EXIT_LOST
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a workload that ends when its runner is gone.")
    parser.add_argument("--arm-timeout", type=float, default=30.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    unblock_stop_signals()  # before the child starts: it inherits our mask
    watched = stdin_is_a_lifeline()
    # Our own group: a runner that signals the group reaches the child too; stdin stays ours.
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def forward(signum: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    lifeline = Lifeline()
    if watched:
        lifeline.start()
    else:
        say("stdin is no lifeline (started without the runner's attach): the workload runs to its own end")
    started = time.monotonic()
    while child.poll() is None:
        if watched and lifeline.lost.is_set():
            say("the runner is gone (its end of stdin closed): ending the workload")
            end_child(child)
            return EXIT_LOST
        if watched and not lifeline.armed.is_set() and time.monotonic() - started > args.arm_timeout:
            say(f"the runner never took hold of the lifeline in {args.arm_timeout:g} s: ending the workload")
            end_child(child)
            return EXIT_LOST
        time.sleep(POLL_S)
    return status_of(child.returncode)


if __name__ == "__main__":
    sys.exit(main())
