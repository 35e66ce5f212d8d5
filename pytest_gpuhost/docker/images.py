"""Images the suite runs: pulled with progress and deadlines, or built (guide step 3.3).

``pull_image`` pulls through the daemon's streaming API and reports layers, bytes, rate and
time left to a progress sink (the terminal, see ``image_progress``); it has an overall deadline
of its own (``--gpuhost-pull-timeout``: multi-gigabyte images take minutes, far beyond the
per-call timeout) and a stall limit (``--gpuhost-pull-stall``: no byte for that long is its own
diagnosis). ``ensure_image`` applies the pull policy and names, when an image cannot be had, the
two ways to bring it to an offline host.

``build_image`` builds a Dockerfile through the SDK with a deadline and the suite's owner label,
and returns the tag; a failed build becomes a ``Diagnosis`` with the end of the build log.

The build's RUN steps use the daemon's default network unless ``network_mode`` says otherwise:
``pip install torch`` needs it. Offline hosts pass ``network_mode="none"`` and a Dockerfile
whose steps need no network (or build elsewhere and ``docker load`` the result).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuhost.diagnosis import Diagnosis
from pytest_gpuhost.facts.image_cuda import image_env
from pytest_gpuhost.settings import Settings
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


ProgressSink = Callable[[str, bool], None]
"""Receives a progress line; the bool is True for the last line of a pull or build."""

PROGRESS_AFTER_S = 2.0  # quick pulls print only their closing line
PROGRESS_EVERY_S = 1.0


@dataclass
class PullPolicy:
    """The session's pull limits and progress sink (set once by the session, see ``configure``)."""

    timeout: float = 1800.0
    stall: float = 120.0
    sink: ProgressSink | None = None
    progress_after: float = PROGRESS_AFTER_S


POLICY = PullPolicy()


def configure(timeout: float, stall: float, sink: ProgressSink | None) -> None:
    """The limits and progress sink of this session's pulls and builds."""
    POLICY.timeout, POLICY.stall, POLICY.sink = timeout, stall, sink


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"  # pragma: no cover


def human_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class PullProgress:
    """Bytes per layer from the daemon's pull events, and what the terminal line says."""

    image: str
    started: float
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # id: (current, total)
    done: set[str] = field(default_factory=set)
    last_bytes_at: float = 0.0
    error: str | None = None

    def __post_init__(self) -> None:
        self.last_bytes_at = self.started

    def feed(self, event: Mapping[str, Any], now: float) -> None:
        """One event of ``POST /images/create``: per-layer status and ``progressDetail``."""
        if "error" in event:
            self.error = str(event.get("error") or event.get("errorDetail"))
            return
        layer = event.get("id")
        status = str(event.get("status", ""))
        if not layer or status.startswith(("Pulling from", "Digest", "Status")):
            return
        layer = str(layer)
        current, total = self.layers.get(layer, (0, 0))
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail:
            new = int(detail.get("current") or 0)
            total = int(detail.get("total") or total)
            if new > current:
                self.last_bytes_at = now
            current = new
        elif status in ("Download complete", "Pull complete", "Already exists"):
            self.done.add(layer)
            current = total = max(total, current)
            self.last_bytes_at = now
        elif status in ("Extracting", "Verifying Checksum"):
            # Unpacking a multi-gigabyte layer takes minutes without a byte downloaded: not a stall.
            self.last_bytes_at = now
        self.layers[layer] = (current, total)

    @property
    def received(self) -> int:
        return sum(current for current, _ in self.layers.values())

    @property
    def expected(self) -> int:
        return sum(total for _, total in self.layers.values())

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.received / elapsed
        text = (
            f"gpuhost: pulling {self.image}: {len(self.done)}/{len(self.layers)} layers, "
            f"{human_bytes(self.received)} of {human_bytes(self.expected)}, {human_bytes(rate)}/s"
        )
        left = self.expected - self.received
        if rate > 0 and left > 0:
            text += f", about {human_seconds(left / rate)} left"
        return text + f" ({human_seconds(elapsed)} so far)"

    def summary(self, now: float) -> str:
        return (
            f"gpuhost: pulled {self.image}: {len(self.layers)} layers, {human_bytes(self.received)} "
            f"in {now - self.started:.1f} s"
        )


def _split_name(image: str) -> tuple[str, str]:
    """``repo:tag`` (a registry port is not a tag) into ``(repo, tag)``; a digest stays in the repo."""
    if "@" in image:
        return image, ""
    head, _, last = image.rpartition("/")
    if ":" in last:
        name, tag = last.rsplit(":", 1)
        return (f"{head}/{name}" if head else name), tag
    return image, "latest"


OFFLINE_CAUSE = (
    "the host has no route to the registry (offline, a firewall, a proxy the daemon does not use), "
    "the name is wrong, or a login is needed"
)


def offline_diagnosis(image: str, found: str, cause: str = OFFLINE_CAUSE) -> Diagnosis:
    """An image this host cannot get: the two ways to bring it named, with the image."""
    return Diagnosis(
        found,
        cause,
        f"on a connected machine `docker pull {image} && docker save {image} | ssh THIS-HOST docker load`; "
        'or give the daemon a registry mirror ("registry-mirrors" in /etc/docker/daemon.json, or '
        "--gpuhost-registry HOST:PORT); or choose a present image (--gpuhost-image, --gpuhost-workload-image)",
    )


def _open_pull(client: docker.DockerClient, image: str, read_timeout: float) -> Any:
    """``POST /images/create`` as a stream, with a read timeout (the SDK's pull has none)."""
    from docker import auth

    api = client.api
    repository, tag = _split_name(image)
    headers: dict[str, str] = {}
    with contextlib.suppress(Exception):  # no credentials configured: an anonymous pull
        registry, _ = auth.resolve_repository_name(repository)
        header = auth.get_config_header(api, registry)
        if header:
            headers["X-Registry-Auth"] = header.decode() if isinstance(header, bytes) else str(header)
    params = {"fromImage": repository, "tag": tag} if tag else {"fromImage": repository}
    url = f"{api.base_url}/v{api.api_version}/images/create"
    response = api.post(url, params=params, headers=headers, stream=True, timeout=(30.0, read_timeout))
    return response


def pull_image(
    client: docker.DockerClient,
    image: str,
    *,
    timeout: float | None = None,
    stall: float | None = None,
    sink: ProgressSink | str | None = "session",
    progress_after: float | None = None,
    on_event: Callable[[Mapping[str, Any]], None] | None = None,
) -> PullProgress:
    """Pull ``image`` within ``timeout`` seconds, failing when no byte arrives for ``stall`` seconds.

    Limits left None and ``sink="session"`` are the session's (``configure``); ``sink=None`` shows nothing.

    The stream is read in a thread so that the deadline and the stall limit hold whatever the
    daemon does; giving up closes the connection, which cancels the daemon's pull.
    """
    import requests

    timeout = POLICY.timeout if timeout is None else timeout
    stall = POLICY.stall if stall is None else stall
    if isinstance(sink, str):  # "session": the session's terminal, when there is one
        sink = POLICY.sink
    progress_after = POLICY.progress_after if progress_after is None else progress_after
    started = time.monotonic()
    progress = PullProgress(image, started)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    holder: dict[str, Any] = {}

    def read() -> None:
        try:
            response = _open_pull(client, image, read_timeout=stall + 5.0)
            holder["response"] = response
            if response.status_code >= 400:
                try:
                    message = response.json().get("message", response.text)
                except ValueError:
                    message = response.text
                events.put(("error", f"{response.status_code} {message}".strip()))
                return
            for raw in response.iter_lines():
                if raw:
                    with contextlib.suppress(ValueError):
                        events.put(("event", json.loads(raw)))
            events.put(("end", None))
        except Exception as exc:  # requests' errors, or the daemon's connection failing another way
            events.put(("broken", exc))

    reader = threading.Thread(target=read, name=f"gpuhost-pull {image}", daemon=True)
    reader.start()
    next_line = started + progress_after

    def stop() -> None:
        response = holder.get("response")
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()

    try:
        while True:
            try:
                kind, payload = events.get(timeout=0.2)
            except queue.Empty:
                kind, payload = "tick", None
            now = time.monotonic()
            if kind == "event":
                progress.feed(payload, now)
                if on_event is not None:
                    on_event(payload)
                if progress.error:
                    raise ImageUnavailable(
                        offline_diagnosis(image, f"image {image} cannot be pulled: {progress.error}")
                    )
            elif kind == "error":
                raise ImageUnavailable(offline_diagnosis(image, f"image {image} cannot be pulled: {payload}"))
            elif kind == "broken" and not isinstance(payload, requests.exceptions.ReadTimeout):
                raise ImageUnavailable(
                    Diagnosis(
                        f"the pull of {image} lost the Docker daemon: {payload}",
                        "the daemon stopped or restarted during the pull",
                        "check `systemctl status docker`, then run again",
                    )
                )
            elif kind == "end":
                break
            if now - progress.last_bytes_at > stall or kind == "broken":
                raise ImageUnavailable(
                    Diagnosis(
                        f"the pull of {image} stalled: no data for {now - progress.last_bytes_at:.0f} s "
                        f"({human_bytes(progress.received)} of {human_bytes(progress.expected)} received, "
                        f"{len(progress.done)}/{len(progress.layers)} layers)",
                        "the registry or a proxy between stopped answering (an overloaded mirror, "
                        "a half-open connection, a firewall dropping packets)",
                        f"retry; `docker pull {image}` by hand shows where it stops; a closer registry "
                        "mirror, or a longer --gpuhost-pull-stall on a link that pauses",
                    )
                )
            if now - started > timeout:
                raise ImageUnavailable(
                    Diagnosis(
                        f"the pull of {image} did not finish within {timeout:g} s "
                        f"({human_bytes(progress.received)} of {human_bytes(progress.expected)} received)",
                        "a slow link for an image of this size",
                        f"pull it once by hand (`docker pull {image}`) and run again, or raise "
                        "--gpuhost-pull-timeout",
                    )
                )
            if sink is not None and now >= next_line:
                sink(progress.line(now), False)
                next_line = now + PROGRESS_EVERY_S
    finally:
        stop()
    if sink is not None:
        sink(progress.summary(time.monotonic()), True)
    return progress


def image_present(client: docker.DockerClient, image: str) -> bool:
    import docker as docker_sdk

    try:
        client.images.get(image)
    except docker_sdk.errors.ImageNotFound:
        return False
    return True


def ensure_image(client: docker.DockerClient, image: str, policy: str) -> None:
    """Make ``image`` present per the pull policy (missing, always, never), or explain how to."""
    present = image_present(client, image)
    if present and policy != "always":
        return
    if not present and policy == "never":
        raise ImageUnavailable(
            offline_diagnosis(
                image,
                f"image {image} is not on this host and --gpuhost-pull is never (no pull was tried)",
                "the image was never pulled or loaded here, and the run may not pull",
            )
        )
    try:
        pull_image(client, image)
    except ImageUnavailable:
        if present:
            return  # "always" on an offline host: the local copy still serves
        raise


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

    sink = POLICY.sink
    started = time.monotonic()

    def build() -> None:
        """The daemon's build stream, read here so that each step shows as it starts."""
        log: list[Any] = []
        step = "sending the context"
        next_line = started + POLICY.progress_after
        for chunk in client.api.build(
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
            decode=True,
        ):
            log.append(chunk)
            if isinstance(chunk, Mapping) and "error" in chunk:
                raise docker_sdk.errors.BuildError(str(chunk["error"]), iter(log))
            text = str(chunk.get("stream", "")) if isinstance(chunk, Mapping) else ""
            found = _STEP.match(text.strip())
            if found:
                step = text.strip()
            now = time.monotonic()
            if sink is not None and now >= next_line:
                sink(f"gpuhost: building {tag}: {step} ({human_seconds(now - started)} so far)", False)
                next_line = now + PROGRESS_EVERY_S
        if sink is not None:
            sink(f"gpuhost: built {tag} from {path} in {time.monotonic() - started:.1f} s", True)

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


def configured_images(settings: Settings) -> list[tuple[str, str]]:
    """``(role, image)`` of each image the suite runs workloads in, each image once."""
    images = [("image", settings.image)]
    if settings.workload_image and settings.workload_image != settings.image:
        images.append(("workload_image", settings.workload_image))
    return images


def inspect_image_env(client: docker.DockerClient, image: str, timeout: float) -> dict[str, str] | None:
    """The image's environment (``docker image inspect``), or None when it is not present locally."""
    import docker

    def attrs() -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = client.images.get(image).attrs
        except docker.errors.ImageNotFound:
            return None
        return found

    try:
        found = call_with_timeout(attrs, timeout, "docker image inspect")
    except NativeCallTimeout as exc:
        pytest.skip(f"needs docker: `docker image inspect {image}` did not answer: {exc}")
    return None if found is None else image_env(found)
