"""Running the shipped workload scripts inside containers, with the image's own Python.

The scripts in ``pytest_gpuhost/workloads`` are standalone: they are copied into each container
at ``/gpuhost/workloads`` before it starts (through the Docker API, so a remote host needs no
copy of the package) and each prints JSON on stdout.

Every workload runs under ``lifeline.py``, whose stdin is attached to this process: when pytest
ends, however it ends, the daemon closes that stdin and the workload is ended within a second
(the container stops), with no help from the workload script. The followed output has a deadline
of its own, because docker-py disables the socket timeout for followed logs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import queue
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.containers import (
    NO_GPUS,
    ContainerFailure,
    ContainerResult,
    Containers,
    GpuRequest,
    RunningContainer,
)
from pytest_gpuhost.settings import Settings

WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"
MOUNT_POINT = "/gpuhost/workloads"
FAULT_SWITCH = "GPUHOST_ALLOW_FAULT_INJECTION"


def workload_image(settings: Settings) -> str:
    return settings.workload_image or settings.image


@functools.cache
def workload_files() -> bytes:
    """The workload scripts as a tar archive to extract at ``/``: readable by any user of the image."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        parts = MOUNT_POINT.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            folder = tarfile.TarInfo("/".join(parts[:depth]))
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(folder)
        for script in sorted(WORKLOADS_DIR.glob("*.py")):
            data = script.read_bytes()
            entry = tarfile.TarInfo(f"{MOUNT_POINT.strip('/')}/{script.name}")
            entry.size, entry.mode = len(data), 0o644
            archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


LIFELINE_SCRIPT = "lifeline.py"
# The container's stdin stays open for our attach, and the daemon closes it when we let go.
LIFELINE_CREATE: dict[str, Any] = {"stdin_open": True}  # docker-py adds StdinOnce with it
ARM = b"1"


def lifeline_path() -> Path:
    """The watchdog on this machine, for workloads run as host processes."""
    return WORKLOADS_DIR / LIFELINE_SCRIPT


def with_lifeline(python: str, lifeline: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run as the child of the lifeline watchdog."""
    return [python, "-u", lifeline, "--", *argv]


def workload_command(settings: Settings, script: str, *args: str) -> list[str]:
    """A shipped script as it runs in a container: under the lifeline watchdog."""
    inner = [settings.python, "-u", f"{MOUNT_POINT}/{script}", *args]
    return with_lifeline(settings.python, f"{MOUNT_POINT}/{LIFELINE_SCRIPT}", inner)


def _send(sock: Any, data: bytes) -> None:
    raw = getattr(sock, "_sock", sock)  # a unix socket comes wrapped in a SocketIO
    raw.sendall(data)


def _close(sock: Any) -> None:
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(Exception):
        raw.close()
    with contextlib.suppress(Exception):
        sock.close()


def hold_lifeline(running: RunningContainer) -> Any:
    """Attach to the container's stdin and arm its watchdog; keep the returned socket open for as
    long as the workload may run (closing it, or this process ending, ends the workload)."""
    import docker

    try:
        sock = running.container.attach_socket(params={"stdin": 1, "stream": 1})
        _send(sock, ARM)
    except (docker.errors.APIError, OSError) as exc:
        running.kill()
        raise ContainerFailure(
            Diagnosis(
                f"cannot attach to the workload container's stdin: {exc}",
                "the daemon refused the attach that ties the workload's life to this pytest",
                "`docker attach` the same container by hand; `sudo journalctl -u docker`",
            )
        ) from None
    return sock


@contextlib.contextmanager
def started_workload(
    containers: Containers,
    image: str,
    argv: Sequence[str],
    *,
    check: str,
    gpus: GpuRequest = NO_GPUS,
    environment: dict[str, str] | None = None,
) -> Iterator[RunningContainer]:
    """A workload container (``argv`` from :func:`workload_command`) held by its lifeline."""
    with containers.started(
        image,
        argv,
        check=check,
        gpus=gpus,
        files=workload_files(),
        environment=environment,
        **LIFELINE_CREATE,
    ) as running:
        sock = hold_lifeline(running)
        try:
            yield running
        finally:
            _close(sock)


class _End:
    """The followed stream ended (or failed)."""


def follow_lines(running: RunningContainer, seconds: float) -> Iterator[str]:
    """The container's output lines as they come, for at most ``seconds``: at the deadline the
    container is killed and the iteration ends even when the daemon's stream never does."""
    lines: queue.Queue[str | _End] = queue.Queue()

    def pump() -> None:
        pending = b""
        try:
            for chunk in running.container.logs(stream=True, follow=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    lines.put(line.decode(errors="replace"))
        except Exception:  # the daemon went away: the iteration ends; the caller diagnoses
            pass
        finally:
            if pending:
                lines.put(pending.decode(errors="replace"))
            lines.put(_End())

    threading.Thread(target=pump, name="gpuhost:follow-logs", daemon=True).start()
    deadline = time.monotonic() + seconds
    while True:
        try:
            item = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            # kill in a thread of its own: a hung daemon must not hang the caller either
            threading.Thread(target=running.kill, name="gpuhost:kill", daemon=True).start()
            return
        if isinstance(item, _End):
            return
        yield item


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object: the script's result record."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


@dataclass(frozen=True)
class WorkloadOutcome:
    record: dict[str, Any] | None
    result: ContainerResult
    diagnosis: Diagnosis | None


def diagnose_workload(
    result: ContainerResult, record: dict[str, Any] | None, image: str, python: str
) -> Diagnosis | None:
    """Why a workload produced no usable result, in terms of the image and the GPU."""
    if record is not None and "error" not in record:
        return None
    output = (result.stdout + result.stderr).strip()
    last = output.splitlines()[-1] if output else "no output"
    if record is not None:
        kind = str(record.get("kind", ""))
        message = str(record["error"])
        if kind == "no-framework":
            return Diagnosis(
                f"image {image} has neither PyTorch nor CuPy for {python}: {message}",
                "the workload image is a base CUDA image without a framework",
                "pass --gpuhost-workload-image with an image that has PyTorch or CuPy "
                "(examples/Dockerfile builds one), or --gpuhost-python for its interpreter",
            )
        if kind == "driver-too-old":
            return Diagnosis(
                f"inside {image}: {message}",
                "the image's CUDA runtime is newer than the driver supports (CUDA driver version is insufficient)",
                "upgrade the driver, or use an image built for this driver's CUDA version",
            )
        return Diagnosis(
            f"the workload failed on the GPU inside {image} ({kind or 'error'}): {message}",
            "a CUDA error: the GPU may have fallen off the bus, be in a bad state, or be out of memory",
            "read `sudo dmesg | grep -i Xid`; `nvidia-smi -q`; reset the GPU or reboot",
        )
    if result.timed_out:
        return Diagnosis(
            f"the workload in {image} did not finish in {result.seconds:.0f} s and was killed",
            "a hung GPU or a much slower GPU than expected",
            "read `sudo dmesg | grep -i Xid`; run `nvidia-smi` to see the GPU's state",
        )
    if "executable file not found" in output or ("no such file or directory" in output and python in output):
        return Diagnosis(
            f"image {image} has no {python}: {last}",
            "the workload image has no Python interpreter at that path",
            "pass --gpuhost-workload-image with a Python + PyTorch/CuPy image, or --gpuhost-python",
        )
    return Diagnosis(
        f"the workload in {image} exited with {result.exit_code} and no result: {last}",
        "the workload crashed",
        "run the same container by hand to see the full output",
    )


def run_workload(
    containers: Containers,
    settings: Settings,
    script: str,
    args: list[str],
    *,
    gpus: GpuRequest,
    check: str,
    timeout: float,
    environment: dict[str, str] | None = None,
) -> WorkloadOutcome:
    image = workload_image(settings)
    try:
        with started_workload(
            containers,
            image,
            workload_command(settings, script, *args),
            check=check,
            gpus=gpus,
            environment=environment,
        ) as running:
            result = running.wait(timeout)
    except ContainerFailure as exc:
        found = exc.diagnosis.found
        if "executable file not found" in found or (settings.python in found and "no such file" in found):
            raise ContainerFailure(
                Diagnosis(
                    f"image {image} has no {settings.python}: {found}",
                    "the workload image has no Python interpreter at that path",
                    "pass --gpuhost-workload-image with a Python + PyTorch/CuPy image "
                    "(examples/Dockerfile builds one), or --gpuhost-python with its interpreter",
                )
            ) from None
        raise
    record = last_json_object(result.stdout)
    return WorkloadOutcome(record, result, diagnose_workload(result, record, image, settings.python))
