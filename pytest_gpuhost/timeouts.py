"""Timeouts for native calls that can hang (NVML, the docker SDK).

A hung driver call cannot be interrupted from Python, so the call runs in a daemon thread and
the caller stops waiting after the deadline. The thread is abandoned, not killed: that is the
best that can be done in-process, and it keeps the test run moving with a clear diagnosis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NativeCallTimeout(TimeoutError):
    """A native call did not return within its deadline."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not return within {seconds:g} s")
        self.what = what
        self.seconds = seconds


def call_with_timeout(
    fn: Callable[[], T], seconds: float, what: str, stop: threading.Event | None = None
) -> T:
    """Run ``fn()`` and return its result, or raise NativeCallTimeout after ``seconds`` (or as
    soon as ``stop`` is set: a background thread cannot be interrupted by Ctrl-C).

    Exceptions raised by ``fn`` are re-raised in the caller's thread unchanged.
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised below, in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"gpuhost:{what}", daemon=True)
    worker.start()
    if stop is None:
        worker.join(seconds)
    else:
        deadline = time.monotonic() + seconds
        while worker.is_alive() and not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            worker.join(min(left, 0.1))
    if worker.is_alive():
        raise NativeCallTimeout(what, seconds)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
