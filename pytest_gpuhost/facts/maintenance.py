"""Facts of the periodic re-check (guide step 4.2): a pending reboot and the driver on disk.

After a driver upgrade the new kernel module sits on disk while the old one still runs, until a
reboot or a module reload. Everything is read through the ``Host`` (files, commands), so remote
hosts are read the same way and the tests replay fake trees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_gpuhost.facts.system import DRIVER_VERSION_FILE, parse_module_version
from pytest_gpuhost.hosts.batch import Reads
from pytest_gpuhost.hosts.host import Host

REBOOT_REQUIRED = "/var/run/reboot-required"
REBOOT_PACKAGES = "/var/run/reboot-required.pkgs"
OSRELEASE = "/proc/sys/kernel/osrelease"
# Where the modules of a kernel live (NixOS keeps the booted system's under /run/booted-system), and
# where distributions and the .run installer put nvidia.ko below them, in the order to look.
MODULE_ROOTS = ("/lib/modules", "/usr/lib/modules", "/run/booted-system/kernel-modules/lib/modules")
MODULE_DIRS = ("updates/dkms", "updates", "extra", "kernel/drivers/video", "kernel/nvidia", "video", "misc")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_KO_VERSION = re.compile(r"(?:^|\x00)version=(\d+\.\d+(?:\.\d+)?)\x00")
_DRIVER_PACKAGE = re.compile(r"nvidia|cuda-drivers", re.IGNORECASE)
# Toolkit packages carry "nvidia" in their names but need no reboot.
_NOT_DRIVER = re.compile(r"container|docker|ctk", re.IGNORECASE)


@dataclass(frozen=True)
class RebootFacts:
    """``/var/run/reboot-required`` (Debian, Ubuntu) and the packages that asked for it."""

    required: bool
    message: str
    packages: tuple[str, ...]
    error: str | None = None

    @property
    def driver_packages(self) -> tuple[str, ...]:
        return tuple(p for p in self.packages if _DRIVER_PACKAGE.search(p) and not _NOT_DRIVER.search(p))


@dataclass(frozen=True)
class ModuleFacts:
    """The loaded nvidia module's version and the one installed for the running kernel."""

    loaded: str | None
    installed: str | None
    installed_from: str  # how ``installed`` was found: `modinfo`, a module file, or why not
    kernel: str | None
    absent: bool = False  # no nvidia module is installed for the running kernel (not merely unknown)

    @property
    def mismatch(self) -> bool:
        return bool(self.loaded and self.installed and self.loaded != self.installed)


def reboot_reads(host: Host, timeout: float) -> Reads:
    """What ``read_reboot`` asks (the package list only matters when the flag exists)."""
    return Reads(files=(REBOOT_REQUIRED, REBOOT_PACKAGES))


def read_reboot(host: Host) -> RebootFacts:
    try:
        flag = host.read_text(REBOOT_REQUIRED)
        packages = host.read_text(REBOOT_PACKAGES) if flag is not None else None
    except (PermissionError, IsADirectoryError) as exc:
        return RebootFacts(False, "", (), error=f"{REBOOT_REQUIRED} is not readable: {exc}")
    if flag is None:
        return RebootFacts(False, "", ())
    names = tuple(dict.fromkeys(line.strip() for line in (packages or "").splitlines() if line.strip()))
    return RebootFacts(True, flag.strip(), names)


def running_kernel(host: Host) -> str | None:
    try:
        text = host.read_text(OSRELEASE)
    except PermissionError:
        text = None
    if text and text.strip():
        return text.strip()
    result = host.run(["uname", "-r"], timeout=10)
    return result.stdout.strip() or None if result.ok else None


def module_file_version(host: Host, kernel: str) -> tuple[str | None, str, bool]:
    """The version in an uncompressed nvidia.ko's .modinfo for ``kernel``, where it was found, and
    whether a module file exists at all. One listing per folder: a remote host answers each read."""
    roots = [f"{root}/{kernel}" for root in MODULE_ROOTS if host.exists(f"{root}/{kernel}")]
    for base in roots:
        for folder in MODULE_DIRS:
            names = set(host.listdir(f"{base}/{folder}"))
            suffix = next((s for s in MODULE_SUFFIXES if f"nvidia{s}" in names), None)
            if suffix is None:
                continue
            path = f"{base}/{folder}/nvidia{suffix}"
            if suffix != ".ko":
                return None, f"{path} is compressed and `modinfo` is not available to read it", True
            try:
                text = host.read_text(path) or ""
            except PermissionError as exc:
                return None, f"{path} is not readable: {exc}", True
            match = _KO_VERSION.search(text)
            return (match.group(1) if match else None), (path if match else f"{path} names no version"), True
    return None, f"no nvidia module under {' or '.join(f'{r}/{kernel}' for r in MODULE_ROOTS)}", False


def modules_folder_exists(host: Host, kernel: str) -> bool:
    return any(host.exists(f"{root}/{kernel}") for root in MODULE_ROOTS)


def read_modules(host: Host, timeout: float) -> ModuleFacts:
    """``modinfo -F version nvidia`` for the running kernel; the module file when modinfo is absent."""
    try:
        version_text = host.read_text(DRIVER_VERSION_FILE)
    except PermissionError:
        version_text = None
    loaded = parse_module_version(version_text) if version_text else None
    kernel = running_kernel(host)
    result = host.run(["modinfo", "-F", "version", "nvidia"], timeout=timeout)
    installed = result.stdout.strip().splitlines()[0].strip() if result.ok and result.stdout.strip() else None
    if installed:
        return ModuleFacts(loaded, installed, "`modinfo -F version nvidia`", kernel)
    if kernel is None:
        return ModuleFacts(loaded, None, f"{result.describe()}; the running kernel is unknown", kernel)
    found, where, exists = module_file_version(host, kernel)
    if found is None and not result.missing:
        where = f"{result.describe()}; {where}"
    # modinfo looks wherever depmod indexed the module: when it ran and found none, none is there.
    answered = result.missing or (result.returncode is not None and not result.unreachable)
    absent = found is None and not exists and answered and modules_folder_exists(host, kernel)
    return ModuleFacts(loaded, found, where, kernel, absent=absent)
