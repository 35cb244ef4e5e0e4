"""The suite's client end of a router session over WebSocket: raw messages in and out
through :func:`atp_proto.transports.ws_client.connect_ws`, frames built and read with
the independent codec of :mod:`atp_proto.testing.frames`, every message recorded.

Frames are handled as *mappings* in the shape of the JSON text mapping (spec §13.3) in
both encodings, so one scenario can run binary and text: ``{"type": "DATA", "flags":
["SYN"], "stream_id": 1, "msg_seq": 1, "qos": "gold", "window": {...}, "payload": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import cbor2
import trio

from atp_proto.testing.frames import build_frame, parse_frames
from atp_proto.transports.base import Oversized, TransportClosed
from atp_proto.transports.ws_client import ATP_SUBPROTOCOL, HandshakeRefused, connect_ws
from conformance._record import Recorder
from conformance.roles import RunContext, TargetUnreachable

__all__ = ["FLAG_BITS", "TYPES", "WsSession", "open_session", "to_binary"]

TYPES = {"DATA": 0, "WINDOW_UPDATE": 1, "CAPABILITIES": 2, "BUDGET_UPDATE": 3, "ERROR": 4}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
FLAG_BITS = {
    "SYN": 0x01,
    "ACK": 0x02,
    "MORE": 0x04,
    "FIN": 0x08,
    "RST": 0x10,
    "HB": 0x20,
    "CONT": 0x40,
}
QOS = {"unspecified": 0, "gold": 1, "silver": 2, "bronze": 3}
QOS_NAMES = {v: k for k, v in QOS.items()}
_HEADER_KEYS = (
    "v",
    "type",
    "stream_id",
    "msg_seq",
    "frag_seq",
    "flags",
    "qos",
    "ttl",
    "payload",
    "payload_b64",
)


def to_binary(m: Mapping[str, Any]) -> bytes:
    """A frame mapping to binary, with the independent builder (numeric stream ids)."""
    ftype = m.get("type", "DATA")
    flags = 0
    for name in m.get("flags", []):
        flags |= FLAG_BITS[name] if isinstance(name, str) else int(name)
    qos = m.get("qos", 0)
    ext = {k: v for k, v in m.items() if k not in _HEADER_KEYS}
    kw: dict[str, Any] = {}
    if "payload_b64" in m:
        import base64

        kw["raw_payload"] = base64.b64decode(m["payload_b64"])
    elif m.get("payload") is not None:
        kw["payload"] = m["payload"]
    return build_frame(
        TYPES[ftype] if isinstance(ftype, str) else int(ftype),
        flags,
        int(m.get("stream_id", 0)),
        int(m.get("msg_seq", 0)),
        qos=QOS[qos] if isinstance(qos, str) else int(qos),
        frag_seq=int(m.get("frag_seq", 0)),
        ttl=int(m.get("ttl", 0)),
        ext=ext or None,
        version=int(m.get("v", 1)),
        **kw,
    )


def from_binary(data: bytes) -> list[dict[str, Any]]:
    """Binary frames as mappings (payload decoded when it is CBOR; ``raw_flags`` kept)."""
    out = []
    for f in parse_frames(data):
        m: dict[str, Any] = {
            "v": f.version,
            "type": TYPE_NAMES.get(f.type, f.type),
            "stream_id": f.stream_id,
            "msg_seq": f.msg_seq,
            "frag_seq": f.frag_seq,
            "qos": QOS_NAMES.get(f.qos, f.qos),
            "ttl": f.ttl,
            "raw_flags": f.flags,
            "size": f.size,
            "payload_hex": f.payload.hex(),
            "flags": [n for n, b in FLAG_BITS.items() if f.flags & b],
        }
        m.update(f.ext)
        try:
            m["payload"] = cbor2.loads(f.payload) if f.payload else None
        except Exception:
            m["payload_raw"] = f.payload.hex()
        out.append(m)
    return out


def from_text(text: str) -> dict[str, Any]:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("a text message that is not a JSON object")
    obj.setdefault("type", "DATA")
    obj.setdefault("flags", [])
    obj.setdefault("msg_seq", 0)
    obj.setdefault("frag_seq", 0)
    obj["size"] = len(text.encode("utf-8"))
    return obj


class WsSession:
    """One session: send mappings or raw messages, receive frames as mappings."""

    def __init__(self, ws: Any, rec: Recorder, text: bool) -> None:
        self.ws = ws
        self.rec = rec
        self.text = text
        self.frames: list[dict[str, Any]] = []  #: every frame received, in order
        self._pending: list[dict[str, Any]] = []
        self.closed = False
        self.oversized = False

    @property
    def close_code(self) -> int | None:
        return self.ws.peer_close_code  # type: ignore[no-any-return]

    async def send(self, m: Mapping[str, Any]) -> None:
        if self.text:
            await self.send_raw(json.dumps(m))
        else:
            await self.send_raw(to_binary(m))

    async def send_raw(self, data: bytes | str) -> None:
        self.rec.sent(data)
        try:
            await self.ws.send(data)
        except (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next frame, or None when the time bound passes or the transport closed."""
        if self._pending:
            return self._pending.pop(0)
        if self.closed:
            return None
        with trio.move_on_after(timeout):
            while not self._pending:
                try:
                    msg = await self.ws.receive()
                except TransportClosed:
                    self.closed = True
                    self.rec.note(f"transport closed (close code {self.close_code})")
                    return None
                if isinstance(msg, Oversized):
                    self.oversized = True
                    continue
                self.rec.received(msg)
                try:
                    got = [from_text(msg)] if isinstance(msg, str) else from_binary(msg)
                except ValueError as exc:
                    got = [
                        {
                            "type": "UNDECODABLE",
                            "why": str(exc),
                            "stream_id": -1,
                            "flags": [],
                            "msg_seq": 0,
                            "frag_seq": 0,
                            "size": len(msg),
                        }
                    ]
                self.frames += got
                self._pending += got
            return self._pending.pop(0)
        return None

    async def wait_closed(self, timeout: float) -> bool:
        """Read (and keep) frames until the transport closes; False if it stays open."""
        with trio.move_on_after(timeout):
            while not self.closed:
                await self.next(timeout)
            return True
        return False

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            with contextlib.suppress(Exception):  # closing a broken connection is fine
                await self.ws.aclose()


def client_tls_context(ctx: RunContext) -> ssl.SSLContext:
    """The suite's TLS client context for wss:// and https:// targets: verifies against
    ``--ca FILE`` (else the system's store), or not at all with ``--insecure``."""
    sslctx = ssl.create_default_context(cafile=ctx.options.get("ca") or None)
    if ctx.options.get("insecure"):
        sslctx.check_hostname = False
        sslctx.verify_mode = ssl.CERT_NONE
    return sslctx


async def open_session(
    ctx: RunContext,
    rec: Recorder,
    *,
    text: bool,
    token: str | None = "ctx",
    headers: Sequence[tuple[bytes, bytes]] = (),
    subprotocols: Sequence[str] | None = None,
    query: str = "",
) -> WsSession:
    """Open a session on the target (``token="ctx"``: the run's --token, as a header).

    Raises:
        TargetUnreachable: no TCP connection or no WebSocket at the target.
        HandshakeRefused: the router answered the upgrade with an HTTP error.
    """
    url = ctx.target
    u = urlsplit(url)
    if u.scheme not in ("ws", "wss"):
        raise TargetUnreachable(f"the router role speaks ws:// and wss:// (got {url!r})")
    if query:
        url += ("&" if u.query else "?") + query
    hdrs = list(headers)
    tok = ctx.token if token == "ctx" else token
    if tok:
        hdrs.append((b"authorization", f"Bearer {tok}".encode()))
    ssl_ctx = client_tls_context(ctx) if u.scheme == "wss" else None
    protos = subprotocols if subprotocols is not None else ([] if text else [ATP_SUBPROTOCOL])
    try:
        ws = await connect_ws(
            url,
            headers=hdrs,
            subprotocols=protos,
            connect_timeout=ctx.timeout(5),
            ssl_context=ssl_ctx,
        )
    except HandshakeRefused:
        raise
    except (OSError, TransportClosed, ssl.SSLError) as exc:
        raise TargetUnreachable(f"cannot reach {ctx.target}: {exc}") from None
    rec.note(f"connected to {url.split('?')[0]} ({'text' if text else 'binary'})")
    return WsSession(ws, rec, text)
