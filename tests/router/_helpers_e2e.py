"""Helpers for the end-to-end router tests (tests/router/test_e2e_*.py).

* an independent binary frame codec (struct + cbor2, no atp_proto.frames), so tests can
  check the wire format against the DECISIONS table rather than against our own encoder;
* a minimal HTTP/1.1 GET for /metrics, /healthz, /readyz;
* ``atp serve`` / ``atp send`` as real subprocesses.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import trio

ROOT = Path(__file__).resolve().parent.parent.parent

# ---------------------------------------------------------------------- raw frames

HEADER = struct.Struct("!BBBBIIHHII")  # 24 bytes
assert HEADER.size == 24

T_DATA, T_WINDOW_UPDATE, T_CAPABILITIES, T_BUDGET_UPDATE, T_ERROR = 0, 1, 2, 3, 4
F_SYN, F_ACK, F_MORE, F_FIN, F_RST, F_HB, F_CONT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
Q_GOLD, Q_SILVER, Q_BRONZE = 1, 2, 3


def build_frame(
    ftype: int,
    flags: int,
    stream_id: int,
    msg_seq: int = 0,
    *,
    qos: int = 0,
    frag_seq: int = 0,
    ttl: int = 0,
    ext: Mapping[str, Any] | None = None,
    payload: Any = None,
    raw_payload: bytes | None = None,
    version: int = 1,
) -> bytes:
    """One binary frame, built by hand from the 24-byte header table."""
    ext_b = cbor2.dumps(dict(ext)) if ext else b""
    if raw_payload is not None:
        pay_b = raw_payload
    else:
        pay_b = cbor2.dumps(payload) if payload is not None else b""
    head = HEADER.pack(
        version, ftype, flags, qos, stream_id, msg_seq, frag_seq, ttl, len(ext_b), len(pay_b)
    )
    return head + ext_b + pay_b


@dataclass
class RawFrame:
    version: int
    type: int
    flags: int
    qos: int
    stream_id: int
    msg_seq: int
    frag_seq: int
    ttl: int
    ext: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""
    size: int = 0  #: bytes on the wire: 24 + ext_len + payload_len (the credit cost)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    def body(self) -> Any:
        return cbor2.loads(self.payload) if self.payload else None


def parse_frames(data: bytes) -> list[RawFrame]:
    """Split one binary WebSocket message into frames (raises on a truncated frame)."""
    out: list[RawFrame] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER.size:
            raise ValueError("truncated header")
        v, t, fl, q, sid, seq, frag, ttl, ext_len, pay_len = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        if pos + ext_len + pay_len > len(data):
            raise ValueError("truncated body")
        ext = cbor2.loads(data[pos : pos + ext_len]) if ext_len else {}
        pos += ext_len
        payload = bytes(data[pos : pos + pay_len])
        pos += pay_len
        size = HEADER.size + ext_len + pay_len
        out.append(RawFrame(v, t, fl, q, sid, seq, frag, ttl, ext, payload, size))
    return out


# ---------------------------------------------------------------------- HTTP


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """``GET path`` on the router's metrics listener: (status, body)."""
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


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample (labels must match exactly, in any order)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


# ---------------------------------------------------------------------- subprocesses


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``atp`` subprocesses: no ATP_* / ADAPTER_* leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ATP_", "ADAPTER_ENDPOINTS", "PYTEST_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def atp(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m atp_proto ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "atp_proto", *args],
        cwd=ROOT,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_LISTENING = re.compile(r"router listening .*?ws=(ws://\S+)")
_METRICS = re.compile(r"metrics=http://[^\s:]+:(\d+)/metrics")


@dataclass
class RouterProcess:
    proc: subprocess.Popen[str]
    ws_url: str
    metrics_port: int | None
    lines: list[str]

    @property
    def ws_port(self) -> int:
        return int(self.ws_url.rsplit(":", 1)[1].split("/", 1)[0])

    def log(self) -> str:
        return "".join(self.lines)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


@contextmanager
def router_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 20
) -> Iterator[RouterProcess]:
    """``atp serve ARGS`` as a subprocess; waits for its "router listening" log line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "atp_proto", "serve", *args],
        cwd=ROOT,
        env=clean_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if _LISTENING.search(line):
                ready.set()
        ready.set()  # EOF: the process is gone

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                raise RuntimeError(f"atp serve did not start: {''.join(lines)[-2000:]}")
        text = "".join(lines)
        m = _LISTENING.search(text)
        if m is None:
            raise RuntimeError(f"atp serve exited ({proc.poll()}): {text[-2000:]}")
        mm = _METRICS.search(text)
        yield RouterProcess(proc, m.group(1), int(mm.group(1)) if mm else None, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


#: the seed's SYN window and meta, shared by the end-to-end suites
WINDOW = {"max_parallel": 4, "max_tokens": 50000, "max_usd_micros": 1000000}
META = {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]}


def syn_frame(
    sid: int = 1,
    prompt: str = "hello",
    adapters: list[str] | None = None,
    *,
    ttl: int = 8,
    **kw: Any,
) -> bytes:
    """A binary SYN in the seed's shape (gold lane, WINDOW, META) for ``adapters``
    (persona by default); ``ttl=0`` sends none."""
    return build_frame(
        T_DATA,
        F_SYN,
        sid,
        1,
        qos=Q_GOLD,
        ttl=ttl,
        ext={"window": WINDOW, "meta": dict(META, adapters=adapters or ["persona"])},
        payload={"type": "agent.task", "content": {"prompt": prompt}},
        **kw,
    )
