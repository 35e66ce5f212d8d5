"""enroot (guide step 3.5): import the image, create a container, start it with the GPUs, each step diagnosed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.hosts.host import CommandResult, Host
from pytest_gpuhost.runtimes.common import RuntimeRun, inside_container_problem, output_tail


@dataclass(frozen=True)
class EnrootPlan:
    """The commands that import, create, start and remove one enroot container."""

    image: str
    workdir: str
    name: str
    env: Mapping[str, str] = field(
        default_factory=lambda: {
            "NVIDIA_VISIBLE_DEVICES": "all",
            "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        }
    )

    @property
    def squashfs(self) -> str:
        return f"{self.workdir.rstrip('/')}/{self.name}.sqsh"

    def import_argv(self) -> list[str]:
        # dockerd:// reads the image from the local Docker daemon: no registry, works offline.
        return ["enroot", "import", "--output", self.squashfs, "--", f"dockerd://{self.image}"]

    def create_argv(self) -> list[str]:
        return ["enroot", "create", "--name", self.name, "--", self.squashfs]

    def start_argv(self, command: Sequence[str]) -> list[str]:
        env = [arg for key, value in self.env.items() for arg in ("--env", f"{key}={value}")]
        return ["enroot", "start", *env, "--", self.name, *command]

    def remove_argv(self) -> list[str]:
        return ["enroot", "remove", "--force", "--", self.name]


def diagnose_enroot(step: str, result: CommandResult, image: str) -> Diagnosis:
    """What a failed ``enroot <step>`` means, from enroot's words."""
    text = result.stdout + "\n" + result.stderr
    lowered = text.lower()
    command = " ".join(result.argv)
    if result.timed_out:
        return Diagnosis(
            f"`{command}` did not finish in time",
            "a large image on a slow disk, or a hung daemon or driver",
            "run the command by hand; `sudo dmesg | grep -i Xid` for a hung GPU",
        )
    inside = inside_container_problem(text)
    if inside is not None:
        return inside
    if step == "import":
        if "permission denied" in lowered and "docker" in lowered:
            return Diagnosis(
                f"enroot cannot read {image} from the Docker daemon: {output_tail(result)}",
                "`enroot import dockerd://` uses the docker CLI, and this user may not use the daemon's socket",
                "run as a user who may use Docker, or import from a registry (`enroot import docker://IMAGE`)",
            )
        if "mksquashfs" in lowered or "squashfs" in lowered:
            return Diagnosis(
                f"enroot cannot build the image's squashfs: {output_tail(result)}",
                "squashfs-tools is missing or too old",
                "`sudo apt-get install squashfs-tools` (or the distribution's package)",
            )
        return Diagnosis(
            f"`{command}` failed: {output_tail(result)}",
            f"enroot cannot import {image} from the local Docker daemon",
            f"`docker image inspect {image}`; run `{command}` by hand",
        )
    if "nvidia-container-cli" in lowered or "98-nvidia" in lowered:
        return Diagnosis(
            f"enroot's NVIDIA hook failed: {output_tail(result)}",
            "enroot gives containers GPUs through libnvidia-container: nvidia-container-cli is missing, "
            "or cannot reach the driver",
            "install libnvidia-container-tools (NVIDIA's repository) and enroot's `enroot+caps` package; "
            "`nvidia-container-cli info` must list the GPUs",
        )
    if "namespace" in lowered or "unshare" in lowered:
        return Diagnosis(
            f"enroot cannot create its user namespace: {output_tail(result)}",
            "unprivileged user namespaces are disabled on this host",
            "`sudo sysctl -w user.max_user_namespaces=65536` (and `kernel.unprivileged_userns_clone=1` on "
            "Debian kernels); `enroot-check` lists what is missing",
        )
    return Diagnosis(
        f"`{command}` failed: {output_tail(result)}",
        f"enroot could not {step} the container",
        f"run `{command}` by hand; `enroot-check` lists the kernel features enroot needs",
    )


def run_enroot(
    host: Host, image: str, command: Sequence[str], *, name: str, import_timeout: float, timeout: float
) -> RuntimeRun:
    """Import ``image`` from dockerd, create and start it with every GPU, run ``command``, clean up."""
    made = host.run(["mktemp", "-d", "/tmp/gpuhost-enroot.XXXXXX"], timeout=timeout)
    if not made.ok or not made.stdout.strip():
        return RuntimeRun(
            "",
            Diagnosis(
                f"no temporary folder for enroot's image: {made.describe()}",
                "/tmp is full or not writable",
                "`df -h /tmp`; free space there",
            ),
            (made,),
        )
    plan = EnrootPlan(image, made.stdout.strip(), name)
    commands: list[CommandResult] = [made]
    output, diagnosis = "", None
    created = False
    try:
        steps = (
            ("import", plan.import_argv(), import_timeout),
            ("create", plan.create_argv(), timeout),
            ("start", plan.start_argv(command), timeout),
        )
        for step, argv, limit in steps:
            result = host.run(argv, timeout=limit)
            commands.append(result)
            created = created or step == "create"  # a failed create may leave a partial root file system
            output = result.stdout
            if not result.ok:
                diagnosis = diagnose_enroot(step, result, image)
                break
    finally:
        if created:
            commands.append(host.run(plan.remove_argv(), timeout=timeout))
        commands.append(host.run(["rm", "-rf", "--", plan.workdir], timeout=timeout))
    return RuntimeRun(output, diagnosis, tuple(commands))
