"""Do running containers keep their GPUs after ``systemctl daemon-reload``?

NVIDIA's known issue (nvidia-container-toolkit issue 48, and 1227, 1397, 1744): with Docker's
systemd cgroup driver, a reload makes systemd rewrite each container's device rules from what it
knows. Device nodes it cannot resolve through ``/dev/char/MAJOR:MINOR`` links, and nodes the
legacy hook added behind runc's back, are dropped: the container then sees "Failed to
initialize NVML: Unknown Error". The preconditions are read on every host; the reload itself
runs only where the user asks for it (``--gpuhost-daemon-reload yes``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_gpuhost.hosts.host import Host


@dataclass(frozen=True)
class DevChar:
    """The character devices /dev/nvidia* and whether /dev/char links to each."""

    nodes: Mapping[str, str]  # /dev/nvidia0 -> "195:0"
    missing: tuple[str, ...] = ()  # nodes without a /dev/char/MAJOR:MINOR link to them
    error: str | None = None


def parse_stat(output: str) -> dict[str, str]:
    """``stat -L -c '%t,%T,%F,%n'`` lines (hex major and minor) to node -> ``major:minor``."""
    nodes: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split(",", 3)
        if len(parts) != 4 or parts[2] != "character special file":
            continue
        try:
            nodes[parts[3]] = f"{int(parts[0], 16)}:{int(parts[1], 16)}"
        except ValueError:
            continue
    return nodes


def missing_links(nodes: Mapping[str, str], readlink: Mapping[str, str | None]) -> tuple[str, ...]:
    """Nodes whose ``/dev/char/MAJOR:MINOR`` is absent or points at another file."""
    missing = []
    for node, number in nodes.items():
        target = readlink.get(f"/dev/char/{number}")
        if target is None or os.path.basename(target) != os.path.basename(node):
            missing.append(node)
    return tuple(missing)


def read_dev_char(host: Host, timeout: float) -> DevChar:
    names = [n for n in host.listdir("/dev") if n.startswith("nvidia")]
    if not names:
        return DevChar({})
    result = host.run(["stat", "-L", "-c", "%t,%T,%F,%n", *(f"/dev/{n}" for n in names)], timeout=timeout)
    nodes = parse_stat(result.stdout)
    if not nodes and not result.ok:
        return DevChar({}, error=result.describe())
    return DevChar(
        nodes, missing_links(nodes, read_links(host, [f"/dev/char/{n}" for n in nodes.values()], timeout))
    )


# One line per link, in order: its target, or nothing when it is not a link. One command for all
# of a host's nodes (a dozen on an 8-GPU host): over SSH each command is a round trip.
READ_LINKS_SCRIPT = 'for f do printf "%s\\n" "$(readlink -- "$f")"; done'


def read_links(host: Host, paths: list[str], timeout: float) -> dict[str, str | None]:
    """Each path's link target, None where it is no link (or the command failed)."""
    if not paths:
        return {}
    result = host.run(["sh", "-c", READ_LINKS_SCRIPT, "sh", *paths], timeout=timeout)
    lines = result.stdout.split("\n") if result.ok else []
    return {path: (lines[i] or None) if i < len(lines) else None for i, path in enumerate(paths)}
