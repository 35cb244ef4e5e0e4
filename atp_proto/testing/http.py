"""A minimal HTTP/1.1 GET for the router's operations listener (/metrics, /healthz, /readyz),
and a reader for one Prometheus sample.

Deliberately tiny and independent of the router's own HTTP code: one request per connection,
read to EOF (the router closes after answering).
"""

from __future__ import annotations

import re

import trio

__all__ = ["http_get", "metric_value"]


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """``GET path`` on ``host:port``: (status, body)."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (labels must match exactly,
    in any order); None when there is no such sample."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(_LABEL.findall(m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None
