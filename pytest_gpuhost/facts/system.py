"""Facts from the kernel's own files: the PCI bus, loaded modules, /proc/driver/nvidia, /dev."""

from __future__ import annotations

import re

from pytest_gpuhost.facts.model import KernelFacts, PciGpu
from pytest_gpuhost.hosts.batch import Reads, batched, builtins_only
from pytest_gpuhost.hosts.host import Host

NVIDIA_VENDOR = "0x10de"
PCI_DEVICES = "/sys/bus/pci/devices"
# PCI class 0x0300 is a VGA controller, 0x0302 a 3D controller: both are GPUs. NVSwitches
# (0x0680) and audio functions (0x0403) of the same vendor are not.
GPU_CLASSES = ("0x0300", "0x0302")
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
_MODULE_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")


PCI_SCAN = (
    "sh",
    "-c",
    builtins_only(
        f'for d in {PCI_DEVICES}/*; do [ -r "$d/vendor" ] || continue; '
        'v=; c=; read -r v <"$d/vendor"; read -r c 2>/dev/null <"$d/class"; '  # builtins: no process each
        'printf "%s %s %s\\n" "${d##*/}" "$v" "$c"; done'
    ),
)


def pci_devices(host: Host) -> list[tuple[str, str, str]]:
    """(address, vendor, class) of every PCI device. A remote host answers in one command: a
    server has hundreds of PCI devices, and two reads of each would be hundreds of round trips."""
    from pytest_gpuhost.hosts.remote import is_remote

    if not is_remote(host):
        rows = []
        for address in host.listdir(PCI_DEVICES):
            base = f"{PCI_DEVICES}/{address}"
            vendor = (host.read_text(f"{base}/vendor") or "").strip().lower()
            rows.append((address, vendor, (host.read_text(f"{base}/class") or "").strip().lower()))
        return rows
    result = host.run(PCI_SCAN, timeout=60)
    lines = (line.split() for line in result.stdout.splitlines()) if result.ok else iter(())
    return sorted((fields[0], fields[1].lower(), fields[2].lower()) for fields in lines if len(fields) == 3)


def scan_pci(host: Host) -> tuple[PciGpu, ...]:
    """NVIDIA GPUs on the PCI bus, whether or not a driver has claimed them."""
    found = []
    gpus = [
        (f"{PCI_DEVICES}/{address}", address, class_code)
        for address, vendor, class_code in pci_devices(host)
        if vendor == NVIDIA_VENDOR and class_code.startswith(GPU_CLASSES)
    ]
    asked = Reads(
        links=tuple(f"{b}/driver" for b, _, _ in gpus), files=tuple(f"{b}/device" for b, _, _ in gpus)
    )
    with batched(host, asked):  # two reads per GPU in one round trip
        for base, address, class_code in gpus:
            driver_link = host.readlink(f"{base}/driver")
            found.append(
                PciGpu(
                    address=address.lower(),
                    device_id=(host.read_text(f"{base}/device") or "").strip().lower(),
                    class_code=class_code,
                    driver=driver_link.rsplit("/", 1)[-1] if driver_link else None,
                )
            )
    return tuple(found)


def parse_module_version(version_text: str) -> str | None:
    """The driver version in ``/proc/driver/nvidia/version`` (proprietary and open modules)."""
    match = _MODULE_VERSION.search(version_text)
    return match.group(1) if match else None


def loaded_modules(host: Host) -> frozenset[str]:
    """Loaded kernel modules; built-in ones appear under /sys/module only."""
    names = set()
    for line in (host.read_text("/proc/modules") or "").splitlines():
        if line.strip():
            names.add(line.split()[0])
    from pytest_gpuhost.hosts.remote import is_remote

    if is_remote(host):  # one command, not two per module
        result = host.run(SYS_MODULE_PROBE, timeout=30)
        if result.ok:
            names.update(n for n in result.stdout.split() if n in SYS_MODULES)
        return frozenset(names)
    for name in SYS_MODULES:
        # /sys/module/<name>/initstate exists for loaded modules; built-ins have only parameters.
        if host.exists(f"/sys/module/{name}/initstate") or host.exists(f"/sys/module/{name}/version"):
            names.add(name)
    return frozenset(names)


SYS_MODULES = ("nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "nouveau")
# The names among its arguments with /sys/module/NAME/initstate or .../version (a file or a link),
# as Host.exists asks of each.
SYS_MODULE_SCRIPT = builtins_only(
    'for m; do for f in initstate version; do p="/sys/module/$m/$f"; '
    'if test -e "$p" || test -L "$p"; then echo "$m"; break; fi; done; done'
)


SYS_MODULE_PROBE = ("sh", "-c", SYS_MODULE_SCRIPT, "sh", *SYS_MODULES)
# What scan_pci and gather_kernel ask a remote host first, for one batch (hosts/batch.py).
REMOTE_READS = Reads(
    files=(DRIVER_VERSION_FILE, "/proc/modules"),
    dirs=("/dev", "/proc/driver/nvidia/gpus"),
    commands=((PCI_SCAN, 60), (SYS_MODULE_PROBE, 30)),
)


def gather_kernel(host: Host) -> KernelFacts:
    version_text: str | None = None
    version_error: str | None = None
    try:
        version_text = host.read_text(DRIVER_VERSION_FILE)
        if version_text is None:
            version_error = f"{DRIVER_VERSION_FILE} does not exist"
    except PermissionError as exc:
        version_error = f"{DRIVER_VERSION_FILE} is not readable: {exc}"
    return KernelFacts(
        modules=loaded_modules(host),
        version_text=version_text,
        version_error=version_error,
        module_version=parse_module_version(version_text) if version_text else None,
        device_nodes=frozenset(n for n in host.listdir("/dev") if n.startswith("nvidia")),
        proc_gpus=tuple(a.lower() for a in host.listdir("/proc/driver/nvidia/gpus")),
    )
