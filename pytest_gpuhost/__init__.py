"""pytest-gpuhost: a conformance suite for GPU Docker hosts, run as ``pytest --gpuhost``.

This module stays tiny on purpose: the plugin is loaded in every pytest session of the
environment, so nothing heavy may be imported at package import time, and even the version is
read from the package metadata only when it is first asked for.

The supported Python API (docs/api.md; each module lists its part in ``__all__``):

- ``pytest_gpuhost.hookspecs``: the hook ``pytest_gpuhost_make_host``;
- ``pytest_gpuhost.hosts.host``: ``Host``, ``LocalHost``, ``CommandResult``;
- ``pytest_gpuhost.diagnosis``: ``Diagnosis``, ``fail``, ``warn``;
- ``pytest_gpuhost.facts.model``: the fact types (``HostFacts``, ``GpuInfo``, ...);
- ``pytest_gpuhost.fixtures.*``: the public fixtures, requested by name under ``--gpuhost``;
- the markers ``gpuhost_needs``, ``gpuhost_quick``, ``gpuhost_container``, ``gpuhost_hardware``,
  ``gpuhost_burn`` and ``gpuhost_measures``.

Everything else is private and may change in any release.
"""

__all__ = ["__version__"]

DISTRIBUTION = "pytest-gpuhost"
UNKNOWN_VERSION = "0+unknown"  # neither installed nor a checkout: no version to read

__version__: str  # pyproject.toml's version, read on first use by __getattr__ below


def installed_version() -> str:
    """The installed distribution's version: pyproject.toml's ``version`` is its one source.

    A checkout used through ``PYTHONPATH`` (no metadata) reads its own pyproject.toml instead.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return checkout_version() or UNKNOWN_VERSION


def checkout_version(root: str | None = None) -> str | None:
    """``version`` of the pyproject.toml beside this package, when it is pytest-gpuhost's."""
    import os
    import re

    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return None
    if not re.search(rf'^name = "{DISTRIBUTION}"$', text, flags=re.MULTILINE):
        return None
    found = re.search(r'^version = "([^"]+)"$', text, flags=re.MULTILINE)
    return found.group(1) if found else None


def __getattr__(name: str) -> str:
    """``__version__`` on first use: reading the metadata costs milliseconds that a pytest
    session without ``--gpuhost`` should not pay."""
    if name == "__version__":
        value = installed_version()
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
