"""What the burn's threads share: the JSON-lines output and the flag that stops them all."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any


class Output:
    """JSON lines to stdout, one writer at a time, flushed at once for the host side to follow."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.broken = False

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self.lock:
            if self.broken:
                return
            try:
                stream = self.stream or sys.stdout
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, OSError):
                self.broken = True


class StopFlag:
    """Why the run stops: the first reason given wins."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.lock = threading.Lock()

    def set(self, reason: str) -> None:
        with self.lock:
            if self.reason is None:
                self.reason = reason
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()
