"""Gather a host's facts once and derive the preconditions that later checks depend on."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from pytest_gpuhost.facts.model import GpuListing, HostFacts, KernelFacts, PciGpu, Precondition
from pytest_gpuhost.facts.nvml import read_nvml
from pytest_gpuhost.facts.smi import SMI_QUERY, read_smi
from pytest_gpuhost.facts.system import REMOTE_READS, gather_kernel, scan_pci
from pytest_gpuhost.hosts.batch import Reads, batched, command
from pytest_gpuhost.hosts.host import Host

# Each precondition is owned by the check that reports its failure; the checks that need it are
# skipped with a reason that names that check.
CHECK_GPU_PRESENT = "test_nvidia_gpus_on_pci_bus"
CHECK_DRIVER = "test_nvidia_kernel_module_loaded"
CHECK_DRIVER_VERSION_FILE = "test_driver_version_file_readable"
CHECK_NVML = "test_nvml_initialises"
CHECK_SMI = "test_nvidia_smi_runs"
REMOTE_NVML = "NVML answers only on the machine pytest runs on; this host is read through nvidia-smi"


def derive_preconditions(
    pci: tuple[PciGpu, ...],
    kernel: KernelFacts,
    nvml_ok: bool,
    nvml_error: str | None,
    smi_ok: bool,
    smi_error: str | None,
    gpu_count: int,
) -> dict[str, Precondition]:
    gpu_present = Precondition(
        "gpu_present",
        ok=bool(pci or kernel.proc_gpus or gpu_count),
        check=CHECK_GPU_PRESENT,
        reason="no NVIDIA GPU on the PCI bus",
    )

    def chained(name: str, check: str, ok: bool, reason: str, parent: Precondition) -> Precondition:
        if not parent.ok:
            return Precondition(name, ok=False, check=parent.check, reason=parent.reason)
        return Precondition(name, ok=ok, check=check, reason=reason)

    if "nvidia" not in kernel.modules:
        driver = chained("driver", CHECK_DRIVER, False, "the nvidia kernel module is not loaded", gpu_present)
    elif kernel.version_error:
        driver = chained("driver", CHECK_DRIVER_VERSION_FILE, False, kernel.version_error, gpu_present)
    else:
        driver = chained("driver", CHECK_DRIVER, True, "", gpu_present)
    nvml = chained("nvml", CHECK_NVML, nvml_ok, nvml_error or "", driver)
    smi = chained("nvidia_smi", CHECK_SMI, smi_ok, smi_error or "", driver)
    # Per-GPU checks need a GPU listing from either source.
    listing_parent = nvml if nvml.ok or not smi.ok else smi
    gpus = chained(
        "gpu_listing",
        listing_parent.check,
        listing_parent.ok and gpu_count > 0,
        listing_parent.reason or "the driver lists no GPU",
        listing_parent,
    )
    return {p.name: p for p in (gpu_present, driver, nvml, smi, gpus)}


def gather_host_facts(
    host: Host,
    timeout: float,
    nvml_loader: Callable[[], ModuleType] | None = None,
    use_nvml: bool = True,
    ahead: Reads | None = None,
) -> HostFacts:
    """All facts of steps 1.1 and 2.1 for ``host``. NVML is read only where pytest runs.
    ``ahead``: what a later step will ask, carried by this round trip (``hosts.batch.batched``)."""
    with batched(host, REMOTE_READS + command(SMI_QUERY, timeout), ahead):  # a remote host: one round trip
        pci = scan_pci(host)
        kernel = gather_kernel(host)
        if use_nvml:
            nvml = read_nvml(timeout, nvml_loader)
        else:
            nvml = GpuListing("nvml", ok=False, error=REMOTE_NVML, error_kind="remote")
        smi = read_smi(host, timeout)
    listing = nvml if nvml.ok or not smi.ok else smi
    preconditions = derive_preconditions(
        pci, kernel, nvml.ok, nvml.error, smi.ok, smi.error, len(listing.gpus)
    )
    if not use_nvml and preconditions["driver"].ok:
        # Not a failure of the host: checks that need NVML do not apply here (no owning check).
        preconditions["nvml"] = Precondition("nvml", ok=False, check="", reason=REMOTE_NVML)
    # The burn's telemetry: NVML where pytest runs, an nvidia-smi stream on a remote host.
    source = preconditions["nvml" if use_nvml else "nvidia_smi"]
    preconditions["telemetry"] = Precondition(
        "telemetry", ok=source.ok, check=source.check, reason=source.reason
    )
    return HostFacts(host.name, pci, kernel, nvml, smi, preconditions)
