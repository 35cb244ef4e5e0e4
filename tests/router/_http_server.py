"""A tiny HTTP/1.1 server on loopback for the identity and OPA tests (stdlib + trio).

It stands in for an identity provider (OIDC discovery, a JWKS endpoint) and for an OPA
server: real sockets, one request per connection, the answer from ``handler(method,
path, body) -> (status, JSON-able body)``. Each request is recorded in ``requests``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

Handler = Callable[[str, str, bytes], Awaitable[tuple[int, Any]]]


@dataclass
class LoopbackHttp:
    handler: Handler
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _one(self, stream: trio.SocketStream) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                body += chunk
            self.requests.append((method, path))
            status, doc = await self.handler(method, path, body)
            out = json.dumps(doc).encode()
            await stream.send_all(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(out)}\r\nConnection: close\r\n\r\n".encode()
                + out
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def serve(self, *, task_status: trio.TaskStatus[LoopbackHttp]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._one, listeners)
