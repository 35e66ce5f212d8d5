"""Which images a driver can run: the default CUDA base image and PyTorch workload image.

A CUDA image sets ``NVIDIA_REQUIRE_CUDA=cuda>=X.Y``; the NVIDIA Container Toolkit's hook (the
``--gpus`` path of a stock Docker) refuses to start it on a driver whose CUDA version is older.
So the default is the newest image whose CUDA is at most the driver's, never one that relies on
CUDA's minor-version compatibility.

The tables are data, dated: TABLE_DATE is when they were compiled, from the sources named in
TABLE_SOURCES. A newer driver than the newest row gets the newest row (CUDA is backward
compatible); an older driver than the oldest row gets no default and the header says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TABLE_DATE = "2026-12-02"
TABLE_SOURCES = (
    "Docker Hub tag lists of nvidia/cuda (base-ubuntu variants) and pytorch/pytorch (-runtime variants)",
    "NVIDIA CUDA Toolkit release notes, table 'CUDA Toolkit and Corresponding Driver Versions'",
)

# (CUDA major.minor of the image, tag): newest first. Base images: nvidia-smi's loader and libc,
# no CUDA libraries (the toolkit mounts the driver's).
CUDA_BASE_IMAGES: tuple[tuple[str, str], ...] = (
    ("13.0", "nvidia/cuda:13.0.1-base-ubuntu24.04"),
    ("12.9", "nvidia/cuda:12.9.1-base-ubuntu24.04"),
    ("12.8", "nvidia/cuda:12.8.1-base-ubuntu24.04"),
    ("12.6", "nvidia/cuda:12.6.3-base-ubuntu24.04"),
    ("12.4", "nvidia/cuda:12.4.1-base-ubuntu22.04"),
    ("12.3", "nvidia/cuda:12.3.2-base-ubuntu22.04"),
    ("12.2", "nvidia/cuda:12.2.2-base-ubuntu22.04"),
    ("12.1", "nvidia/cuda:12.1.1-base-ubuntu22.04"),
    ("12.0", "nvidia/cuda:12.0.1-base-ubuntu22.04"),
    ("11.8", "nvidia/cuda:11.8.0-base-ubuntu22.04"),
)

# The official PyTorch images (a CUDA build of PyTorch with its CUDA runtime and cuDNN, Python
# 3 at python3): the workload image by default. Gigabytes, pulled once per host.
PYTORCH_IMAGES: tuple[tuple[str, str], ...] = (
    ("13.0", "pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime"),
    ("12.8", "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"),
    ("12.6", "pytorch/pytorch:2.9.1-cuda12.6-cudnn9-runtime"),
    ("12.4", "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"),
    ("12.1", "pytorch/pytorch:2.4.1-cuda12.1-cudnn9-runtime"),
    ("11.8", "pytorch/pytorch:2.4.1-cuda11.8-cudnn9-runtime"),
)

# The CUDA version each driver branch supports (its first release), for hosts where neither
# NVML nor nvidia-smi reported one: (driver major, CUDA major.minor), newest first.
DRIVER_CUDA: tuple[tuple[int, str], ...] = (
    (580, "13.0"),
    (575, "12.9"),
    (570, "12.8"),
    (565, "12.7"),
    (560, "12.6"),
    (555, "12.5"),
    (550, "12.4"),
    (545, "12.3"),
    (535, "12.2"),
    (530, "12.1"),
    (525, "12.0"),
    (520, "11.8"),
)

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)")


def cuda_tuple(text: str | None) -> tuple[int, int] | None:
    """``"12.8"`` (or ``"12.8.1"``) as ``(12, 8)``; None for anything else."""
    match = _VERSION.match(text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def cuda_of_driver(driver_version: str | None) -> str | None:
    """The CUDA version of a driver's branch from NVIDIA's table (``535.183.01`` -> ``12.2``)."""
    match = re.match(r"^\s*(\d+)", driver_version or "")
    if not match:
        return None
    major = int(match.group(1))
    return next((cuda for branch, cuda in DRIVER_CUDA if major >= branch), None)


@dataclass(frozen=True)
class ImageChoice:
    """One chosen image and the sentence the header prints about it."""

    image: str | None
    reason: str


def newest_for(table: tuple[tuple[str, str], ...], cuda: str) -> tuple[str, str] | None:
    """The newest ``(cuda, tag)`` row whose CUDA is at most ``cuda``."""
    wanted = cuda_tuple(cuda)
    if wanted is None:
        return None
    fitting = [row for row in table if (cuda_tuple(row[0]) or (99, 99)) <= wanted]
    return max(fitting, key=lambda row: cuda_tuple(row[0]) or (0, 0), default=None)


def driver_cuda(cuda_driver_version: str | None, driver_version: str | None) -> tuple[str | None, str]:
    """The driver's CUDA version and where it came from."""
    if cuda_tuple(cuda_driver_version) is not None:
        return cuda_driver_version, f"the driver's CUDA {cuda_driver_version}"
    derived = cuda_of_driver(driver_version)
    if derived is not None:
        return derived, f"CUDA {derived} of driver branch {driver_version} (NVIDIA's table)"
    return None, "no driver CUDA version was read"


def choose(
    table: tuple[tuple[str, str], ...],
    kind: str,
    cuda_driver_version: str | None,
    driver_version: str | None,
    fallback: str | None,
) -> ImageChoice:
    """The newest ``kind`` image of ``table`` for this driver, with the reason; else ``fallback``."""
    cuda, source = driver_cuda(cuda_driver_version, driver_version)
    if cuda is None:
        return ImageChoice(fallback, f"{source}: the newest {kind} image" if fallback else source)
    row = newest_for(table, cuda)
    if row is None:
        oldest = table[-1]
        return ImageChoice(
            fallback,
            f"{source} is older than the oldest {kind} image of the table (CUDA {oldest[0]})",
        )
    return ImageChoice(row[1], f"the newest {kind} image for {source} (CUDA {row[0]}; table of {TABLE_DATE})")


def choose_base_image(cuda_driver_version: str | None, driver_version: str | None) -> ImageChoice:
    return choose(
        CUDA_BASE_IMAGES, "nvidia/cuda base", cuda_driver_version, driver_version, CUDA_BASE_IMAGES[0][1]
    )


def choose_pytorch_image(cuda_driver_version: str | None, driver_version: str | None) -> ImageChoice:
    return choose(PYTORCH_IMAGES, "PyTorch", cuda_driver_version, driver_version, PYTORCH_IMAGES[0][1])


def with_registry(image: str, registry: str | None) -> str:
    """``image`` pulled through ``registry`` (a mirror of Docker Hub): ``HOST:PORT/nvidia/cuda:...``."""
    if not registry:
        return image
    return f"{registry.rstrip('/')}/{image}"
