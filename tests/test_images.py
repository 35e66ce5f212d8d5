"""Guide step 3.3: building the framework image, its failures as diagnoses, and the framework probe."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from pytester_support import GpuhostPytester

from pytest_gpuhost.docker.images import (
    LABEL_DOCKERFILE,
    LABEL_OWNER,
    REPOSITORY,
    ImageUnavailable,
    build_image,
    diagnose_build_error,
    image_tag,
    last_step,
    resolve_image,
)

PROBE = Path(__file__).resolve().parent.parent / "pytest_gpuhost" / "workloads" / "probe_framework.py"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "Dockerfile"


def remove(client: docker.DockerClient, tag: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.images.remove(tag, force=True)


def test_build_from_a_local_base(client: docker.DockerClient, image: str, tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        f'FROM {image}\nCOPY marker.txt /marker.txt\nRUN echo built > /built\nCMD ["cat", "/built"]\n'
    )
    (tmp_path / "marker.txt").write_text("context was sent\n")
    tag = build_image(client, dockerfile, network_mode="none", timeout=120)
    try:
        assert tag == image_tag(dockerfile.resolve())
        assert tag.startswith(f"{REPOSITORY}:")
        labels = client.images.get(tag).labels or {}
        assert labels[LABEL_OWNER] == "1" and labels[LABEL_DOCKERFILE] == str(dockerfile.resolve())
        output = client.containers.run(
            tag, ["cat", "/built", "/marker.txt"], network_mode="none", remove=True
        )
        assert output == b"built\ncontext was sent\n"
        assert resolve_image(client, dockerfile=dockerfile, network_mode="none", timeout=120) == tag  # cached
    finally:
        remove(client, tag)


def test_failing_step_becomes_a_diagnosis(client: docker.DockerClient, image: str, tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {image}\nRUN echo compiling && echo 'no space left' >&2 && false\n")
    tag = image_tag(dockerfile.resolve())
    try:
        with pytest.raises(ImageUnavailable) as caught:
            build_image(client, dockerfile, network_mode="none", timeout=120)
        diagnosis = caught.value.diagnosis
        assert diagnosis.found.startswith(f"docker build of {dockerfile.resolve()} failed: The command")
        assert "returned a non-zero code: 1" in diagnosis.found
        assert "compiling" in diagnosis.found  # the log's tail
        assert diagnosis.cause == "a step of the Dockerfile failed"
        assert f"docker build -f {dockerfile.resolve()}" in diagnosis.fix
    finally:
        remove(client, tag)


def test_missing_base_image_on_an_offline_host(client: docker.DockerClient, tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM gpuhost-no-such-image:never\nRUN true\n")
    with pytest.raises(ImageUnavailable) as caught:
        build_image(client, dockerfile, network_mode="none", timeout=120)
    diagnosis = caught.value.diagnosis
    assert "cannot get its base image (FROM gpuhost-no-such-image:never)" in diagnosis.found
    assert "docker load" in diagnosis.fix


def test_no_dockerfile(client: docker.DockerClient, tmp_path: Path) -> None:
    with pytest.raises(ImageUnavailable) as caught:
        build_image(client, tmp_path / "Dockerfile")
    assert caught.value.diagnosis.found == f"no Dockerfile at {(tmp_path / 'Dockerfile').resolve()}"


class SlowApi:
    def build(self, **kwargs: Any) -> Iterator[dict[str, str]]:
        time.sleep(2)
        return iter(())


class SlowClient:
    api = SlowApi()


def test_build_timeout(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    with pytest.raises(ImageUnavailable) as caught:
        build_image(SlowClient(), dockerfile, timeout=0.2)  # type: ignore[arg-type]
    assert "did not finish within 0.2 s" in caught.value.diagnosis.found
    assert "--gpuhost-workload-image" in caught.value.diagnosis.fix


def test_offline_pip_is_named() -> None:
    tail = [
        "Step 3/4 : RUN python3 -m pip install torch",
        "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError: "
        "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution'",
        "ERROR: No matching distribution found for torch",
    ]
    diagnosis = diagnose_build_error(
        Path("/x/Dockerfile"), "The command returned 1", tail, None, last_step(tail)
    )
    assert "failed fetching packages" in diagnosis.found
    assert "network_mode=default" in diagnosis.cause


def test_resolve_image_prefers_the_dockerfile() -> None:
    assert resolve_image(SlowClient(), image="nvidia/cuda:13.0.1-base-ubuntu24.04") == (  # type: ignore[arg-type]
        "nvidia/cuda:13.0.1-base-ubuntu24.04"
    )
    with pytest.raises(ValueError):
        resolve_image(SlowClient())  # type: ignore[arg-type]


def test_tag_follows_content_and_build_args(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    first = image_tag(dockerfile)
    assert image_tag(dockerfile, {"TORCH_INDEX": "https://download.pytorch.org/whl/cu130"}) != first
    dockerfile.write_text("FROM scratch\nLABEL x=1\n")
    assert image_tag(dockerfile) != first


def test_example_dockerfile_is_a_cuda_base_with_torch() -> None:
    lines = [line for line in EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("FROM nvidia/cuda:") and "-runtime-ubuntu" in lines[0]
    assert any("pip install" in line and "torch" in line for line in lines)


# -- the probe script -------------------------------------------------------------------------


def run_probe(pythonpath: Path | None) -> dict[str, Any]:
    """The probe without site-packages (-S), so only the fake frameworks under ``pythonpath`` exist."""
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath else {}
    proc = subprocess.run(
        [sys.executable, "-S", str(PROBE)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def fake_package(root: Path, name: str, body: str) -> None:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)


def test_probe_without_frameworks() -> None:
    result = run_probe(None)
    assert result["torch"] is None and result["cupy"] is None
    assert result["cuda_available"] is False and result["device_count"] == 0
    assert result["error"] == "neither torch nor cupy is installed in this Python"


def test_probe_with_torch_on_two_gpus(tmp_path: Path) -> None:
    fake_package(
        tmp_path,
        "torch",
        "__version__ = '2.8.0+cu128'\n"
        "class version:\n    cuda = '12.8'\n"
        "class cuda:\n"
        "    is_available = staticmethod(lambda: True)\n"
        "    device_count = staticmethod(lambda: 2)\n"
        "    get_device_name = staticmethod(lambda i: 'NVIDIA H200')\n",
    )
    result = run_probe(tmp_path)
    assert result["torch"] == "2.8.0+cu128"
    assert result["cuda_available"] is True and result["device_count"] == 2
    assert result["devices"] == ["NVIDIA H200", "NVIDIA H200"]
    assert result["error"] is None


def test_probe_with_torch_without_cuda_and_cupy(tmp_path: Path) -> None:
    fake_package(
        tmp_path,
        "torch",
        "__version__ = '2.8.0+cpu'\nclass version:\n    cuda = None\n"
        "class cuda:\n    is_available = staticmethod(lambda: False)\n",
    )
    fake_package(
        tmp_path,
        "cupy",
        "__version__ = '13.6.0'\nclass cuda:\n    class runtime:\n"
        "        getDeviceCount = staticmethod(lambda: 1)\n",
    )
    result = run_probe(tmp_path)
    assert result["torch"] == "2.8.0+cpu" and result["cupy"] == "13.6.0"
    assert result["device_count"] == 1 and result["cuda_available"] is True  # CuPy sees the GPU
    assert result["error"] == "torch: CUDA is not available (torch built for CUDA None)"


def test_probe_with_a_broken_torch(tmp_path: Path) -> None:
    fake_package(tmp_path, "torch", "raise OSError('libcudart.so.12: cannot open shared object file')\n")
    result = run_probe(tmp_path)
    assert result["torch"] is None
    assert result["error"] == "torch: OSError: libcudart.so.12: cannot open shared object file"


def test_a_build_shows_its_steps(
    client: docker.DockerClient, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_gpuhost.docker import images

    lines: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        images, "POLICY", images.PullPolicy(sink=lambda t, f: lines.append((t, f)), progress_after=0)
    )
    monkeypatch.setattr(images, "PROGRESS_EVERY_S", 0.0)
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {image}\nRUN sleep 1\nRUN echo done > /done\n")
    tag = build_image(client, dockerfile, network_mode="none", timeout=120)
    try:
        assert any(re.search(r"Step 2/\d+ : RUN sleep 1", text) and not final for text, final in lines), lines
        assert lines[-1][1] and lines[-1][0].startswith(
            f"gpuhost: built {tag} from {dockerfile.resolve()} in "
        )
    finally:
        remove(client, tag)


def test_the_suite_builds_from_the_dockerfile_and_removes_it_at_the_end(
    gpuhost_pytester: GpuhostPytester, client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    """--gpuhost-dockerfile: the workload image is built under its content tag and removed at the end."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {image}\nCOPY marker /marker\n")  # no RUN: this daemon may have no bridge
    (tmp_path / "marker").write_text("built\n")
    tag = image_tag(dockerfile.resolve())
    gpuhost_pytester.setup("h100")
    result = gpuhost_pytester.run_plain(
        "--gpuhost-dockerfile", str(dockerfile), "--gpuhost-pull", "never", "-k", "test_custom_image", "-rs"
    )
    result.stdout.fnmatch_lines(
        [f"gpuhost: workload image {tag}: built from {dockerfile}", f"gpuhost: built {tag} *"]
    )
    assert "Traceback" not in result.stdout.str()
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(tag)
