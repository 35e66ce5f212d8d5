"""What an operator's tooling should do about each finding: one table, from check, Xid or kind to action.

Fleet tooling (a Slurm health check, a drain controller, a ticket bot) does not read diagnoses:
it drains, resets, reboots or sends a GPU back. Every failure and warning therefore carries one
action, looked up in ``RULES``, the only place where findings map to actions
(``docs/actions.md`` renders it). A finding is matched, most specific first, by

1. its ``kind`` (``Diagnosis(..., kind="row-remap-failed")``), when the check gave one;
2. a row of its check whose ``found`` pattern matches the finding (or a pattern row for any check);
3. the Xid codes it names (NVIDIA's Xid catalogue, see ``XID_CATALOG``);
4. the row of its check;
5. the default: ``drain-and-investigate`` for a failure nobody mapped, ``none`` for a warning.

Within one step the strongest action wins, and a host's action is the strongest of its results.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Weakest first: the order decides which action wins for a host.
ACTIONS = ("none", "reconfigure", "reset-gpu", "reboot", "drain-and-investigate", "replace-gpu")
ACTION_TEXT = {
    "none": "nothing to do",
    "reconfigure": "a software fix on the host: apply the diagnosis's FIX",
    "reset-gpu": "reset the GPU (`nvidia-smi -r -i N`, with no process on it), then check again",
    "reboot": "reboot the node, then check again",
    "drain-and-investigate": "take the node out of service until a person has looked at it",
    "replace-gpu": "take the node out of service and send the GPU back (RMA)",
}
DEFAULT_FAILURE = "drain-and-investigate"  # an unmapped failure: a person decides
DEFAULT_WARNING = "none"
FAILED_OUTCOMES = ("failed", "error")
XID_CATALOG = "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html"
_XID = re.compile(r"\bXid\s+(\d+(?:\s*,\s*\d+)*)", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One row: which findings it matches, their action as a failure and as a warning, and why."""

    action: str
    check: str | None = None
    xid: int | None = None
    kind: str | None = None
    found: str | None = None  # a regular expression searched in the finding's FOUND text
    warning: str = DEFAULT_WARNING
    why: str = ""

    def matches_found(self, found: str) -> bool:
        return self.found is not None and re.search(self.found, found, re.IGNORECASE) is not None


_NVIDIA = f"NVIDIA Xid catalogue, immediate action {{}} ({XID_CATALOG})"
_HEALTH_UNREADABLE = r"the health fields of .* cannot be read"
_SMI_MISMATCH = r"version mismatch|Driver/library version mismatch"

RULES: tuple[Rule, ...] = (
    # -- kinds: a check may name one with Diagnosis(..., kind=...) --------------------------------
    Rule("replace-gpu", kind="row-remap-failed", why="the GPU has no spare rows left: RMA"),
    Rule("reset-gpu", kind="uncorrectable-ecc", why="a reset retires or remaps the failing memory"),
    Rule("drain-and-investigate", kind="gpu-missing", why="a GPU is gone from the bus: reseat or replace"),
    Rule(
        "drain-and-investigate", kind="pcie-degraded", why="a link below its maximum: reseat, check the riser"
    ),
    Rule(
        "drain-and-investigate",
        kind="floor-missed",
        why="below the hardware floor: cooling, power or a bad part",
    ),
    Rule("reconfigure", kind="config", why="a software setting on the host"),
    # -- Xid codes (the cause or FOUND says "Xid N") ------------------------------------------------
    Rule("reset-gpu", xid=48, why=_NVIDIA.format("RESET_GPU") + "; the reset remaps the row"),
    Rule("reset-gpu", xid=63, why=_NVIDIA.format("RESET_GPU") + ": the remapping is applied at reset"),
    Rule("replace-gpu", xid=64, why=_NVIDIA.format("RESET_GPU, then CONTACT_SUPPORT") + ": remapping failed"),
    Rule("reset-gpu", xid=74, why=_NVIDIA.format("RESET_GPU") + "; check the NVLink if it recurs"),
    Rule("reboot", xid=79, why=_NVIDIA.format("RESTART_BM") + ": a GPU off the bus cannot be reset in place"),
    Rule("reset-gpu", xid=94, why=_NVIDIA.format("RESTART_APP") + "; the reset applies the pending remap"),
    Rule("reset-gpu", xid=95, why=_NVIDIA.format("RESET_GPU")),
    Rule("reset-gpu", xid=119, why=_NVIDIA.format("RESET_GPU") + "; update the driver if it recurs"),
    Rule("reset-gpu", xid=120, why=_NVIDIA.format("RESET_GPU") + "; update the driver if it recurs"),
    Rule("reset-gpu", xid=140, why=_NVIDIA.format("RESET_GPU")),
    Rule("drain-and-investigate", xid=154, why="the driver names the recovery it needs in the message"),
    # -- findings any check can report ---------------------------------------------------------
    Rule("reset-gpu", found=_HEALTH_UNREADABLE, why="the GPU or the driver no longer answers"),
    Rule(
        "reboot", found=r"Driver/library version mismatch", why="the loaded module is older than the library"
    ),
    # -- each check of the shipped suite -----------------------------------------------------------
    Rule("drain-and-investigate", check="test_host_reachable", why="the node does not answer over SSH"),
    Rule(
        "reboot",
        check="test_nvidia_gpus_on_pci_bus",
        found=r"cannot reach",
        why="GPUs listed but unreachable",
    ),
    Rule(
        "drain-and-investigate", check="test_nvidia_gpus_on_pci_bus", why="a missing GPU: reseat or replace"
    ),
    Rule("drain-and-investigate", check="test_burn", why="heat, power or wrong results under load"),
    Rule("reconfigure", check="test_nvidia_kernel_module_loaded"),
    Rule("reconfigure", check="test_nouveau_not_loaded"),
    Rule("reconfigure", check="test_driver_version_file_readable"),
    Rule("reconfigure", check="test_device_nodes"),
    Rule("reconfigure", check="test_gpu_device_node"),
    Rule("reboot", check="test_nvml_initialises", found=_SMI_MISMATCH, why="module and library differ"),
    Rule("reset-gpu", check="test_nvml_initialises", found=r"`timeout`", why="NVML hangs on a stuck GPU"),
    Rule("reconfigure", check="test_nvml_initialises"),
    Rule("reboot", check="test_nvidia_smi_runs", found=_SMI_MISMATCH, why="module and library differ"),
    Rule(
        "reset-gpu", check="test_nvidia_smi_runs", found=r"`timeout`", why="nvidia-smi hangs on a stuck GPU"
    ),
    Rule("reconfigure", check="test_nvidia_smi_runs"),
    Rule("drain-and-investigate", check="test_nvidia_smi_matches_nvml"),
    Rule("reconfigure", check="test_persistence_mode", warning="reconfigure"),
    Rule("reconfigure", check="test_docker_daemon_answers"),
    Rule("reconfigure", check="test_docker_versions"),
    Rule("reconfigure", check="test_docker_not_from_snap"),
    Rule("reconfigure", check="test_docker_socket_not_world_writable"),
    Rule("reconfigure", check="test_daemon_json_parses"),
    Rule("reconfigure", check="test_cgroup_driver_keeps_gpus"),
    Rule("reconfigure", check="test_toolkit_installed"),
    Rule("reconfigure", check="test_nvidia_runtime_registered"),
    Rule("reconfigure", check="test_default_runtime_policy"),
    Rule("reconfigure", check="test_rootless_toolkit_config"),
    Rule("reconfigure", check="test_cdi_specs_parse"),
    Rule("reconfigure", check="test_cdi_spec_names_gpu"),
    Rule("reconfigure", check="test_cdi_spec_matches_driver"),
    Rule("reconfigure", check="test_cdi_spec_host_paths_exist"),
    Rule("reconfigure", check="test_container_sees_all_gpus"),
    Rule("reconfigure", check="test_container_sees_gpu"),
    Rule("reconfigure", check="test_container_without_gpu_request_sees_none"),
    Rule("reconfigure", check="test_compose_gpu_reservations_valid"),
    Rule("reconfigure", check="test_compose_service_sees_gpus"),
    Rule("reconfigure", check="test_custom_image_sees_the_gpus"),
    Rule("reconfigure", check="test_limits_hold_with_gpus"),
    Rule("reconfigure", check="test_container_shm_size"),
    Rule("reconfigure", check="test_container_memlock_ulimit"),
    Rule("reconfigure", check="test_docker_access_path", warning="reconfigure"),
    Rule("reconfigure", check="test_enroot_sees_gpus"),
    Rule("reconfigure", check="test_podman_cdi_sees_gpus"),
    Rule(
        "reconfigure",
        check="test_matmul_matches_cpu_reference",
        found=r"neither PyTorch nor CuPy|has no |asked for .* but computed on",
        why="the image or the GPU selection",
    ),
    Rule("drain-and-investigate", check="test_matmul_matches_cpu_reference", why="wrong or slow results"),
    Rule("drain-and-investigate", check="test_baseline_regressions", why="slower than this host's baseline"),
    Rule("reset-gpu", check="test_ecc_mode", found=r"change is pending", warning="reset-gpu"),
    Rule("reconfigure", check="test_ecc_mode", warning="reconfigure", why="`nvidia-smi -e 1`, then a reset"),
    Rule(
        "drain-and-investigate",
        check="test_no_uncorrectable_ecc_errors",
        found=r"in the lifetime",
        why="past uncorrectable errors: review the GPU's history",
    ),
    Rule(
        "reset-gpu", check="test_no_uncorrectable_ecc_errors", why="uncorrectable ECC: a reset remaps the row"
    ),
    Rule("drain-and-investigate", check="test_correctable_ecc_errors", why="a stream of correctable errors"),
    Rule("reset-gpu", check="test_no_retired_pages_pending", why="the retirement takes effect at reset"),
    Rule(
        "replace-gpu",
        check="test_row_remapping",
        found=r"row remapping failed",
        why="no spare rows left: RMA",
    ),
    Rule("reset-gpu", check="test_row_remapping", why="a pending remap takes effect at reset"),
    Rule("reset-gpu", check="test_no_xid_errors", why="an Xid without a row of its own"),
    Rule("reboot", check="test_no_xid_on_unlisted_gpus", why="a GPU fell off the bus"),
    Rule(
        "drain-and-investigate",
        check="test_pcie_link",
        why="a PCIe link below its maximum: reseat, check the riser",
    ),
    Rule("drain-and-investigate", check="test_no_clock_slowdown", why="cooling or power"),
    Rule("reset-gpu", check="test_mig_mode", found=r"change is pending", why="a MIG change applies at reset"),
    Rule("reconfigure", check="test_mig_mode"),
    Rule("reconfigure", check="test_fabric_manager"),
    Rule("drain-and-investigate", check="test_gpu_fabric_registered", why="the NVLink fabric is not up"),
    Rule("reconfigure", check="test_image_cuda_requirement", warning="reconfigure"),
    # -- toolkit wiring (guide step 2.3) -------------------------------------------------------------
    Rule("reconfigure", check="test_access_mode_wiring", warning="reconfigure"),
    Rule("reconfigure", check="test_gpus_survive_daemon_reload", warning="reconfigure"),
    # -- the periodic re-check (guide step 4.2) ------------------------------------------------------
    Rule("reconfigure", check="test_advisory_table_current", warning="reconfigure"),
    Rule("reconfigure", check="test_toolkit_has_security_fixes", why="upgrade the toolkit past the fix"),
    Rule("reconfigure", check="test_docker_release_line_maintained", warning="reconfigure"),
    Rule("reconfigure", check="test_driver_branch_supported", warning="reconfigure"),
    Rule("reboot", check="test_no_reboot_pending", why="updated NVIDIA packages take effect at reboot"),
    Rule(
        "reboot",
        check="test_loaded_driver_matches_installed",
        why="the installed driver is not the loaded one",
    ),
    # -- load safety: a GPU that is already busy is not measured -------------------------------------
    Rule("reconfigure", check="test_no_stray_load", why="stop the stray load, then re-run"),
    # -- the hardware tier ---------------------------------------------------------------------------
    Rule(
        "drain-and-investigate", check="test_hbm_bandwidth", why="memory slower than its floor or its peers"
    ),
    Rule(
        "replace-gpu",
        check="test_hbm_patterns",
        found=r"read back differently",
        why="HBM that does not hold what was written: RMA",
    ),
    Rule(
        "replace-gpu", check="test_hbm_patterns", found=r"new (un)?correctable|remapped", why="ECC under test"
    ),
    Rule("drain-and-investigate", check="test_hbm_patterns", why="the test could not cover the memory"),
    Rule(
        "drain-and-investigate", check="test_pcie_bandwidth", why="a slow host link: reseat, check the riser"
    ),
    Rule("drain-and-investigate", check="test_gpu_pair_p2p", why="a slow or missing peer link"),
    Rule("drain-and-investigate", check="test_nccl_all_reduce", why="a slow or wrong collective"),
    Rule(
        "reset-gpu",
        check="test_nvlink_state",
        found=r"replay|recovery|CRC",
        why="NVLink errors: reset, then watch",
    ),
    Rule("drain-and-investigate", check="test_nvlink_state", why="NVLinks down: reseat or replace"),
)


def rank(action: str) -> int:
    """An action's strength; an unknown name counts as the default for failures."""
    return ACTIONS.index(action) if action in ACTIONS else ACTIONS.index(DEFAULT_FAILURE)


def strongest(actions: Iterable[str]) -> str:
    return max(actions, key=rank, default="none")


def xid_codes(*texts: str) -> tuple[int, ...]:
    """The Xid codes a finding names: ``Xid 79``, ``Xid 48, 63``."""
    codes: list[int] = []
    for text in texts:
        for match in _XID.finditer(text or ""):
            codes.extend(int(code) for code in re.findall(r"\d+", match.group(1)))
    return tuple(dict.fromkeys(codes))


def check_rules(check: str | None) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if r.check is not None and r.check == check)


def action_for(
    check: str | None,
    found: str,
    cause: str = "",
    *,
    kind: str | None = None,
    warning: bool = False,
    rules: Sequence[Rule] = RULES,
) -> tuple[str, Rule | None]:
    """The action of one finding and the row that gave it (None: the default)."""

    def pick(candidates: Sequence[Rule]) -> tuple[str, Rule | None] | None:
        if not candidates:
            return None
        chosen = max(candidates, key=lambda r: rank(r.warning if warning else r.action))
        return (chosen.warning if warning else chosen.action), chosen

    mine = [r for r in rules if r.check in (None, check) and r.xid is None]
    codes = xid_codes(found, cause)
    steps: list[Sequence[Rule]] = [
        [r for r in mine if kind is not None and r.kind == kind],
        [r for r in mine if r.check == check and r.kind is None and r.matches_found(found)],
        [r for r in mine if r.check is None and r.kind is None and r.matches_found(found)],
        [r for r in rules if r.xid is not None and r.xid in codes],
        [r for r in mine if r.check == check and r.kind is None and r.found is None],
    ]
    for step in steps:
        picked = pick(step)
        if picked is not None:
            return picked
    return (DEFAULT_WARNING if warning else DEFAULT_FAILURE), None


# -- results (the JSON report's records) -------------------------------------------------------


def finding_action(check: str | None, diagnosis: Mapping[str, Any] | None, text: str, warning: bool) -> str:
    """The action of a failure or warning given as a parsed diagnosis, else its raw text."""
    if diagnosis:
        found, cause = str(diagnosis.get("found", "")), str(diagnosis.get("cause", ""))
        kind = diagnosis.get("kind")
    else:
        found, cause, kind = text or "", "", None
    return action_for(check, found, cause, kind=str(kind) if kind else None, warning=warning)[0]


def result_action(result: Mapping[str, Any]) -> str:
    """A result's action: its failure's and its warnings', the strongest; ``none`` when it passed clean."""
    found: list[str] = []
    if result.get("outcome") in FAILED_OUTCOMES:
        found.append(
            finding_action(result.get("check"), result.get("diagnosis"), result.get("message") or "", False)
        )
    for item in result.get("warnings") or ():
        found.append(
            finding_action(result.get("check"), item.get("diagnosis"), item.get("message") or "", True)
        )
    return strongest(found)


def annotate(result: dict[str, Any]) -> dict[str, Any]:
    """Add ``action`` to a result and to each of its warnings (in place; returns it)."""
    for item in result.get("warnings") or ():
        item["action"] = finding_action(
            result.get("check"), item.get("diagnosis"), item.get("message") or "", True
        )
    result["action"] = result_action(result)
    return result


def host_actions(results: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per host: the strongest action, and the result and finding that gave it (the first such)."""
    hosts: dict[str, dict[str, Any]] = {}
    for result in results:
        action = str(result.get("action") or result_action(result))
        host = str(result.get("host"))
        current = hosts.get(host)
        if current is not None and rank(action) <= rank(current["action"]):
            continue
        hosts[host] = {
            "action": action,
            "nodeid": result.get("nodeid") if action != "none" else None,
            "gpu": (result.get("gpu") or {}).get("index") if action != "none" else None,
            "found": _finding_text(result) if action != "none" else None,
        }
    return hosts


def _finding_text(result: Mapping[str, Any]) -> str:
    diagnosis = result.get("diagnosis")
    if result.get("outcome") in FAILED_OUTCOMES:
        if diagnosis:
            return str(diagnosis.get("found", ""))
        lines = [line for line in str(result.get("message") or "").splitlines() if line.strip()]
        return lines[-1].strip() if lines else str(result.get("outcome"))
    for item in result.get("warnings") or ():
        if item.get("diagnosis"):
            return str(item["diagnosis"].get("found", ""))
        return str(item.get("message", ""))
    return ""


def summary_line(host: str, entry: Mapping[str, Any], width: int = 160) -> str:
    """``gpu03: replace-gpu GPU 5: row remapping failed on ...``: one line per host."""
    action = str(entry.get("action") or "none")
    if action == "none":
        return f"{host}: none"
    found = " ".join(str(entry.get("found") or "").split())
    gpu = entry.get("gpu")
    where = f"GPU {gpu}: " if gpu is not None else ""
    line = f"{host}: {action} {where}{found}"
    return line if len(line) <= width else line[: width - 1] + "…"


# -- the table as documentation -----------------------------------------------------------------


def render_markdown() -> str:
    """The rule table for docs/actions.md (a test keeps the page current)."""

    def match(rule: Rule) -> str:
        parts = []
        if rule.kind:
            parts.append(f"kind `{rule.kind}`")
        if rule.xid is not None:
            parts.append(f"Xid {rule.xid}")
        if rule.check:
            parts.append(f"`{rule.check}`")
        if rule.found:
            parts.append(f"FOUND matches `{rule.found.replace('|', '&#124;')}`")
        return ", ".join(parts)

    lines = ["| matches | failure | warning | why |", "| --- | --- | --- | --- |"]
    for rule in RULES:
        lines.append(
            f"| {match(rule)} | `{rule.action}` | `{rule.warning}` | {rule.why.replace('|', '&#124;')} |"
        )
    return "\n".join(lines) + "\n"
