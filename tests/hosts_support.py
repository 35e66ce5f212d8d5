"""Host doubles for the fact readers: this machine, reached as if it were remote."""

from __future__ import annotations

from pytest_gpuhost.hosts.host import LocalHost


class LocalAsRemote(LocalHost):
    """This machine, taking the remote path of the code (one command instead of many reads)."""

    remote = True
