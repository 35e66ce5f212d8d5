"""A loopback proxy in front of a private dockerd's socket that fails chosen requests.

Each request that matches a rule (method and a path pattern) is answered with an HTTP error,
dropped (the connection closes without an answer) or left hanging; every other request goes to
the daemon, one upstream connection per request (``Connection: close``), so that rules can change
while a client keeps its pool.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

REASONS = {404: "Not Found", 409: "Conflict", 500: "Internal Server Error"}


@dataclass
class Rule:
    method: str
    path: str  # a regular expression, searched in the request's path
    action: str  # "500", "404", "409", "drop" or "hang"
    message: str = "injected by the test's fault proxy"


@dataclass
class FaultProxy:
    upstream: str  # the daemon's unix socket
    path: str = ""
    rules: list[Rule] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def _serve(self, server: socket.socket) -> None:
        server.settimeout(0.2)  # a closed socket does not wake accept(): poll the stop flag
        while not self._stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                head, body = _read_request(conn)
            except OSError:
                return
            if not head:
                return
            method, path = head.split(b" ", 2)[:2]
            request = f"{method.decode()} {path.decode()}"
            self.seen.append(request)
            for rule in list(self.rules):
                if rule.method == method.decode() and re.search(rule.path, path.decode()):
                    self._fault(conn, rule)
                    return
            self._forward(conn, head, body)

    def _fault(self, conn: socket.socket, rule: Rule) -> None:
        if rule.action == "drop":
            return  # closed by the caller's `with`: no status line at all
        if rule.action == "hang":
            self._stop.wait()
            return
        code = int(rule.action)
        payload = json.dumps({"message": rule.message}).encode()
        conn.sendall(
            f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )

    def _forward(self, conn: socket.socket, head: bytes, body: bytes) -> None:
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with upstream:
            try:
                upstream.connect(self.upstream)
                upstream.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body)
                while chunk := upstream.recv(65536):
                    conn.sendall(chunk)
            except OSError:
                return


def _read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A proxy listening on a fresh unix socket under /tmp; stopped (hanging requests released) after."""
    folder = tempfile.mkdtemp(prefix="ghp-", dir="/tmp")
    proxy = FaultProxy(upstream, os.path.join(folder, "docker.sock"))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(proxy.path)
    os.chmod(proxy.path, 0o660)
    server.listen(64)
    thread = threading.Thread(target=proxy._serve, args=(server,), daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy._stop.set()
        server.close()
        thread.join(5)
        with suppress(OSError):
            os.unlink(proxy.path)
        with suppress(OSError):
            os.rmdir(folder)
