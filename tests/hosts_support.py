"""Host doubles for the fact readers: this machine, reached as if it were remote."""

from __future__ import annotations

from typing import Any

from pytest_gpuhost.hosts.host import LocalHost


class LocalAsRemote(LocalHost):
    """This machine, taking the remote path of the code (one command instead of many reads)."""

    remote = True


class HereBackend:
    """testinfra's SSH backend, minus the SSH: the shell's command line runs on this machine."""

    NAME = "ssh"
    sudo = False

    def _build_ssh_command(self, command: str) -> tuple[list[str], list[str]]:
        return ["sh", "-c", "%s"], [command]

    def result(self, *args: Any) -> None:
        return None
