"""OpenSSH's control-master protocol (``PROTOCOL.mux`` in OpenSSH's sources), for the one thing
the suite asks of a host's master beside its sessions: to open and to close the forwarding of a
local unix socket to one on the host (the Docker tunnel, ``hosts.tunnel``).

``ssh -O forward`` and ``ssh -O cancel`` send the same messages from a new ssh process, which
reads the client's config first: about 7 ms of this machine's CPU each, twice per host of a
fleet. Here each is a hello and one request over the master's control socket. Anything
unexpected (no master there, another protocol version, a refusal) is ``MuxError``, and the caller
asks ``ssh -O`` as before.
"""

from __future__ import annotations

import socket
import struct

HELLO = 0x00000001
OPEN_FORWARD = 0x10000006
CLOSE_FORWARD = 0x10000007
OK = 0x80000001
REFUSALS = {0x80000002: "permission denied", 0x80000003: "failure"}
VERSION = 4  # the protocol's version since OpenSSH 5.6; a master of another one is not spoken to
LOCAL = 1  # a local forwarding, as -L
UNIX_PATH = 0xFFFFFFFE  # a "port" of -2: the host field is the path of a unix socket
MAX_PACKET = 1 << 16  # a master's answers here are a few dozen bytes
REQUEST_ID = 1


class MuxError(Exception):
    """The master could not be asked, or did not do it; the message says why."""


def open_forward(control: str, local: str, remote: str, timeout: float) -> None:
    """Have the master behind ``control`` listen on ``local`` and forward it to ``remote``."""
    _forwarding(control, OPEN_FORWARD, local, remote, timeout)


def close_forward(control: str, local: str, remote: str, timeout: float) -> None:
    """Have the master cancel that forwarding (it stops listening on ``local``)."""
    _forwarding(control, CLOSE_FORWARD, local, remote, timeout)


def _forwarding(control: str, request: int, local: str, remote: str, timeout: float) -> None:
    body = (
        struct.pack(">III", request, REQUEST_ID, LOCAL)
        + _string(local)
        + struct.pack(">I", UNIX_PATH)
        + _string(remote)
        + struct.pack(">I", UNIX_PATH)
    )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(control)
            conn.sendall(_packet(struct.pack(">II", HELLO, VERSION)))
            hello = _read_packet(conn)
            if hello[:8] != struct.pack(">II", HELLO, VERSION):
                raise MuxError(f"{control}: not an OpenSSH master of protocol version {VERSION}")
            conn.sendall(_packet(body))
            reply = _read_packet(conn)
    except OSError as exc:  # no master listens there, it hung (a timeout), or it hung up
        raise MuxError(f"{control}: {exc}") from None
    if len(reply) < 8:
        raise MuxError(f"{control}: a short answer")
    kind, request_id = struct.unpack(">II", reply[:8])
    if request_id != REQUEST_ID:
        raise MuxError(f"{control}: the answer of another request")
    if kind == OK:
        return
    reason = _reason(reply[8:])
    raise MuxError(f"{control}: {REFUSALS.get(kind, f'answer 0x{kind:08x}')}: {reason}")


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">I", len(data)) + data


def _packet(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _reason(data: bytes) -> str:
    """The reason string of a refusal; empty if there is none."""
    if len(data) < 4:
        return ""
    (length,) = struct.unpack(">I", data[:4])
    return data[4 : 4 + length].decode(errors="replace")


def _read_packet(conn: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _read_exactly(conn, 4))
    if length > MAX_PACKET:
        raise MuxError(f"an answer of {length} bytes: not a master's")
    return _read_exactly(conn, length)


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise MuxError("the master hung up")
        data += chunk
    return data
