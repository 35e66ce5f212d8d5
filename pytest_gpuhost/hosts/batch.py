"""Ask a remote host several things in one round trip.

A fact module reads a host one question at a time: ``read_text``, ``listdir``, ``run``. Over SSH
each question is a round trip and, on the host, a subshell, a coreutils ``timeout`` and the
command itself: on a loopback fleet about 3.7 ms of CPU per question, and a quick-tier host asks
about 27. A module that knows what it is about to ask names it first::

    with batched(host, Reads(files=(VERSION_FILE,), dirs=("/dev",))):
        ...  # the code as before: these reads are answered from the batch

The host answers every read in one command, with shell builtins where they do the job; inside
the block each answer is handed out once, to the thread that asked for the batch, and what the
block did not use is dropped when it ends, so a later read always asks the host again. A host
that cannot batch (the local machine, a host without the remote shell, a batch that failed) is
asked one question at a time, as before: a batch only saves time, never changes an answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pytest_gpuhost.hosts.host import DEFAULT_COMMAND_TIMEOUT, Host

Command = tuple[tuple[str, ...], float]  # argv and timeout, as ``Host.run`` takes them


@dataclass(frozen=True)
class Reads:
    """What a step is about to ask of a host, by the ``Host`` method that will ask it."""

    files: tuple[str, ...] = ()  # read_text
    dirs: tuple[str, ...] = ()  # listdir
    paths: tuple[str, ...] = ()  # exists
    links: tuple[str, ...] = ()  # readlink
    commands: tuple[Command, ...] = ()  # run

    def __add__(self, other: Reads) -> Reads:
        return Reads(
            self.files + other.files,
            self.dirs + other.dirs,
            self.paths + other.paths,
            self.links + other.links,
            self.commands + other.commands,
        )

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs or self.paths or self.links or self.commands)


# Scripts for ``sh -c`` made of shell builtins only, reading what cannot hang (sysfs attributes,
# /proc/PID/comm): a batch runs them in a subshell of its own shell, without the `timeout` and the
# `sh` that ``Host.run`` starts, two processes of the host's less each.
BUILTIN_SCRIPTS: set[str] = set()


def builtins_only(script: str) -> str:
    """``script``, marked as one that a batch may run in its own shell (``BUILTIN_SCRIPTS``)."""
    BUILTIN_SCRIPTS.add(script)
    return script


def command(argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> Reads:
    """The reads of one ``host.run(argv, timeout)``."""
    return Reads(commands=((tuple(argv), timeout),))


@contextlib.contextmanager
def batched(host: Host, reads: Reads, ahead: Reads | None = None, take_ahead: bool = False) -> Iterator[None]:
    """Within the block, ``host`` answers ``reads`` from one round trip where it can.

    ``ahead``: also asked in that round trip, for the host's next batch that says ``take_ahead``
    (any thread's): what a later step will ask, carried by an earlier one. That batch takes them
    all and uses those it asks for; a host that cannot batch asks them then, as ever."""
    preload = getattr(host, "preload", None)
    asks = reads or ahead or take_ahead
    batch = preload(reads, ahead, take_ahead) if callable(preload) and asks else None
    try:
        yield
    finally:
        if batch is not None:
            host.drop_preloaded(batch)  # type: ignore[attr-defined]
