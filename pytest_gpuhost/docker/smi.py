"""nvidia-smi inside a container: the query the container checks run, its parsing, and what a failed run means."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.containers import ContainerResult, Containers, diagnose_output
from pytest_gpuhost.settings import Settings

SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,uuid,name,driver_version,memory.total",
    "--format=csv,noheader,nounits",
]


@dataclass(frozen=True)
class SmiRow:
    index: int
    uuid: str
    name: str
    driver_version: str
    memory_total_mib: int


def parse_smi_csv(text: str) -> list[SmiRow]:
    rows = []
    for record in csv.reader(io.StringIO(text)):
        if len(record) != 5:
            continue
        index, uuid, name, driver, memory = (f.strip() for f in record)
        if not index.isdigit():
            continue
        rows.append(
            SmiRow(
                int(index),
                uuid,
                name,
                driver,
                int(float(memory)) if memory.replace(".", "").isdigit() else -1,
            )
        )
    return rows


def container_timeout(settings: Settings) -> float:
    """Long enough for a cold container start on a busy host, bounded by the native-call timeout."""
    return max(60.0, settings.timeout * 2)


def run_smi(containers: Containers, settings: Settings, check: str, **kwargs: object) -> ContainerResult:
    return containers.run(
        settings.image, SMI_QUERY, check=check, timeout=container_timeout(settings), **kwargs
    )


def smi_result_diagnosis(result: ContainerResult, settings: Settings) -> Diagnosis | None:
    if result.ok:
        return None
    output = result.stdout + result.stderr
    found = diagnose_output(output)
    if found is not None:
        return found
    if "exec " in output and "no such file or directory" in output:
        return Diagnosis(
            f"the driver's nvidia-smi cannot start inside {settings.image}: {output.strip().splitlines()[-1]}",
            "the image has no glibc loader for the driver's binaries (busybox, alpine or distroless image)",
            "use a glibc-based image (nvidia/cuda, ubuntu) for --gpuhost-image, or mount the host's libraries "
            "with --gpuhost-volume /usr:/usr:ro",
        )
    if result.timed_out:
        return Diagnosis(
            f"nvidia-smi in a container of {settings.image} did not finish in {result.seconds:.0f} s",
            "a hung driver or daemon",
            "`sudo dmesg | grep -i Xid`; `sudo systemctl restart docker`",
        )
    tail = output.strip().splitlines()[-1:] or ["no output"]
    return Diagnosis(
        f"nvidia-smi in a container of {settings.image} exited with {result.exit_code}: {tail[0]}",
        "the container did not get the driver's utilities (toolkit capabilities `utility` missing?)",
        "run `docker run --rm --gpus all IMAGE nvidia-smi` by hand; set NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    )
