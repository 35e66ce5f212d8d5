"""Guide step 2.1: the NVIDIA driver is installed, loaded, consistent and usable."""

from __future__ import annotations

import pytest

from pytest_gpuhost.diagnosis import fail, warn
from pytest_gpuhost.facts.model import GpuInfo, GpuListing, HostFacts

pytestmark = pytest.mark.gpuhost_quick

RELOAD_FIX = (
    "reboot; or, with no GPU process running, `sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia "
    "&& sudo modprobe nvidia nvidia_uvm`"
)
INSTALL_FIX = (
    "install the driver (`sudo ubuntu-drivers install` or your distribution's nvidia-driver package), "
    "then `sudo modprobe nvidia`; if modprobe fails, read `sudo dmesg | grep -i nvidia` "
    "(Secure Boot: `mokutil --sb-state`)"
)


@pytest.mark.gpuhost_needs("gpu_present")
def test_nvidia_kernel_module_loaded(gpuhost_facts: HostFacts) -> None:
    """The nvidia kernel module is in /proc/modules: nothing of the driver works without it."""
    if "nvidia" not in gpuhost_facts.kernel.modules:
        fail(
            "the nvidia kernel module is not loaded (not in /proc/modules)",
            "the driver is not installed, failed to build for this kernel, or was refused by Secure Boot",
            INSTALL_FIX,
        )


@pytest.mark.gpuhost_needs("gpu_present")
def test_nouveau_not_loaded(gpuhost_facts: HostFacts) -> None:
    """The open-source nouveau module is not loaded: it would claim the GPUs before the NVIDIA driver."""
    if "nouveau" in gpuhost_facts.kernel.modules:
        fail(
            "the open-source nouveau module is loaded",
            "nouveau claims the GPUs before the NVIDIA driver can",
            "blacklist it: `printf 'blacklist nouveau\\noptions nouveau modeset=0\\n' | sudo tee "
            "/etc/modprobe.d/blacklist-nouveau.conf && sudo update-initramfs -u && sudo reboot`",
        )


@pytest.mark.gpuhost_needs("gpu_present")
def test_driver_version_file_readable(gpuhost_facts: HostFacts) -> None:
    """/proc/driver/nvidia/version names the loaded module's version, which the other checks compare with."""
    kernel = gpuhost_facts.kernel
    if kernel.version_error:
        fail(kernel.version_error, "the nvidia kernel module is not loaded", INSTALL_FIX)
    if kernel.module_version is None:
        fail(
            f"/proc/driver/nvidia/version names no driver version: {kernel.version_text!r}",
            "an unknown driver build",
            "reinstall the driver from your distribution's packages",
        )


@pytest.mark.gpuhost_needs("driver")
def test_device_nodes(gpuhost_facts: HostFacts) -> None:
    """/dev/nvidiactl and /dev/nvidia-uvm exist: CUDA, and every container given a GPU, open them."""
    missing = [n for n in ("nvidiactl", "nvidia-uvm") if n not in gpuhost_facts.kernel.device_nodes]
    if missing:
        fail(
            "missing device nodes: " + ", ".join(f"/dev/{n}" for n in missing),
            "nvidia_uvm is not loaded, or no udev rule or nvidia-persistenced created the nodes",
            "`sudo modprobe nvidia_uvm && sudo nvidia-modprobe -u -c=0`; "
            "`sudo systemctl enable --now nvidia-persistenced` creates them at boot",
        )


@pytest.mark.gpuhost_needs("driver", "gpu_listing")
def test_gpu_device_node(gpuhost_facts: HostFacts, gpu: GpuInfo) -> None:
    """The GPU's own /dev/nvidiaN exists: without it no process or container can use that GPU."""
    minor = gpu.minor_number if gpu.minor_number is not None else gpu.index
    if f"nvidia{minor}" not in gpuhost_facts.kernel.device_nodes:
        fail(
            f"/dev/nvidia{minor} is missing for GPU {gpu.index} ({gpu.uuid})",
            "the device node was not created (no udev rule, no nvidia-persistenced)",
            f"`sudo nvidia-modprobe -c={minor}`; `sudo systemctl enable --now nvidia-persistenced`",
        )


def _mismatch(kernel_version: str, library_version: str) -> None:
    fail(
        f"Driver/library version mismatch: kernel module {kernel_version}, "
        f"user-space library (NVML) {library_version}",
        "the driver was upgraded but the old kernel module is still loaded",
        RELOAD_FIX,
    )


NVML_DIAGNOSES = {
    "version-mismatch": (
        "Driver/library version mismatch: the driver was upgraded but the old kernel module is still loaded",
        RELOAD_FIX,
    ),
    "library-not-found": (
        "libnvidia-ml.so.1 is not installed or not on the loader path",
        "install the driver's user-space libraries (e.g. libnvidia-compute-<version>) and run `sudo ldconfig`",
    ),
    "no-driver": ("the kernel module is not loaded or does not answer", INSTALL_FIX),
    "permission": (
        "this user may not open /dev/nvidia*",
        "check the device nodes' mode (`ls -l /dev/nvidia*`)",
    ),
    "timeout": (
        "the driver is hung (a GPU in a bad state)",
        "read `sudo dmesg | grep -i -e NVRM -e Xid`; reset the GPU or reboot",
    ),
    "import": ("the nvidia-ml-py package is not installed in this Python", "`pip install nvidia-ml-py`"),
}


def _listing_failure(listing: GpuListing, diagnoses: dict[str, tuple[str, str]]) -> None:
    cause, fix = diagnoses.get(listing.error_kind or "", ("unexpected error", INSTALL_FIX))
    fail(f"{listing.source} failed: {listing.error}", cause, fix)


@pytest.mark.gpuhost_needs("driver")
def test_nvml_initialises(gpuhost_facts: HostFacts) -> None:
    """NVML starts, and the kernel module, NVML and the driver report one version.

    On a remote host NVML is not read: nvidia-smi, which loads that host's NVML library, stands
    in for it, so the kernel module is compared with the driver version nvidia-smi reports.
    """
    nvml = gpuhost_facts.nvml
    if nvml.error_kind == "remote":
        kernel_version, smi_version = gpuhost_facts.kernel.module_version, gpuhost_facts.smi.driver_version
        if kernel_version and smi_version and smi_version != kernel_version:
            _mismatch(kernel_version, smi_version)
        print(f"gpuhost.note {nvml.error}: kernel module {kernel_version}, nvidia-smi {smi_version}")
        return
    if not nvml.ok:
        _listing_failure(nvml, NVML_DIAGNOSES)
    kernel_version = gpuhost_facts.kernel.module_version
    for version in (nvml.driver_version, nvml.library_version):
        if kernel_version and version and version != kernel_version:
            _mismatch(kernel_version, version)


SMI_DIAGNOSES = {
    "missing": (
        "nvidia-smi is not installed or not on PATH",
        "install the driver's utilities (e.g. nvidia-utils-<version>)",
    ),
    "version-mismatch": NVML_DIAGNOSES["version-mismatch"],
    "no-driver": ("nvidia-smi cannot talk to the driver", INSTALL_FIX),
    "permission": NVML_DIAGNOSES["permission"],
    "timeout": NVML_DIAGNOSES["timeout"],
    "parse": ("nvidia-smi printed XML that cannot be read", "update the driver; report the output"),
}


@pytest.mark.gpuhost_needs("driver")
def test_nvidia_smi_runs(gpuhost_facts: HostFacts) -> None:
    """`nvidia-smi -q -x` runs and lists GPUs: the second source of GPU facts, used where NVML is not."""
    smi = gpuhost_facts.smi
    if not smi.ok:
        _listing_failure(smi, SMI_DIAGNOSES)
    if not smi.gpus:
        fail("nvidia-smi lists no GPU", "the driver found no usable GPU", INSTALL_FIX)


@pytest.mark.gpuhost_needs("nvml", "nvidia_smi")
def test_nvidia_smi_matches_nvml(gpuhost_facts: HostFacts, gpu: GpuInfo) -> None:
    """nvidia-smi reports the same GPU as NVML: UUID, name, PCI address, memory, driver version."""
    smi = gpuhost_facts.smi
    twin = next((g for g in smi.gpus if g.uuid == gpu.uuid), None)
    if twin is None:
        fail(
            f"NVML lists GPU {gpu.index} ({gpu.uuid}) but nvidia-smi does not "
            f"(nvidia-smi lists {', '.join(g.uuid for g in smi.gpus) or 'nothing'})",
            "the GPU is in a bad state, or CUDA_VISIBLE_DEVICES-like filtering differs",
            "`nvidia-smi -q -i <index>`; read `sudo dmesg | grep -i Xid`",
        )
    nvml_view = {
        "name": gpu.name,
        "PCI address": gpu.pci_bus_id,
        "memory MiB": gpu.memory_total_mib,
        "driver version": gpuhost_facts.nvml.driver_version,
    }
    smi_view = {
        "name": twin.name,
        "PCI address": twin.pci_bus_id,
        "memory MiB": twin.memory_total_mib,
        "driver version": smi.driver_version,
    }
    differ = [
        f"{k}: NVML {nvml_view[k]!r}, nvidia-smi {smi_view[k]!r}"
        for k in nvml_view
        if nvml_view[k] != smi_view[k]
    ]
    if differ:
        fail(
            f"NVML and nvidia-smi disagree on GPU {gpu.index}: " + "; ".join(differ),
            "two driver installations side by side (different nvidia-smi and libnvidia-ml), or a mismatch",
            "`which -a nvidia-smi; ldconfig -p | grep libnvidia-ml`; keep one driver installation",
        )


@pytest.mark.gpuhost_needs("gpu_listing")
def test_persistence_mode(gpu: GpuInfo) -> None:
    """Persistence off is a warning: the first CUDA call pays seconds of driver start-up."""
    if gpu.persistence_mode is False:
        warn(
            f"persistence mode is off on GPU {gpu.index} ({gpu.uuid})",
            "nvidia-persistenced is not running, so the driver unloads the GPU between jobs",
            "`sudo systemctl enable --now nvidia-persistenced`",
        )
    print(f"gpuhost.metric persistence_mode={gpu.persistence_mode}")
