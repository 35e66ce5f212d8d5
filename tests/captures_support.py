"""The captures of real GPU hosts (``tests/data/``) and the fake driver file tree built from them.

Only the driver is faked: ``/sys``, ``/proc`` and ``/dev`` as files below a temporary root, NVML
(``tests/fakes/pynvml.py``) and ``nvidia-smi`` (``tests/fakes/bin/nvidia-smi``). Test modules
import these helpers from here, never from ``conftest`` (which ``--import-mode=importlib`` hides).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
FAKES = TESTS / "fakes"
FAKE_BIN = FAKES / "bin"
CAPTURES = ("h100", "h200x2")


# -- reading the captures -----------------------------------------------------------------------


@dataclass(frozen=True)
class PciFunction:
    """One line of a capture's ``sys-pci-nvidia.txt``: a PCI function as sysfs shows it."""

    address: str
    vendor: str
    device: str
    class_code: str
    driver: str | None


def capture_pci(capture: str) -> list[PciFunction]:
    functions = []
    for line in (DATA / capture / "sys-pci-nvidia.txt").read_text().splitlines():
        if not line.strip():
            continue
        address, rest = line.split(maxsplit=1)
        fields = dict(re.findall(r"(\w+)=(\S+)", rest))
        functions.append(
            PciFunction(address, fields["vendor"], fields["device"], fields["class"], fields.get("driver"))
        )
    return functions


def capture_proc(capture: str) -> tuple[str, dict[str, str]]:
    """``/proc/driver/nvidia/version`` and each ``gpus/<address>/information`` of a capture."""
    text = (DATA / capture / "proc-driver-nvidia.txt").read_text()
    version, *sections = re.split(r"^== /proc/driver/nvidia/gpus/", text, flags=re.MULTILINE)
    gpus = {}
    for section in sections:
        header, _, body = section.partition("\n")
        gpus[header.split("/")[0]] = body
    return version, gpus


def capture_devnodes(capture: str) -> tuple[list[str], list[str]]:
    """The ``/dev/nvidia*`` names and the loaded nvidia modules of a capture."""
    nodes, modules = [], []
    for line in (DATA / capture / "devnodes-modules.txt").read_text().splitlines():
        if line.startswith("c") and " /dev/" in line:
            nodes.append(line.rsplit("/", 1)[-1])
        elif re.fullmatch(r"[a-z_]+", line.strip()):
            modules.append(line.strip())
    return nodes, modules


def load_nvml_dump(capture: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / capture / "nvml-dump.json").read_text())
    return data


# -- the fake driver file tree ------------------------------------------------------------------

# Sizes as a real /proc/modules shows them; only the names matter to the plugin.
_MODULE_LINES = {
    "nvidia": "nvidia 14376960 {users} {deps} Live 0x0000000000000000 (O)",
    "nvidia_uvm": "nvidia_uvm 2080768 0 - Live 0x0000000000000000 (O)",
    "nvidia_modeset": "nvidia_modeset 1814528 0 - Live 0x0000000000000000 (O)",
    "nvidia_drm": "nvidia_drm 122880 0 - Live 0x0000000000000000 (O)",
    "nouveau": "nouveau 3096576 0 - Live 0x0000000000000000",
}


def _proc_modules(modules: Sequence[str]) -> str:
    lines = []
    for name in modules:
        users = [m for m in modules if m.startswith("nvidia_")] if name == "nvidia" else []
        template = _MODULE_LINES.get(name, name + " 16384 0 - Live 0x0000000000000000")
        lines.append(template.format(users=len(users), deps="".join(f"{u}," for u in users) or "-"))
    return "".join(line + "\n" for line in lines)


def build_driver_tree(
    root: Path,
    capture: str | None,
    *,
    pci: Sequence[PciFunction] | None = None,
    extra_pci: Iterable[PciFunction] = (),
    modules: Sequence[str] | None = None,
    version_text: str | None = None,
    proc_gpus: Sequence[str] | None = None,
    dev_nodes: Sequence[str] | None = None,
) -> Path:
    """A host's ``/sys``, ``/proc`` and ``/dev`` below ``root``, as the capture shows them.

    Each keyword replaces that part of the capture (an empty sequence removes it); ``capture``
    None is a machine without NVIDIA hardware or driver. The layout is the kernel's: the device
    directory under ``/sys/devices``, a ``/sys/bus/pci/devices`` link to it, and ``driver`` a
    link to ``/sys/bus/pci/drivers/<name>``.
    """
    if capture is not None:
        version, gpus = capture_proc(capture)
        nodes, loaded = capture_devnodes(capture)
        pci = capture_pci(capture) if pci is None else pci
        modules = loaded if modules is None else modules
        version_text = version if version_text is None else version_text
        proc_gpus = list(gpus) if proc_gpus is None else proc_gpus
        dev_nodes = nodes if dev_nodes is None else dev_nodes
    else:
        gpus = {}
    functions = [*(pci or ()), *extra_pci]
    root.mkdir(parents=True, exist_ok=True)
    devices = root / "sys/devices/pci0000:00"
    links = root / "sys/bus/pci/devices"
    links.mkdir(parents=True, exist_ok=True)
    for fn in functions:
        device = devices / fn.address
        device.mkdir(parents=True)
        (device / "vendor").write_text(fn.vendor + "\n")
        (device / "device").write_text(fn.device + "\n")
        (device / "class").write_text(fn.class_code + "\n")
        if fn.driver:
            (root / "sys/bus/pci/drivers" / fn.driver).mkdir(parents=True, exist_ok=True)
            (device / "driver").symlink_to(f"../../../bus/pci/drivers/{fn.driver}")
        (links / fn.address).symlink_to(f"../../../devices/pci0000:00/{fn.address}")
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "modules").write_text(_proc_modules(modules or ()))
    for name in modules or ():
        (root / "sys/module" / name).mkdir(parents=True, exist_ok=True)
        (root / "sys/module" / name / "initstate").write_text("live\n")
    if version_text:
        (proc / "driver/nvidia").mkdir(parents=True, exist_ok=True)
        (proc / "driver/nvidia/version").write_text(version_text)
    for address in proc_gpus or ():
        info = proc / "driver/nvidia/gpus" / address
        info.mkdir(parents=True)
        (info / "information").write_text(gpus.get(address, ""))
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for node in dev_nodes or ():
        (dev / node).touch()
    if dev_nodes:
        (dev / "nvidia-caps").mkdir(exist_ok=True)
    return root
