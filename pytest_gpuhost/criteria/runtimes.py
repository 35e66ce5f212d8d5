"""The verdict of guide step 3.5: another runtime sees the same GPUs and driver as the host."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.model import GpuInfo


def parity_problem(
    runtime: str,
    image: str,
    rows: Sequence[tuple[str, str, str, int]],
    gpus: Sequence[GpuInfo],
    driver_version: str | None,
) -> Diagnosis | None:
    """``rows`` (uuid, name, driver, memory MiB) from inside a container match the host's GPUs."""
    inside = {row[0] for row in rows}
    host = {gpu.uuid for gpu in gpus}
    if inside != host:
        return Diagnosis(
            f"a container of {image} run by {runtime} with all GPUs sees {sorted(inside) or 'none'}; "
            f"the host has {sorted(host)}",
            f"{runtime} does not pass every GPU (NVIDIA_VISIBLE_DEVICES, the CDI spec or the hook hides some)",
            f"compare `nvidia-smi -L` inside a container run by {runtime} with the host's",
        )
    by_uuid = {gpu.uuid: gpu for gpu in gpus}
    for uuid, name, driver, memory in rows:
        gpu = by_uuid[uuid]
        host_view = (gpu.name, driver_version, gpu.memory_total_mib)
        if (name, driver, memory) != host_view:
            return Diagnosis(
                f"GPU {gpu.index} in a container run by {runtime}: name, driver, memory = "
                f"{(name, driver, memory)}; on the host {host_view}",
                "the container mounts another driver's libraries (a stale CDI spec, or a driver in the image)",
                "regenerate CDI specs after driver upgrades; never install a driver inside images",
            )
    return None
