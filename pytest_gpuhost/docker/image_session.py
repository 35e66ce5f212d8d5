"""The session's images: chosen for the driver once its facts are known, and pull progress shown.

The options are read before any fact is gathered, so ``Settings`` carries what the user gave;
``resolved_settings`` fills in what they left to the suite, from the facts:

- ``--gpuhost-image`` not given: the newest ``nvidia/cuda`` base the driver's CUDA supports
  (``image_table``); in a fleet run, the one the oldest driver supports, so one image serves all.
- ``--gpuhost-workload-image`` not given: the official PyTorch image for that CUDA, pulled on
  first use. Chosen over building ``examples/Dockerfile`` because a pull is one download that
  shows progress, is cached by the daemon like any image, and goes through registry mirrors and
  ``docker save | docker load`` on offline hosts, while a build needs apt and PyPI from inside
  the build. ``--gpuhost-dockerfile examples/Dockerfile`` builds instead (a content-derived
  tag); ``--gpuhost-workload-image base`` runs the workloads in ``--gpuhost-image``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuhost.docker import image_table
from pytest_gpuhost.docker.images import ProgressSink, configure, image_tag
from pytest_gpuhost.settings import Settings

if TYPE_CHECKING:
    from pytest_gpuhost.facts.model import HostFacts

BASE = "base"  # --gpuhost-workload-image base: the workloads run in --gpuhost-image
_RESOLVED = pytest.StashKey[tuple[Settings, list[str]]]()


def oldest_driver(facts: Sequence[HostFacts]) -> tuple[str | None, str | None]:
    """``(cuda, driver)`` of the host whose driver supports the oldest CUDA."""
    known: list[tuple[tuple[int, int], str, str | None]] = []
    for fact in facts:
        cuda, _ = image_table.driver_cuda(fact.cuda_driver_version, fact.driver_version)
        parsed = image_table.cuda_tuple(cuda)
        if cuda is not None and parsed is not None:
            known.append((parsed, cuda, fact.driver_version))
    if not known:
        return None, None
    _, cuda, driver = min(known)
    return cuda, driver


def resolve(settings: Settings, facts: Sequence[HostFacts]) -> tuple[Settings, list[str]]:
    """The settings with the images chosen, and one header line per image saying why."""
    cuda, driver = oldest_driver(facts)
    image = settings.image
    lines: list[str] = []
    if settings.image_explicit:
        lines.append(f"gpuhost: image {image} (--gpuhost-image)")
    else:
        choice = image_table.choose_base_image(cuda, driver)
        image = image_table.with_registry(choice.image or settings.image, settings.registry)
        lines.append(f"gpuhost: image {image}: {choice.reason}")
    workload = settings.workload_image
    if workload == BASE:
        workload = image
        lines.append(f"gpuhost: workload image {workload} (--gpuhost-workload-image base)")
    elif workload:
        lines.append(f"gpuhost: workload image {workload} (--gpuhost-workload-image)")
    elif settings.dockerfile:
        workload = (
            image_tag(Path(settings.dockerfile).resolve()) if Path(settings.dockerfile).is_file() else None
        )
        lines.append(f"gpuhost: workload image {workload or '?'}: built from {settings.dockerfile}")
    else:
        choice = image_table.choose_pytorch_image(cuda, driver)
        workload = image_table.with_registry(
            choice.image or image_table.PYTORCH_IMAGES[0][1], settings.registry
        )
        lines.append(
            f"gpuhost: workload image {workload}: {choice.reason}; pulled on first use "
            "(--gpuhost-workload-image or --gpuhost-dockerfile choose another)"
        )
    return dataclasses.replace(settings, image=image, workload_image=workload), lines


def resolved(
    config: pytest.Config, settings: Settings, facts: Sequence[HostFacts]
) -> tuple[Settings, list[str]]:
    """``resolve`` once per run (per process under pytest-xdist: the same facts, the same choice)."""
    cached = config.stash.get(_RESOLVED, None)
    if cached is None:
        cached = resolve(settings, facts)
        config.stash[_RESOLVED] = cached
    return cached


def terminal_sink(config: pytest.Config) -> ProgressSink | None:
    """Progress lines through pytest's terminal writer, past output capturing.

    None in a pytest-xdist worker: its terminal is the controller's, which workers cannot write.
    A terminal rewrites one line; a log (CI, a pipe) gets a line every ten seconds.
    """
    if hasattr(config, "workerinput"):
        return None
    reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return None
    capture: Any = config.pluginmanager.get_plugin("capturemanager")
    tty = bool(getattr(reporter, "isatty", False))
    state = {"last": -1e9, "live": False}

    def sink(text: str, final: bool) -> None:
        import time

        now = time.monotonic()
        if not final and not tty and now - state["last"] < 10.0:
            return
        state["last"] = now
        guard = capture.global_and_fixture_disabled() if capture is not None else nullcontext()
        with guard:
            if tty and not final:
                if not state["live"]:
                    reporter.ensure_newline()
                reporter.rewrite(text, erase=True)
                state["live"] = True
                return
            if state["live"]:
                reporter.rewrite(text, erase=True)
                reporter.write("\n")
            else:
                reporter.write_line(text)
            state["live"] = False
            if final:
                reporter.currentfspath = None  # the next result starts a line with its file again

    return sink


def install(config: pytest.Config, settings: Settings) -> None:
    """This session's pull limits and progress sink."""
    configure(settings.pull_timeout, settings.pull_stall, terminal_sink(config))
    config.add_cleanup(lambda: configure(1800.0, 120.0, None))  # the terminal closes with the session
