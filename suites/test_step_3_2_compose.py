"""Guide step 3.2: compose files reserve GPUs correctly, and a compose service really gets them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_gpuhost.diagnosis import Diagnosis, fail
from pytest_gpuhost.docker.compose import (
    detect_compose,
    diagnose_compose_failure,
    example_compose,
    gpus_in_output,
    project_leftovers,
    sweep_projects,
    up_and_down,
    validate_compose_file,
)
from pytest_gpuhost.docker.containers import ContainerFailure, ensure_image
from pytest_gpuhost.facts.model import HostFacts
from pytest_gpuhost.fixtures.docker import DockerConnection
from pytest_gpuhost.hosts.host import Host
from pytest_gpuhost.settings import Settings

CHECK_VALID = "test_compose_gpu_reservations_valid"
RESERVATION_FIX = (
    "under the service: `deploy: {resources: {reservations: {devices: [{driver: nvidia, count: all, "
    "capabilities: [gpu]}]}}}`; see https://docs.docker.com/compose/how-tos/gpu-support/"
)


def fail_with(diagnosis: Diagnosis) -> None:
    fail(diagnosis.found, diagnosis.cause, diagnosis.fix)


def compose_files(settings: Settings) -> list[str]:
    return [f.strip() for f in (settings.compose or "").split(",") if f.strip()]


@pytest.mark.gpuhost_quick
def test_compose_gpu_reservations_valid(gpuhost_settings: Settings) -> None:
    """Each --gpuhost-compose file's GPU reservations follow Docker's compose rules."""
    assert CHECK_VALID == "test_compose_gpu_reservations_valid"
    files = compose_files(gpuhost_settings)
    if not files:
        pytest.skip("no compose file given (--gpuhost-compose FILE, or ini gpuhost_compose)")
    problems = []
    for file in files:
        reservations, found = validate_compose_file(file)
        problems.extend(found)
        services = sorted({r.service for r in reservations})
        print(f"gpuhost.metric compose.file={file} compose.gpu_services={','.join(services) or 'none'}")
    if problems:
        fail(
            "invalid GPU reservations: " + "; ".join(str(p) for p in problems),
            "Docker refuses the deployment (or gives the service no GPU) when a reservation breaks these rules",
            RESERVATION_FIX,
        )


@pytest.mark.gpuhost_container
@pytest.mark.gpuhost_needs("gpu_listing")
def test_compose_service_sees_gpus(
    gpuhost_docker_connection: DockerConnection,
    gpuhost_host: Host,
    gpuhost_settings: Settings,
    gpuhost_facts: HostFacts,
    tmp_path: Path,
) -> None:
    """`compose up` of a GPU service lists the reserved GPUs, and `down -v` leaves nothing behind."""
    client = gpuhost_docker_connection.require()
    compose = detect_compose(gpuhost_host, gpuhost_settings.timeout)
    if compose is None:
        pytest.skip("neither `docker compose` (the v2 plugin) nor `docker-compose` (v1) is installed")
    files = compose_files(gpuhost_settings)
    if files:
        file = files[0]
    else:
        file = str(tmp_path / "docker-compose.yml")
        Path(file).write_text(example_compose(gpuhost_settings.image))
        try:
            ensure_image(client, gpuhost_settings.image, gpuhost_settings.pull)
        except ContainerFailure as exc:
            fail_with(exc.diagnosis)
    reservations, problems = validate_compose_file(file)
    if problems:
        pytest.skip(f"needs valid reservations: {CHECK_VALID} failed: {problems[0]}")
    if not reservations:
        pytest.skip(f"no service in {file} reserves a GPU")
    reservation = reservations[0]
    sweep_projects(client)
    try:
        run = up_and_down(
            gpuhost_host, compose, file, reservation.service, timeout=max(300.0, gpuhost_settings.timeout)
        )
    except ContainerFailure as exc:  # the compose file could not be copied to a remote host
        fail_with(exc.diagnosis)
    print(
        f"gpuhost.metric compose.command={compose.name!r} compose.version={compose.version} compose.project={run.project}"
    )
    leftovers = project_leftovers(client, run.project)
    if not run.up.ok:
        fail_with(diagnose_compose_failure(run, compose))
    seen = gpus_in_output(run.output)
    expected = reservation.expected_gpus(gpuhost_facts.gpus)
    host_uuids = {g.uuid for g in gpuhost_facts.gpus}
    seen_uuids = {uuid for _, _, uuid in seen}
    print(f"gpuhost.metric compose.gpus_seen={len(seen_uuids)}")
    if not seen_uuids:
        fail(
            f"service {reservation.service!r} of {file} started but listed no GPU "
            "(no `GPU n: ... (UUID: ...)` line in its logs)",
            "its command does not run `nvidia-smi -L`, or the container got no GPU",
            f"`{compose.name} -f {file} up` by hand; the service should run `nvidia-smi -L`",
        )
    wanted = {g.uuid for g in expected} if isinstance(expected, tuple) else None
    if (
        not seen_uuids <= host_uuids
        or (wanted is not None and seen_uuids != wanted)
        or (isinstance(expected, int) and len(seen_uuids) != expected)
    ):
        fail(
            f"service {reservation.service!r} saw GPUs {sorted(seen_uuids)}; its reservation asks for "
            + (f"{sorted(wanted)}" if wanted is not None else f"{expected} GPU(s)")
            + f" of the host's {sorted(host_uuids)}",
            "the reservation is not honoured (a default nvidia runtime with NVIDIA_VISIBLE_DEVICES?), or a GPU "
            "is unusable",
            "compare `docker info | grep -i runtime` and daemon.json; request GPUs only through reservations",
        )
    if leftovers:
        fail(
            f"`{compose.name} down -v` left {', '.join(leftovers)} of project {run.project}",
            "the daemon could not remove them (busy, or a container in a bad state)",
            f"`docker rm -f` them; `docker ps -a --filter label=com.docker.compose.project={run.project}`",
        )
