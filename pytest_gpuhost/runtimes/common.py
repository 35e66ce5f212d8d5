"""What the other container runtimes have in common: their version, one run's outcome, a failure inside the container."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.docker.containers import diagnose_version_mismatch
from pytest_gpuhost.facts.toolkit import ToolInfo, probe_tool
from pytest_gpuhost.hosts.host import CommandResult, Host

# A runtime's command on the host is a tool like the toolkit's: found, its version, or why not.
RuntimeTool = ToolInfo

_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


def parse_runtime_version(text: str) -> str | None:
    """``3.4.1`` (enroot version) or ``podman version 4.3.1``."""
    match = _VERSION.search(text)
    return match.group(1) if match else None


def probe_runtime(host: Host, argv: Sequence[str], timeout: float) -> RuntimeTool:
    """Whether a runtime is installed, through its own version command (``enroot version``)."""
    return probe_tool(host, argv[0], timeout, argv=argv, parse=parse_runtime_version)


@dataclass(frozen=True)
class RuntimeRun:
    """The outcome of a GPU listing through another runtime: the CSV, or the diagnosis."""

    output: str
    diagnosis: Diagnosis | None
    commands: tuple[CommandResult, ...] = ()


def output_tail(result: CommandResult) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1] if lines else "no output"


def inside_container_problem(text: str) -> Diagnosis | None:
    """Errors printed inside the container; only NVML's "Unknown Error" means something else here
    than under Docker (no device nodes injected, rather than a cgroup lost after a daemon-reload)."""
    if "Failed to initialize NVML: Unknown Error" in text:
        return Diagnosis(
            "inside the container: Failed to initialize NVML: Unknown Error",
            "the container has the driver's libraries but not the GPUs' device nodes",
            "check that the hook or CDI spec injects /dev/nvidia*; regenerate the CDI spec",
        )
    return diagnose_version_mismatch(text)
