"""The verdicts on the NVSwitch fabric: Fabric Manager installed and matching the driver, each GPU's fabric state."""

from __future__ import annotations

from pytest_gpuhost.criteria.health import Verdict, unavailable_verdict
from pytest_gpuhost.facts.fabric import FabricFacts
from pytest_gpuhost.facts.health import F_FABRIC, HealthFacts

FM_INSTALL = (
    "install Fabric Manager of exactly the driver's version (e.g. `sudo apt-get install "
    "nvidia-fabricmanager-{branch}={driver}-1`; on B200 and later also nvlsm), then "
    "`sudo systemctl enable --now nvidia-fabricmanager`; `sudo journalctl -u nvidia-fabricmanager` tells why it stops"
)


def judge_fabric_manager(fabric: FabricFacts, driver_version: str | None, fabric_gpus: int) -> Verdict:
    """NVSwitch systems need nv-fabricmanager running, of the driver's version."""
    v = Verdict()
    v.metric("nvswitches", len(fabric.nvswitches))
    if not fabric.nvswitches:
        if fabric_gpus:
            v.skip = (
                "not applicable here: no NVSwitch is visible on this machine; its "
                f"{fabric_gpus} fabric-attached GPU(s) are managed by a Fabric Manager outside it "
                "(their registration is checked per GPU by test_gpu_fabric_registered)"
            )
        else:
            v.skip = (
                "not applicable: no NVSwitch on this host (no PCI device of vendor 0x10de, class 0x0680); "
                "Fabric Manager is needed on NVSwitch systems (HGX/DGX) only"
            )
        return v
    driver = driver_version or "<driver version>"
    fix = FM_INSTALL.format(branch=driver.split(".")[0], driver=driver)
    v.metric("fabricmanager_service", fabric.service_state)
    v.metric("fabricmanager_version", fabric.version)
    active = fabric.service_state == "active" or bool(fabric.process_running)
    if not active:
        v.fail(
            f"nv-fabricmanager is not running on this NVSwitch system ({len(fabric.nvswitches)} NVSwitches; "
            f"systemctl: {fabric.service_state or 'unknown'})",
            "without Fabric Manager the NVSwitches are not programmed: GPUs stay unregistered and CUDA "
            "fails with 'system not yet initialized' (error 802)",
            fix,
        )
    if fabric.version is None:
        v.fail(
            f"the Fabric Manager version cannot be read: {fabric.version_error}",
            "nv-fabricmanager is not installed or not on PATH",
            fix,
        )
    elif driver_version and fabric.version != driver_version:
        v.fail(
            f"Fabric Manager {fabric.version} does not match driver {driver_version}",
            "Fabric Manager refuses to run with a driver of another version (often after a driver upgrade)",
            fix,
        )
    return v


def judge_gpu_fabric(h: HealthFacts, nvswitches: int) -> Verdict:
    """On a fabric (NVSwitch, HGX board) the GPU's registration completed without error."""
    v = Verdict()
    why = h.unavailable.get(F_FABRIC)
    if h.fabric_state is None and not nvswitches:
        reason = why.detail if why else "no fabric state"
        v.skip = f"not applicable: {h.label} ({h.name}) is not on an NVLink fabric ({reason})"
        return v
    if h.fabric_state is None:
        if why is not None and not why.unsupported:
            unavailable_verdict(v, h.name, h.label, why, F_FABRIC)
        else:
            v.skip = f"not applicable: {F_FABRIC} is not supported on {h.name}"
        return v
    v.metric("fabric_state", h.fabric_state.replace(" ", "_"))
    if h.fabric_state != "completed":
        v.fail(
            f"the NVLink fabric registration of {h.label} is {h.fabric_state!r}, not completed",
            "Fabric Manager is not running, not yet done, or cannot program the NVSwitches; "
            "CUDA fails with 'system not yet initialized' until it completes",
            "`sudo systemctl status nvidia-fabricmanager`; `nvidia-smi -q -i "
            f"{h.index} | grep -A 3 Fabric`; on a VM, the provider's Fabric Manager must finish",
        )
    elif h.fabric_status:
        v.fail(
            f"the NVLink fabric registration of {h.label} completed with an error: {h.fabric_status}",
            "Fabric Manager could not attach the GPU to the fabric",
            "`sudo journalctl -u nvidia-fabricmanager`; reset the GPU or reboot, then restart Fabric Manager",
        )
    return v
