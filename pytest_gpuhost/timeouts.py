"""Timeouts for native calls that can hang (NVML, the docker SDK).

A hung driver call cannot be interrupted from Python, so the call runs in a daemon thread and
the caller stops waiting after the deadline. The thread is abandoned, not killed: that is the
best that can be done in-process, and it keeps the test run moving with a clear diagnosis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NativeCallTimeout(TimeoutError):
    """A native call did not return within its deadline."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not return within {seconds:g} s")
        self.what = what
        self.seconds = seconds


def call_with_timeout(fn: Callable[[], T], seconds: float, what: str) -> T:
    """Run ``fn()`` and return its result, or raise NativeCallTimeout after ``seconds``.

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
    worker.join(seconds)
    if worker.is_alive():
        raise NativeCallTimeout(what, seconds)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
