"""Workload scripts loaded as the container runs them: a module of their own, siblings on sys.path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

WORKLOADS = Path(__file__).resolve().parent.parent / "pytest_gpuhost" / "workloads"


def load_workload(name: str, as_module: str | None = None) -> ModuleType:
    """``workloads/NAME.py`` as a standalone module (``as_module``, else ``gpuhost_NAME_workload``),
    not the package's: the relative imports fail there and the script finds its siblings
    beside it, as in a container."""
    module_name = as_module or f"gpuhost_{name}_workload"
    spec = importlib.util.spec_from_file_location(module_name, WORKLOADS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    sys.path.insert(0, str(WORKLOADS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(WORKLOADS))
    return module
