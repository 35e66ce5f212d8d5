"""SIGTERM ends a run the way Ctrl-C does, so that every ``finally`` still removes its containers."""

from __future__ import annotations


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")


def install_sigterm_handler() -> None:
    """SIGTERM (a spot VM being evicted, a CI job cancelled) ends the run like Ctrl-C.

    pytest then unwinds: every container is removed in its ``finally``, the session fixtures
    sweep, and the JUnit report is still written with what completed.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
