"""Guide step 3.5: the user's path to the daemon, enroot and Podman with CDI.

enroot is not installed here: its commands are checked as built and against a fake ``enroot``
that answers like the real one. Podman 4.3 is real where installed: its refusals are this
machine's words, and a CDI spec of a test kind injects a fake nvidia-smi so that the whole path
(CDI resolution, mount, parsing, parity, removal) runs without a GPU.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from docker_support import TEST_IMAGE, busybox_image, docker_client_or_skip
from dockerlab import busybox_rootfs_tar
from pytester_support import GpuhostPytester

from pytest_gpuhost.criteria.limits import access_warning
from pytest_gpuhost.criteria.runtimes import parity_problem
from pytest_gpuhost.docker.containers import session_labels
from pytest_gpuhost.docker.smi import SMI_QUERY, parse_smi_csv
from pytest_gpuhost.facts.docker_engine import EngineFacts, SocketInfo, gather_engine, parse_engine
from pytest_gpuhost.facts.limits import access_path
from pytest_gpuhost.facts.model import GpuInfo
from pytest_gpuhost.hosts.host import DEFAULT_COMMAND_TIMEOUT, CommandResult, LocalHost
from pytest_gpuhost.runtimes.common import parse_runtime_version, probe_runtime
from pytest_gpuhost.runtimes.enroot import EnrootPlan, diagnose_enroot, run_enroot
from pytest_gpuhost.runtimes.podman import diagnose_podman, podman_remove_argv, podman_run_argv, run_podman

H100 = GpuInfo(
    index=0,
    uuid="GPU-042f1913-64c6-43ac-27c6-466e2d9041b0",
    name="NVIDIA H100 80GB HBM3",
    pci_bus_id="0000:00:06.0",
    memory_total_mib=81559,
)
DRIVER = "580.159.04"
H100_CSV = f"0, {H100.uuid}, {H100.name}, {DRIVER}, 81559"
SUITE = Path(__file__).resolve().parent.parent / "suites" / "test_step_3_5_runtimes.py"
# What Podman 4.3.1 printed on this machine (Debian 12, root, runc 1.1.5, inside a VM sandbox).
PODMAN_NO_IMAGE = "Error: gpuhost-test-busybox:1: image not known"
PODMAN_NO_CDI = "Error: setting up CDI devices: unresolvable CDI devices nvidia.com/gpu=all"
PODMAN_RLIMIT = (
    "Error: runc: runc create failed: unable to start container process: error during container init: "
    "error setting rlimits for ready process: error setting rlimit type 7: operation not permitted: "
    "OCI permission denied"
)
# This sandbox refuses the rlimits Podman asks for by default; these it accepts.
SANDBOX_ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


# -- the user's path to the daemon ----------------------------------------------------------------


def engine(
    uid: int = 0, gid: int = 999, mode: int = 0o660, docker_host: str | None = None, rootless: bool = False
) -> EngineFacts:
    options = ["name=seccomp,profile=default", *(["name=rootless"] if rootless else [])]
    sock = SocketInfo("/run/docker.sock", True, mode=mode, uid=uid, gid=gid, owner="root", group="docker")
    return parse_engine(
        {}, {"SecurityOptions": options}, docker_host=docker_host, sdk_version=None, socket=sock
    )


@pytest.mark.parametrize(
    ("uid", "groups", "facts", "kind", "warned"),
    [
        (0, {0}, engine(), "root", True),
        (1000, {1000, 999}, engine(), "docker-group", True),
        (1000, {1000}, engine(), "other", False),
        (1000, {1000}, engine(mode=0o666), "other", False),
        (1000, {1000}, engine(rootless=True), "rootless", False),
        (1000, {999}, engine(docker_host="ssh://gpu-07"), "remote", False),
        (1000, {999}, engine(uid=1000), "other", False),
    ],
    ids=["root", "docker-group", "acl", "world-writable", "rootless", "remote", "owner"],
)
def test_access_path_is_named(
    uid: int, groups: set[int], facts: EngineFacts, kind: str, warned: bool
) -> None:
    path = access_path(uid, groups, facts)
    assert path.kind == kind, path
    finding = access_warning(path, "user alice (uid 1000)")
    assert (finding is not None) == warned
    if finding is not None:
        assert finding.found.startswith(f"user alice (uid 1000) reaches the Docker daemon as {kind}: ")
        assert "docker group membership equals root on the host" in finding.cause
        assert "rootless Docker" in finding.fix


def test_access_path_of_this_machine() -> None:
    """Against the real daemon: root here, the docker group on CI runners."""
    client = docker_client_or_skip()
    facts = gather_engine(client, LocalHost(), 30)
    path = access_path(os.getuid(), {os.getgid(), *os.getgroups()}, facts)
    print(f"gpuhost.metric docker.access={path.kind}")
    assert path.kind == ("root" if os.getuid() == 0 else "docker-group"), path


# -- commands and their texts -----------------------------------------------------------------------


def result(argv: Sequence[str], rc: int | None, out: str = "", err: str = "", **kw: bool) -> CommandResult:
    return CommandResult(tuple(argv), rc, out, err, **kw)


def test_versions_parse() -> None:
    assert parse_runtime_version("3.4.1\n") == "3.4.1"
    assert parse_runtime_version("podman version 4.3.1\n") == "4.3.1"
    assert parse_runtime_version("no version here") is None


class ScriptedHost:
    """A host whose commands answer from a table (keyed by the enroot verb or the program)."""

    name = "scripted"

    def __init__(self, answers: dict[str, tuple[int | None, str, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        self.calls.append(tuple(argv))
        key = argv[1] if argv[0] in ("enroot", "podman") else argv[0]
        if key not in self.answers and argv[0] not in self.answers:
            return result(argv, 0)
        rc, out, err = self.answers.get(key, self.answers.get(argv[0], (0, "", "")))
        if rc is None:
            return result(argv, None, missing=True, err=f"No such file or directory: '{argv[0]}'")
        return result(argv, rc, out, err)

    def read_text(self, path: str) -> str | None:
        return None

    def listdir(self, path: str) -> list[str]:
        return []

    def exists(self, path: str) -> bool:
        return False

    def readlink(self, path: str) -> str | None:
        return None


def test_probe_runtime() -> None:
    missing = probe_runtime(ScriptedHost({"enroot": (None, "", "")}), ["enroot", "version"], 5)
    assert (missing.found, missing.version) == (False, None)
    found = probe_runtime(ScriptedHost({"version": (0, "3.4.1\n", "")}), ["enroot", "version"], 5)
    assert (found.found, found.version, found.error) == (True, "3.4.1", None)
    broken = probe_runtime(
        ScriptedHost({"--version": (1, "", "libfoo.so: not found")}), ["podman", "--version"], 5
    )
    assert broken.found and broken.error == "`podman --version` exited with 1: libfoo.so: not found"


def test_enroot_commands() -> None:
    plan = EnrootPlan("gpuhost-base:latest", "/tmp/gpuhost-enroot.x1", "gpuhost-enroot-1")
    assert plan.import_argv() == [
        "enroot", "import", "--output", "/tmp/gpuhost-enroot.x1/gpuhost-enroot-1.sqsh", "--",
        "dockerd://gpuhost-base:latest",
    ]  # fmt: skip
    assert plan.create_argv() == [
        "enroot", "create", "--name", "gpuhost-enroot-1", "--", "/tmp/gpuhost-enroot.x1/gpuhost-enroot-1.sqsh"
    ]  # fmt: skip
    assert plan.start_argv(["nvidia-smi", "-L"]) == [
        "enroot", "start", "--env", "NVIDIA_VISIBLE_DEVICES=all", "--env",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility", "--", "gpuhost-enroot-1", "nvidia-smi", "-L",
    ]  # fmt: skip
    assert plan.remove_argv() == ["enroot", "remove", "--force", "--", "gpuhost-enroot-1"]


def test_run_enroot_cleans_up_after_every_step() -> None:
    ok = ScriptedHost({"mktemp": (0, "/tmp/gpuhost-enroot.ab12\n", ""), "start": (0, H100_CSV + "\n", "")})
    run = run_enroot(ok, "img", SMI_QUERY, name="n1", import_timeout=600, timeout=60)
    assert run.diagnosis is None and parse_smi_csv(run.output)[0].uuid == H100.uuid
    verbs = [c[1] if c[0] == "enroot" else c[0] for c in ok.calls]
    assert verbs == ["mktemp", "import", "create", "start", "remove", "rm"]
    assert ok.calls[-1] == ("rm", "-rf", "--", "/tmp/gpuhost-enroot.ab12")
    # A failed import created nothing to remove, but the folder still goes.
    bad_import = ScriptedHost(
        {"mktemp": (0, "/tmp/gpuhost-enroot.cd34\n", ""), "import": (1, "", "[ERROR] No such image")}
    )
    run = run_enroot(bad_import, "img", SMI_QUERY, name="n2", import_timeout=600, timeout=60)
    assert (
        run.diagnosis is not None and "cannot import img from the local Docker daemon" in run.diagnosis.cause
    )
    assert [c[1] if c[0] == "enroot" else c[0] for c in bad_import.calls] == ["mktemp", "import", "rm"]
    hook = (
        1,
        "",
        "[ERROR] Command not found: nvidia-container-cli, see https://github.com/NVIDIA/libnvidia-container\n"
        "[ERROR] /etc/enroot/hooks.d/98-nvidia.sh exited with return code 1\n",
    )
    bad_start = ScriptedHost({"mktemp": (0, "/tmp/gpuhost-enroot.ef56\n", ""), "start": hook})
    run = run_enroot(bad_start, "img", SMI_QUERY, name="n3", import_timeout=600, timeout=60)
    assert run.diagnosis is not None and run.diagnosis.found.startswith("enroot's NVIDIA hook failed")
    assert "libnvidia-container-tools" in run.diagnosis.fix
    assert ("enroot", "remove", "--force", "--", "n3") in bad_start.calls
    no_tmp = ScriptedHost({"mktemp": (1, "", "mktemp: failed to create directory: No space left on device")})
    run = run_enroot(no_tmp, "img", SMI_QUERY, name="n4", import_timeout=600, timeout=60)
    assert run.diagnosis is not None and "no temporary folder" in run.diagnosis.found
    assert len(no_tmp.calls) == 1


@pytest.mark.parametrize(
    ("step", "stderr", "expected"),
    [
        (
            "import",
            "permission denied while trying to connect to the Docker daemon socket",
            "this user may not use",
        ),
        ("import", "mksquashfs: command not found", "squashfs-tools"),
        (
            "start",
            "enroot-nsenter: failed to create user namespace: Operation not permitted",
            "user namespaces",
        ),
        ("start", "Failed to initialize NVML: Unknown Error", "not the GPUs' device nodes"),
        ("create", "something else", "could not create the container"),
    ],
)
def test_enroot_errors_are_diagnosed(step: str, stderr: str, expected: str) -> None:
    diagnosis = diagnose_enroot(step, result(["enroot", step, "x"], 1, "", stderr), "img")
    assert expected in str(diagnosis)


def test_podman_commands() -> None:
    argv = podman_run_argv(
        "img:1", ["nvidia-smi", "-L"], name="gpuhost-p-1", labels={"io.pytest-gpuhost": "1"}, pull="never"
    )
    assert argv == [
        "podman", "run", "--rm", "--name", "gpuhost-p-1", "--label", "io.pytest-gpuhost=1", "--network", "none",
        "--security-opt", "no-new-privileges", "--pull=never", "--device", "nvidia.com/gpu=all", "img:1",
        "nvidia-smi", "-L",
    ]  # fmt: skip
    assert podman_remove_argv("gpuhost-p-1") == [
        "podman",
        "rm",
        "--force",
        "--ignore",
        "--time",
        "0",
        "gpuhost-p-1",
    ]


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (PODMAN_NO_IMAGE, "not in Podman's image storage"),
        (PODMAN_NO_CDI, "nvidia-ctk cdi generate"),
        (PODMAN_RLIMIT, "refuses Podman's resource limits"),
        ('Error: default OCI runtime "crun" not found: invalid argument', "no OCI runtime"),
        ("Error: something new", "see Podman's message"),
    ],
)
def test_podman_errors_are_diagnosed(stderr: str, expected: str) -> None:
    assert expected in str(diagnose_podman(result(["podman", "run"], 125, "", stderr), "img"))


def test_parity_compares_uuid_name_driver_memory() -> None:
    row = (H100.uuid, H100.name, DRIVER, 81559)
    assert parity_problem("podman", "img", [row], [H100], DRIVER) is None
    missing = parity_problem("podman", "img", [], [H100], DRIVER)
    assert missing is not None
    assert (
        missing.found
        == f"a container of img run by podman with all GPUs sees none; the host has ['{H100.uuid}']"
    )
    stale = parity_problem("enroot", "img", [(H100.uuid, H100.name, "570.86.15", 81559)], [H100], DRIVER)
    assert stale is not None
    assert stale.found == (
        "GPU 0 in a container run by enroot: name, driver, memory = "
        "('NVIDIA H100 80GB HBM3', '570.86.15', 81559); on the host ('NVIDIA H100 80GB HBM3', '580.159.04', 81559)"
    )


# -- the real Podman ------------------------------------------------------------------------------


def podman_or_skip() -> str:
    path = shutil.which("podman")
    if path is None:
        pytest.skip("podman is not installed (apt-get install podman)")
    return path


@pytest.fixture(scope="module")
def podman_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The busybox image in Podman's own storage, under a unique tag; removed afterwards."""
    podman_or_skip()
    tar = tmp_path_factory.mktemp("podman") / "busybox.tar"
    tar.write_bytes(busybox_rootfs_tar())
    tag = f"localhost/gpuhost-test-busybox-{secrets.token_hex(4)}:1"
    subprocess.run(
        ["podman", "import", "--quiet", str(tar), tag], check=True, capture_output=True, timeout=60
    )
    try:
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "--force", tag], check=False, capture_output=True, timeout=60)


def podman_left(name: str) -> str:
    listed = subprocess.run(
        ["podman", "ps", "--all", "--quiet", "--filter", f"name={name}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return listed.stdout.strip()


def test_real_podman_refusals_are_diagnosed(podman_image: str) -> None:
    host = LocalHost()
    absent = podman_run_argv(
        "localhost/gpuhost-absent:0", ["true"], name="gh-absent", labels={}, pull="never"
    )
    run = run_podman(host, absent, "gh-absent", "localhost/gpuhost-absent:0", timeout=60)
    assert run.diagnosis is not None and "image not known" in run.diagnosis.found
    assert "docker save localhost/gpuhost-absent:0 | podman load" in run.diagnosis.fix
    device = f"gpuhost.test/gpu=absent-{secrets.token_hex(3)}"
    argv = podman_run_argv(podman_image, ["true"], name="gh-nocdi", labels={}, pull="never", devices=[device])
    run = run_podman(host, argv, "gh-nocdi", podman_image, timeout=60)
    assert run.diagnosis is not None, run
    assert f"unresolvable CDI devices {device}" in run.diagnosis.found
    assert "nvidia-ctk cdi generate" in run.diagnosis.fix


def test_real_podman_default_rlimits(podman_image: str) -> None:
    """This sandbox refuses Podman's default rlimits; elsewhere the container simply runs."""
    name = f"gh-rlimit-{secrets.token_hex(3)}"
    argv = podman_run_argv(podman_image, ["true"], name=name, labels={}, pull="never", devices=())
    run = run_podman(LocalHost(), argv, name, podman_image, timeout=60)
    if run.diagnosis is not None:
        assert "error setting rlimit" in run.diagnosis.found, run.diagnosis
        assert "refuses Podman's resource limits" in run.diagnosis.found
    assert podman_left(name) == ""


@pytest.fixture
def cdi_test_spec(tmp_path: Path) -> Iterator[str]:
    """A CDI spec of kind gpuhost.test/gpu that mounts a fake nvidia-smi; in /var/run/cdi, then gone."""
    podman_or_skip()
    if os.geteuid() != 0:
        pytest.skip("writing a CDI spec to /var/run/cdi needs root")
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{H100_CSV}'\n")
    smi.chmod(0o755)
    spec_dir = Path("/var/run/cdi")
    made_dir = not spec_dir.exists()
    spec_dir.mkdir(parents=True, exist_ok=True)
    name = f"gpuhost-test-{secrets.token_hex(3)}"
    spec = {
        "cdiVersion": "0.5.0",
        "kind": "gpuhost.test/gpu",
        "devices": [
            {
                "name": name,
                "containerEdits": {
                    "env": ["GPUHOST_FAKE_GPU=1"],
                    "mounts": [
                        {"hostPath": str(smi), "containerPath": "/bin/nvidia-smi", "options": ["ro", "bind"]}
                    ],
                },
            }
        ],
    }
    path = spec_dir / f"{name}.json"
    path.write_text(json.dumps(spec))
    try:
        yield f"gpuhost.test/gpu={name}"
    finally:
        path.unlink(missing_ok=True)
        if made_dir:
            with_contents = list(spec_dir.iterdir())
            if not with_contents:
                spec_dir.rmdir()


def test_real_podman_cdi_path_end_to_end(podman_image: str, cdi_test_spec: str) -> None:
    """CDI resolution, the injected nvidia-smi, its CSV, parity with the host, and the removal."""
    check = "test_real_podman_cdi_path_end_to_end"
    name = f"gh-cdi-{secrets.token_hex(3)}"
    argv = podman_run_argv(
        podman_image,
        SMI_QUERY,
        name=name,
        labels=session_labels(check),
        pull="never",
        devices=[cdi_test_spec],
        options=SANDBOX_ULIMITS,
    )
    run = run_podman(LocalHost(), argv, name, podman_image, timeout=60)
    assert run.diagnosis is None, run
    rows = parse_smi_csv(run.output)
    print(f"gpuhost.metric podman.gpus={len(rows)}")
    inside = [(r.uuid, r.name, r.driver_version, r.memory_total_mib) for r in rows]
    assert parity_problem("podman", podman_image, inside, [H100], DRIVER) is None
    other = GpuInfo(1, "GPU-ffffffff-0000-0000-0000-000000000000", H100.name, "0000:00:07.0", 81559)
    mismatch = parity_problem("podman", podman_image, inside, [H100, other], DRIVER)
    assert mismatch is not None and "the host has" in mismatch.found
    assert podman_left(name) == ""


def test_real_podman_timeout_still_removes(podman_image: str) -> None:
    name = f"gh-timeout-{secrets.token_hex(3)}"
    argv = podman_run_argv(
        podman_image, ["sleep", "30"], name=name, labels={}, pull="never", devices=(), options=SANDBOX_ULIMITS
    )
    run = run_podman(LocalHost(), argv, name, podman_image, timeout=3)
    assert run.diagnosis is not None and "did not finish in time" in run.diagnosis.found
    assert podman_left(name) == ""


# -- the shipped checks -----------------------------------------------------------------------------

_PREPEND_PATH = """

_gpuhost_make_host = pytest_gpuhost_make_host


def pytest_gpuhost_make_host(config):
    host = _gpuhost_make_host(config)
    host.env["PATH"] = {bin_dir!r} + os.pathsep + host.env["PATH"]
    return host
"""

FAKE_ENROOT = """#!/bin/sh
echo "$*" >> {log}
verb=$1
shift
case "$verb" in
    version) echo 3.4.1 ;;
    import)
        while [ "$1" != "--" ]; do
            if [ "$1" = "--output" ]; then out=$2; fi
            shift
        done
        echo "import $out" >> {log}
        : > "$out" ;;
    create|remove) ;;
    start)
        if [ -e {fail} ]; then
            echo "[ERROR] Command not found: nvidia-container-cli" >&2
            echo "[ERROR] /etc/enroot/hooks.d/98-nvidia.sh exited with return code 1" >&2
            exit 1
        fi
        echo '{csv}' ;;
    *) exit 2 ;;
esac
"""


def suite_args(*args: str) -> tuple[str, ...]:
    return (
        "-p",
        "pytest_gpuhost.fixtures.runtimes",
        "-p",
        "pytest_gpuhost.fixtures.docker",
        "-rs",
        "-s",
        *args,
    )


def fake_enroot_host(gp: GpuhostPytester, fail_start: bool) -> Path:
    bin_dir = gp.work / "runtime-bin"
    bin_dir.mkdir()
    log = gp.work / "enroot.log"
    fail = gp.work / "enroot-fail"
    if fail_start:
        fail.touch()
    script = bin_dir / "enroot"
    script.write_text(FAKE_ENROOT.format(log=str(log), fail=str(fail), csv=H100_CSV))
    script.chmod(0o755)
    gp.setup("h100", extra_conftest=_PREPEND_PATH.format(bin_dir=str(bin_dir)))
    (gp.pytester.path / SUITE.name).write_text(SUITE.read_text())
    return log


@pytest.mark.parametrize("fail_start", [False, True], ids=["ok", "hook-fails"])
def test_suite_enroot_with_a_fake_enroot(gpuhost_pytester: GpuhostPytester, fail_start: bool) -> None:
    client = docker_client_or_skip()
    busybox_image(client)
    log = fake_enroot_host(gpuhost_pytester, fail_start)
    result = gpuhost_pytester.run_plain(
        *suite_args("--gpuhost-image", TEST_IMAGE, "--gpuhost-pull", "never", "-k", "enroot", SUITE.name)
    )
    out = result.stdout.str()
    calls = log.read_text().splitlines()
    verbs = [line.split()[0] for line in calls]
    assert verbs == ["version", "import", "import", "create", "start", "remove"], calls
    squashfs = calls[2].split()[1]
    assert f"dockerd://{TEST_IMAGE}" in calls[1] and not Path(squashfs).exists()  # the folder is removed
    assert "gpuhost.metric enroot.version=3.4.1" in out
    if fail_start:
        result.assert_outcomes(failed=1, deselected=2)
        assert "FAILED test_enroot_sees_gpus: enroot's NVIDIA hook failed" in out
    else:
        result.assert_outcomes(passed=1, deselected=2)
        assert "gpuhost.metric enroot.gpus=1 host_gpus=1" in out


def test_suite_without_enroot_is_not_applicable(gpuhost_pytester: GpuhostPytester) -> None:
    gpuhost_pytester.setup("h100")
    (gpuhost_pytester.pytester.path / SUITE.name).write_text(SUITE.read_text())
    if shutil.which("enroot"):
        pytest.skip("enroot is installed on this machine")
    result = gpuhost_pytester.run_plain(*suite_args("-k", "enroot or access", SUITE.name))
    result.assert_outcomes(
        passed=1, skipped=1, deselected=1, warnings=result.parseoutcomes().get("warnings", 0)
    )
    out = result.stdout.str()
    assert "not applicable: enroot is not installed" in out
    kind = "root" if os.getuid() == 0 else "docker-group"
    assert f"gpuhost.metric docker.access={kind}" in out
    assert f"reaches the Docker daemon as {kind}" in out


def test_suite_podman_needs_a_cdi_spec_then_diagnoses_the_real_refusal(
    gpuhost_pytester: GpuhostPytester, podman_image: str
) -> None:
    """The spec under the fake root satisfies the suite; the real Podman finds none in /etc/cdi."""
    if any(Path(d).is_dir() and any(Path(d).glob("*nvidia*")) for d in ("/etc/cdi", "/var/run/cdi")):
        pytest.skip("this machine has an NVIDIA CDI spec: Podman would resolve the devices")
    fake = gpuhost_pytester.setup("h100")
    (gpuhost_pytester.pytester.path / SUITE.name).write_text(SUITE.read_text())
    args = suite_args("--gpuhost-image", podman_image, "--gpuhost-pull", "never", "-k", "podman", SUITE.name)
    result = gpuhost_pytester.run_plain(*args)
    result.assert_outcomes(skipped=1, deselected=2)
    assert "needs a CDI spec: none of kind nvidia.com/gpu in /etc/cdi, /var/run/cdi" in result.stdout.str()
    spec = {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [
            {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
            {"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
        ],
    }
    (fake.root / "etc" / "cdi").mkdir(parents=True)
    (fake.root / "etc" / "cdi" / "nvidia.json").write_text(json.dumps(spec))
    result = gpuhost_pytester.run_plain(*args)
    out = result.stdout.str()
    result.assert_outcomes(failed=1, deselected=2)
    assert "gpuhost.metric podman.version=" in out
    assert (
        "FAILED test_podman_cdi_sees_gpus: Podman cannot resolve the CDI devices: "
        "Error: setting up CDI devices: unresolvable CDI devices nvidia.com/gpu=all" in out
    )
    assert (
        subprocess.run(
            [
                "podman",
                "ps",
                "--all",
                "--quiet",
                "--filter",
                "label=io.pytest-gpuhost.check=test_podman_cdi_sees_gpus",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        == ""
    )


def test_runtime_facts_import_no_docker_sdk() -> None:
    """enroot and Podman hosts may have no Docker at all: the facts need no SDK to load."""
    modules = "pytest_gpuhost.facts.limits, pytest_gpuhost.runtimes.enroot, pytest_gpuhost.runtimes.podman"
    code = f"import sys, {modules}; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
