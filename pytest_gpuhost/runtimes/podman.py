"""Podman with CDI (guide step 3.5): the run and remove commands, and what its failures mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.hosts.host import CommandResult, Host
from pytest_gpuhost.runtimes.common import RuntimeRun, inside_container_problem, output_tail


def podman_run_argv(
    image: str,
    command: Sequence[str],
    *,
    name: str,
    labels: Mapping[str, str],
    pull: str,
    devices: Sequence[str] = ("nvidia.com/gpu=all",),
    options: Sequence[str] = (),
) -> list[str]:
    """``podman run`` with CDI devices, offline, unprivileged, labelled and removed on exit.

    ``options`` go before the image (the tests pass ``--ulimit`` for a sandbox that refuses rlimits).
    """
    label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    device_args = [arg for device in devices for arg in ("--device", device)]
    return [
        "podman",
        "run",
        "--rm",
        "--name",
        name,
        *label_args,
        "--network",
        "none",
        "--security-opt",
        "no-new-privileges",
        f"--pull={pull}",
        *device_args,
        *options,
        image,
        *command,
    ]


def podman_remove_argv(name: str) -> list[str]:
    # --time 0: no grace period, a PID 1 that ignores SIGTERM would hold the removal for 10 s.
    return ["podman", "rm", "--force", "--ignore", "--time", "0", name]


def diagnose_podman(result: CommandResult, image: str) -> Diagnosis:
    """What a failed ``podman run`` with CDI devices means, from Podman's words."""
    text = result.stdout + "\n" + result.stderr
    lowered = text.lower()
    command = " ".join(result.argv)
    if result.timed_out:
        return Diagnosis(
            f"`{command}` did not finish in time",
            "a pull from an unreachable registry, or a hung driver",
            "run the command by hand; `--pull=never` with the image loaded into Podman's storage",
        )
    inside = inside_container_problem(text)
    if inside is not None:
        return inside
    if "unresolvable cdi devices" in lowered:
        return Diagnosis(
            f"Podman cannot resolve the CDI devices: {output_tail(result)}",
            "no CDI spec names nvidia.com/gpu=all, or the spec is stale (generated before a driver "
            "upgrade or a GPU change)",
            "`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`, then `nvidia-ctk cdi list`",
        )
    if "image not known" in lowered or "short-name" in lowered or "pinging container registry" in lowered:
        return Diagnosis(
            f"{image} is not in Podman's image storage: {output_tail(result)}",
            "Podman keeps its own images, apart from Docker's; an offline host cannot pull",
            f"`podman pull {image}`, or copy it from Docker: `docker save {image} | podman load`",
        )
    if "rlimit" in lowered:
        return Diagnosis(
            f"the OCI runtime refuses Podman's resource limits: {output_tail(result)}",
            "Podman asks the runtime to set the container's rlimits to this user's hard limits, and the "
            "kernel refuses (a nested container or VM without CAP_SYS_RESOURCE)",
            "run Podman where it is not nested, or lower the limits it passes "
            "(`--ulimit host`, or `default_ulimits` in containers.conf)",
        )
    if "oci runtime" in lowered and "not found" in lowered:
        return Diagnosis(
            f"Podman has no OCI runtime: {output_tail(result)}",
            "crun (or runc) is not installed",
            "`sudo apt-get install crun` (or the distribution's package)",
        )
    if "executable file not found" in lowered and "nvidia-smi" in lowered:
        return Diagnosis(
            f"nvidia-smi is not in the Podman container: {output_tail(result)}",
            "the CDI spec does not mount the driver's utilities",
            "regenerate the spec with the toolkit: `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
        )
    return Diagnosis(
        f"`{command}` failed: {output_tail(result)}",
        "see Podman's message",
        f"run `{command}` by hand; `podman info` shows its runtime and storage",
    )


def run_podman(host: Host, argv: Sequence[str], name: str, image: str, timeout: float) -> RuntimeRun:
    """Run ``argv`` (from ``podman_run_argv``); remove the named container whatever happened."""
    commands: list[CommandResult] = []
    try:
        result = host.run(argv, timeout=timeout)
        commands.append(result)
    finally:
        # --rm removes it on exit; a run killed at its timeout leaves it to this.
        commands.append(host.run(podman_remove_argv(name), timeout=timeout))
    diagnosis = None if result.ok else diagnose_podman(result, image)
    return RuntimeRun(result.stdout, diagnosis, tuple(commands))
