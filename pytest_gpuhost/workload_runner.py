"""Running the shipped workload scripts inside containers, with the image's own Python.

The scripts in ``pytest_gpuhost/workloads`` are standalone: they are copied into each container
at ``/gpuhost/workloads`` before it starts (through the Docker API, so a remote host needs no
copy of the package) and each prints JSON on stdout.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gpuhost.containers import ContainerFailure, ContainerResult, Containers, GpuRequest
from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.settings import Settings

WORKLOADS_DIR = Path(__file__).resolve().parent / "workloads"
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


def workload_command(settings: Settings, script: str, *args: str) -> list[str]:
    return [settings.python, "-u", f"{MOUNT_POINT}/{script}", *args]


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
        result = containers.run(
            image,
            workload_command(settings, script, *args),
            check=check,
            timeout=timeout,
            gpus=gpus,
            files=workload_files(),
            environment=environment,
        )
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
