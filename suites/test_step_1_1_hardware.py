"""Guide step 1.1: the GPUs are in the machine and the driver sees every one of them."""

from __future__ import annotations

import pytest

from pytest_gpuhost.diagnosis import fail
from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.settings import Settings

pytestmark = pytest.mark.gpuhost_quick

BUS_FIX = (
    "look for the reason in `sudo dmesg | grep -i -e NVRM -e Xid` (Xid 79: fallen off the bus); "
    "`nvidia-smi -q -i <address>`; reboot, and reseat or replace the GPU if it stays missing"
)


def test_nvidia_gpus_on_pci_bus(gpuhost_facts: HostFacts, gpuhost_settings: Settings) -> None:
    """PCI bus == driver's GPU list == --gpuhost-expect-gpus. A missing GPU is named by address."""
    facts = gpuhost_facts
    listing = facts.listing
    if not facts.preconditions["gpu_present"].ok:
        fail(
            "no NVIDIA GPU: no NVIDIA display or 3D controller (vendor 0x10de) in /sys/bus/pci/devices, "
            "and no NVIDIA driver lists one",
            "this machine has no NVIDIA GPU, or it is not passed through to this VM or container",
            "run on a GPU host (a cloud VM needs a GPU instance type); `lspci -nn | grep -i nvidia` "
            "shows what the bus has",
        )
    on_bus = {p.address for p in facts.pci}
    lost = [g for g in listing.gpus if g.error]
    if lost:
        fail(
            "the driver lists GPUs it cannot reach: "
            + "; ".join(f"index {g.index} ({g.error})" for g in lost),
            "the GPU has fallen off the bus or needs a reset",
            BUS_FIX,
        )
    if listing.ok and on_bus:
        seen = {g.pci_bus_id for g in listing.gpus}
        unseen = sorted(on_bus - seen)
        if unseen:
            drivers = {p.address: p.driver or "no driver" for p in facts.pci}
            fail(
                f"{len(on_bus)} NVIDIA GPU(s) on the PCI bus, {len(seen)} listed by {listing.source}; "
                "not listed: " + ", ".join(f"{a} (bound to {drivers[a]})" for a in unseen),
                "the GPU failed to initialise, fell off the bus, or is bound to another driver (vfio-pci)",
                BUS_FIX,
            )
    expected = gpuhost_settings.expect_gpus
    if expected is not None:
        count = len(listing.gpus) if listing.ok else len(on_bus)
        if count != expected:
            where = ", ".join(sorted(on_bus)) or "none"
            fail(
                f"{count} GPU(s) found, {expected} expected (--gpuhost-expect-gpus {expected}); "
                f"PCI addresses on the bus: {where}",
                "a GPU fell off the bus or is disabled, or this host was built with a different GPU count",
                BUS_FIX + "; if the count is right, correct --gpuhost-expect-gpus",
            )
