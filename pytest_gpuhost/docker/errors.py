"""Every way a Docker call can fail, as one diagnosis; and cleanup that cannot hang or mask.

The SDK raises its own ``APIError`` for an answer it did not like, but a daemon that is killed,
frozen or restarted mid-run surfaces as ``requests``/``urllib3`` exceptions (``ReadTimeout``,
``ConnectionError``, ``ProtocolError``) or a bare ``OSError``. Call sites wrap their Docker calls
in ``mapped()`` so that the user sees what the daemon did, never that library's traceback.

Cleanup after a failure (removing a container, the session's sweep) goes through ``cleanup()``:
bounded by a short deadline, silent on failure, and skipped at once once the daemon has been seen
hung, so the first real error (or the user's Ctrl-C) is what is reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

if TYPE_CHECKING:
    import docker

T = TypeVar("T")
CLEANUP_SECONDS = 10.0
RESTART_FIX = "`sudo systemctl status docker`; `sudo journalctl -u docker -n 100` tells why; `sudo systemctl restart docker`"
HUNG_CAUSE = (
    "the daemon is hung or overloaded (a frozen dockerd, a stuck storage driver or containerd, a full disk)"
)

_hung_lock = threading.Lock()
_hung: set[int] = set()  # id() of clients whose daemon stopped answering


class DaemonFault(Exception):
    """A Docker call failed below the API (timeout, lost connection) or with an HTTP error."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(str(diagnosis))
        self.diagnosis = diagnosis


def daemon_faults() -> tuple[type[Exception], ...]:
    """The exception types a Docker call can raise when the daemon misbehaves."""
    import docker
    import requests
    import urllib3

    return (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        urllib3.exceptions.HTTPError,
        NativeCallTimeout,
        OSError,
    )


def transport_faults() -> tuple[type[Exception], ...]:
    """The SDK's and its HTTP stack's own exceptions: never a check's own error."""
    import docker
    import requests
    import urllib3

    return (docker.errors.DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError)


def is_timeout(exc: BaseException) -> bool:
    import requests
    import urllib3

    if isinstance(exc, (NativeCallTimeout, requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)):
        return True
    return "timed out" in str(exc).lower()


def short_message(exc: BaseException) -> str:
    """The exception's own words without the pool's boilerplate (``HTTPConnectionPool(...)``)."""
    import docker

    if isinstance(exc, docker.errors.APIError):
        code = exc.status_code
        text = str(exc.explanation or exc)
        return f"HTTP {code}: {text}" if code else text
    text = str(exc) or type(exc).__name__
    if "): " in text and "ConnectionPool(" in text:
        text = text.split("): ", 1)[1]
    text = text.strip(" ()'\"")
    return f"{type(exc).__name__}: {text}"[:300]


def diagnose(exc: BaseException, what: str, endpoint: str | None = None) -> Diagnosis:
    """What ``exc`` from ``what`` (``docker create``, ``docker info``) says about the daemon."""
    import docker

    where = f" at {endpoint}" if endpoint else ""
    message = short_message(exc)
    if is_timeout(exc):
        seconds = f" within {exc.seconds:g} s" if isinstance(exc, NativeCallTimeout) else ""
        return Diagnosis(
            f"the Docker daemon{where} did not answer `{what}`{seconds}: {message}", HUNG_CAUSE, RESTART_FIX
        )
    if isinstance(exc, docker.errors.APIError):
        code = exc.status_code or 0
        if code >= 500:
            return Diagnosis(
                f"the Docker daemon{where} failed `{what}`: {message}",
                "an internal error of the daemon (containerd, the storage driver or a runtime failed)",
                RESTART_FIX,
            )
        return Diagnosis(
            f"the Docker daemon{where} refused `{what}`: {message}",
            "the daemon rejected the request",
            f"run the same `{what}` by hand; {RESTART_FIX}",
        )
    if isinstance(exc, docker.errors.DockerException) and not _is_connection(exc):
        return Diagnosis(
            f"`{what}` failed against the Docker daemon{where}: {message}",
            "the daemon or its configuration is broken",
            RESTART_FIX,
        )
    return Diagnosis(
        f"the Docker daemon{where} went away during `{what}`: {message}",
        "the daemon stopped, crashed or restarted mid-run (the OOM killer, a package upgrade, "
        "`systemctl restart docker`), or the connection to it broke",
        f"{RESTART_FIX}; run the suite again once `docker info` answers",
    )


def _is_connection(exc: BaseException) -> bool:
    lowered = str(exc).lower()
    return any(word in lowered for word in ("connection", "no such file", "broken pipe", "aborted"))


@contextmanager
def mapped(
    what: str, endpoint: str | None = None, client: docker.DockerClient | None = None
) -> Iterator[None]:
    """Turn every daemon fault inside the block into ``DaemonFault`` with its diagnosis."""
    try:
        yield
    except daemon_faults() as exc:
        if client is not None and is_timeout(exc):
            mark_hung(client)
        raise DaemonFault(diagnose(exc, what, endpoint)) from None


def mark_hung(client: docker.DockerClient) -> None:
    with _hung_lock:
        _hung.add(id(client))


def clear_hung(client: docker.DockerClient) -> None:
    with _hung_lock:
        _hung.discard(id(client))


def is_hung(client: docker.DockerClient) -> bool:
    with _hung_lock:
        return id(client) in _hung


def require_answer(client: docker.DockerClient, what: str, seconds: float = 5.0) -> None:
    """Once the daemon was seen hung, a short ping before the next call: each later check then
    fails in seconds instead of waiting out its own timeout; a daemon that recovered is used again."""
    if not is_hung(client):
        return
    try:
        call_with_timeout(client.ping, seconds, "docker ping")
    except daemon_faults() as exc:
        raise DaemonFault(diagnose(exc, what)) from None
    clear_hung(client)


def cleanup(
    client: docker.DockerClient, fn: Callable[[], T], what: str, seconds: float = CLEANUP_SECONDS
) -> T | None:
    """Run a cleanup call within ``seconds``; None when it failed, timed out or the daemon is hung.

    A cleanup never raises a daemon fault: the error that made it necessary is the one to report.
    """
    if is_hung(client):
        return None
    try:
        return call_with_timeout(fn, seconds, what)
    except daemon_faults() as exc:
        if is_timeout(exc):
            mark_hung(client)
        return None
