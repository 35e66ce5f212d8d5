"""Guide step 3.3: a custom CUDA image (a CUDA base plus Python and PyTorch), built or given.

``build_image`` builds a Dockerfile through the SDK with a deadline and the suite's owner label,
and returns the tag; a failed build becomes a ``Diagnosis`` with the end of the build log.

The build's RUN steps use the daemon's default network unless ``network_mode`` says otherwise:
``pip install torch`` needs it. Offline hosts pass ``network_mode="none"`` and a Dockerfile
whose steps need no network (or build elsewhere and ``docker load`` the result).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.timeouts import NativeCallTimeout, call_with_timeout

if TYPE_CHECKING:
    import docker

REPOSITORY = "gpuhost-local/framework"
LABEL_OWNER = "io.pytest-gpuhost"  # the same owner label as the suite's containers
LABEL_DOCKERFILE = "io.pytest-gpuhost.dockerfile"
DEFAULT_BUILD_TIMEOUT = 1800.0
_STEP = re.compile(r"^Step \d+/\d+ : (.+)$")
_OFFLINE = (
    "temporary failure resolving",
    "temporary failure in name resolution",
    "could not resolve",
    "network is unreachable",
    "failed to establish a new connection",
    "no matching distribution found",
    "dial tcp",
    "tls handshake timeout",
)


class ImageUnavailable(Exception):
    """The image could not be built or found; carries the diagnosis."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(str(diagnosis))
        self.diagnosis = diagnosis


def image_tag(dockerfile: Path, buildargs: Mapping[str, str] | None = None) -> str:
    """A tag that changes when the Dockerfile or its build arguments change."""
    digest = hashlib.sha256(dockerfile.read_bytes())
    for key, value in sorted((buildargs or {}).items()):
        digest.update(f"\0{key}={value}".encode())
    return f"{REPOSITORY}:{digest.hexdigest()[:12]}"


def log_tail(build_log: Iterable[Any], lines: int = 8) -> list[str]:
    """The last lines of a build log (the SDK's JSON chunks: ``stream``, ``error``, ``status``)."""
    text: list[str] = []
    for chunk in build_log:
        if isinstance(chunk, Mapping):
            piece = chunk.get("stream") or chunk.get("error") or chunk.get("status") or ""
        else:
            piece = str(chunk)
        text.extend(line.rstrip() for line in str(piece).splitlines() if line.strip())
    return text[-lines:]


def last_step(lines: Iterable[str]) -> str | None:
    """The Dockerfile instruction the build was at: ``FROM nvidia/cuda:...`` from ``Step 1/4 : FROM ...``."""
    step = None
    for line in lines:
        match = _STEP.match(line.strip())
        if match:
            step = match.group(1)
    return step


def diagnose_build_error(
    dockerfile: Path, message: str, tail: list[str], network_mode: str | None, step: str | None = None
) -> Diagnosis:
    joined = " ".join([message, *tail]).lower()
    shown = " / ".join(tail) or message
    if step is not None and step.upper().startswith("FROM "):
        return Diagnosis(
            f"docker build of {dockerfile} cannot get its base image ({step}): {message}",
            "the base image is not on this host and cannot be pulled (an offline host, a wrong name or tag, "
            "or a registry login is needed)",
            "check the FROM line with `docker pull IMAGE`; on an offline host `docker load` the base image first",
        )
    if any(marker in joined for marker in _OFFLINE):
        return Diagnosis(
            f"docker build of {dockerfile} failed fetching packages: {shown}",
            f"the build has no network (network_mode={network_mode or 'default'}; an offline host, a proxy, "
            "or a daemon without a bridge)",
            "build where a registry and PyPI are reachable, `docker save` it, `docker load` it here and pass "
            "it with --gpuhost-workload-image; or set the daemon's proxy",
        )
    if "pull access denied" in joined or "manifest unknown" in joined or "not found: manifest" in joined:
        return Diagnosis(
            f"docker build of {dockerfile} cannot get its base image: {shown}",
            "the FROM image name or tag is wrong, or the host cannot reach the registry",
            "check the FROM line (`docker pull IMAGE` by hand); load the base image with `docker load`",
        )
    return Diagnosis(
        f"docker build of {dockerfile} failed: {message}" + (f"; log ends: {shown}" if tail else ""),
        "a step of the Dockerfile failed",
        f"`docker build -f {dockerfile} {dockerfile.parent}` by hand shows the whole log",
    )


def build_image(
    client: docker.DockerClient,
    dockerfile: str | Path,
    *,
    context: str | Path | None = None,
    tag: str | None = None,
    timeout: float = DEFAULT_BUILD_TIMEOUT,
    network_mode: str | None = None,
    buildargs: Mapping[str, str] | None = None,
    pull: bool = False,
) -> str:
    """Build ``dockerfile`` (context: its folder) within ``timeout`` seconds; return the image's tag.

    On a timeout the daemon may still finish the build in the background; the image then carries
    the owner label, so the suite's sweep can find it.
    """
    import docker as docker_sdk

    path = Path(dockerfile).resolve()
    context_dir = Path(context).resolve() if context is not None else path.parent
    if not path.is_file():
        raise ImageUnavailable(
            Diagnosis(f"no Dockerfile at {path}", "a wrong path", "give the path of an existing Dockerfile")
        )
    tag = tag or image_tag(path, buildargs)
    labels = {LABEL_OWNER: "1", LABEL_DOCKERFILE: str(path)}

    def build() -> Any:
        return client.images.build(
            path=str(context_dir),
            dockerfile=str(path),
            tag=tag,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=pull,
            network_mode=network_mode,
            buildargs=dict(buildargs or {}),
            timeout=int(max(timeout, 1)),
        )

    try:
        call_with_timeout(build, timeout, "docker build")
    except NativeCallTimeout:
        raise ImageUnavailable(
            Diagnosis(
                f"docker build of {path} did not finish within {timeout:g} s",
                "slow downloads (PyTorch wheels are gigabytes) or a hung daemon",
                f"build it once by hand (`docker build -t {tag} -f {path} {context_dir}`) and pass "
                "the tag with --gpuhost-workload-image",
            )
        ) from None
    except docker_sdk.errors.BuildError as exc:
        lines = log_tail(exc.build_log, lines=10_000)
        raise ImageUnavailable(
            diagnose_build_error(path, str(exc.msg), lines[-8:], network_mode, last_step(lines))
        ) from None
    except docker_sdk.errors.APIError as exc:
        raise ImageUnavailable(
            diagnose_build_error(path, str(exc.explanation or exc), [], network_mode)
        ) from None
    except (OSError, TypeError) as exc:
        raise ImageUnavailable(
            Diagnosis(
                f"the build context {context_dir} cannot be sent: {exc}", "an unreadable file", "fix it"
            )
        ) from None
    return tag


def resolve_image(
    client: docker.DockerClient,
    *,
    image: str | None = None,
    dockerfile: str | Path | None = None,
    **build_kwargs: Any,
) -> str:
    """The framework image to run: ``dockerfile`` built here, else the given ``image`` as is."""
    if dockerfile is not None:
        return build_image(client, dockerfile, **build_kwargs)
    if image:
        return image
    raise ValueError("give an image or a Dockerfile")
