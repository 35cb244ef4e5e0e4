"""An independent ATP/1 router, written from spec/atp-v1.md alone (no atp_proto).

WebSocket binding (§13.1) over asyncio + wsproto, binary and JSON text encodings, and
a built-in echo "model" that answers each stream itself: one PARTIAL, then a FINAL.
It talks to no adapter.

    python examples/indie-router/router.py --listen 127.0.0.1:7443 [--idle-timeout-ms N]

It exists to run the conformance suite's router role against a router no one wrote
from the reference: see README.md beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contextlib

from atpwire import (
    CLOSE_CODES,
    HEADER,
    HEADER_LEN,
    U31,
    Frame,
    Violation,
    encode_binary,
    encode_text,
)
from session import (
    HANDSHAKE_TIMEOUT,
    INITIAL_WINDOW,
    MAX_FRAME,
    MAX_MESSAGE,
    MAX_SESSIONS,
    MAX_STREAMS,
    MAX_TEXT,
    Options,
    Router,
    Session,
    Stream,
)


class WsSession(Session):
    """The WebSocket binding (§13.1): the upgrade, messages, binary and text frames."""

    def __init__(
        self, router: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(router)
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.SERVER)
        self.offered_atp = False
        self.last_text = True
        # message reassembly at the WebSocket level
        self.msg_buf = bytearray()
        self.msg_text: bool | None = None
        self.msg_over = False
        self.msg_len = 0
        self.outbox = bytearray()

    def end_session(self, code: str | None) -> None:
        self.close(CLOSE_CODES.get(code, 1011) if code is not None else 1000)

    async def drain(self, st: Stream) -> None:
        await self.writer.drain()

    def _write(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    def send_frame(self, f: Frame, text: bool, alias: str | None = None) -> int:
        """Send one frame (one WebSocket message, or the outbox); returns its credit cost."""
        if text:
            self.flush()
            s = encode_text(f, alias, self.session_id)
            self._write(self.ws.send(TextMessage(data=s)))
            return len(s.encode("utf-8"))
        b = encode_binary(f)
        if self.router.opts.coalesce:
            if len(self.outbox) + len(b) > self.peer_max_frame + 65_536:  # ATP-WS-011
                self.flush()
            if not self.outbox:  # frames sent by a task are flushed once it yields
                asyncio.get_running_loop().call_soon(self.flush)
            self.outbox += b
            return len(b)
        self._write(self.ws.send(BytesMessage(data=b)))
        return len(b)

    def flush(self) -> None:
        if self.outbox:
            out, self.outbox = bytes(self.outbox), bytearray()
            self._write(self.ws.send(BytesMessage(data=out)))

    def close(self, code: int) -> None:
        if self.closed:
            return
        self.flush()
        with contextlib.suppress(Exception):
            self._write(self.ws.send(CloseConnection(code=code)))
        self.closed = True
        for st in list(self.streams.values()):
            self.end_stream(st)
        with contextlib.suppress(Exception):
            self.writer.close()

    async def run(self) -> None:
        router = self.router
        router.handshaking += 1
        try:
            ok = await asyncio.wait_for(self.handshake(), router.opts.handshake_timeout)
        except (TimeoutError, ConnectionError, OSError):
            ok = False
        finally:
            router.handshaking -= 1
        if not ok:
            self.writer.close()
            return
        router.sessions += 1
        idle = asyncio.get_running_loop().create_task(self.idle_watch())
        if router.opts.heartbeat_ms:
            beat = asyncio.get_running_loop().create_task(self.heartbeats())
            idle.add_done_callback(lambda _: beat.cancel())
        try:
            while not self.closed:
                data = await self.reader.read(65_536)
                if not data:
                    break
                self.ws.receive_data(data)
                self.pump()
                self.flush()
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            idle.cancel()
            router.sessions -= 1
            self.closed = True
            for st in list(self.streams.values()):
                self.end_stream(st)
            self.writer.close()

    async def handshake(self) -> bool:
        while True:
            data = await self.reader.read(65_536)
            if not data:
                return False
            self.ws.receive_data(data)
            for ev in self.ws.events():
                if isinstance(ev, Request):
                    path = ev.target.split("?", 1)[0]
                    if path != "/ws":
                        self._write(
                            self.ws.send(
                                RejectConnection(status_code=404, headers=[], has_body=False)
                            )
                        )
                        return False
                    if self.router.sessions >= self.router.opts.max_sessions:
                        self._write(
                            self.ws.send(
                                RejectConnection(
                                    status_code=503,
                                    headers=[(b"retry-after", b"1")],
                                    has_body=False,
                                )
                            )
                        )
                        return False
                    sub = "atp.v1" if "atp.v1" in ev.subprotocols else None
                    self.offered_atp = sub is not None
                    self.last_text = not self.offered_atp
                    self._write(self.ws.send(AcceptConnection(subprotocol=sub)))
                    return True
                return False

    def pump(self) -> None:
        for ev in self.ws.events():
            if self.closed:
                return
            if isinstance(ev, (TextMessage, BytesMessage)):
                self.on_message_part(ev)
            elif isinstance(ev, Ping):
                self._write(self.ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                with contextlib.suppress(Exception):
                    self._write(self.ws.send(ev.response()))
                self.close(1000)
                return

    def on_message_part(self, ev: TextMessage | BytesMessage) -> None:
        text = isinstance(ev, TextMessage)
        chunk = ev.data.encode("utf-8", "surrogatepass") if text else bytes(ev.data)  # type: ignore[union-attr]
        if self.msg_text is None:
            self.msg_text = text
            self.msg_len = 0
            self.msg_over = False
            self.msg_buf = bytearray()
        self.msg_len += len(chunk)
        limit = MAX_TEXT if text else self.router.opts.max_frame_size + 65_536  # ATP-WS-011
        if not self.msg_over:
            if self.msg_len > limit:
                self.msg_over = True
                head = (
                    bytes(self.msg_buf[:HEADER_LEN])
                    + chunk[: max(0, HEADER_LEN - len(self.msg_buf))]
                )
                self.msg_buf = bytearray()
                self.last_rx = time.monotonic()
                self.last_text = text
                self.over_limit(head, text)
            else:
                self.msg_buf += chunk
        if ev.message_finished:
            buf, over = bytes(self.msg_buf), self.msg_over
            self.msg_text = None
            self.msg_buf = bytearray()
            if over or self.closed:
                return
            self.last_rx = time.monotonic()
            self.last_text = text
            try:
                if text:
                    self.on_text(buf.decode("utf-8", "surrogatepass"), len(buf))
                else:
                    self.on_binary(buf)
            except Violation as v:
                if v.connection:
                    self.connection_error(v.code, v.message)

    def over_limit(self, head: bytes, text: bool) -> None:
        """ATP-WS-012."""
        if not text and len(head) >= HEADER_LEN:
            ver, ftype, flags, _qos, sid, _mseq, _fseq, _ttl, ext_len, pl_len = HEADER.unpack(head)
            big = ext_len + pl_len > self.router.opts.max_frame_size
            if ver == 1 and sid != 0 and not sid & 0x80000000 and big:
                self.note_syn_id(ftype, flags, sid)
                self.stream_error(sid, "ETOOBIG", "frame over max_frame_size", False, None)
                return
        self.connection_error("ETOOBIG", "WebSocket message over the limit")

    def on_binary(self, buf: bytes) -> None:
        # ATP-WS-001: the message must hold whole frames; check the framing first.
        pos, spans = 0, []
        while pos < len(buf):
            if len(buf) - pos < HEADER_LEN:
                raise Violation("EPROTO", "message ends inside a frame header", connection=True)
            ext_len, pl_len = HEADER.unpack_from(buf, pos)[8:10]
            end = pos + HEADER_LEN + ext_len + pl_len
            if end > len(buf):
                raise Violation("EPROTO", "message ends inside a frame", connection=True)
            spans.append((pos, end))
            pos = end
        for a, b in spans:
            if self.closed:
                return
            self.on_binary_frame(buf[a:b])


async def main() -> None:
    ap = argparse.ArgumentParser(
        description="an independent ATP/1 router (echo model, no adapters)"
    )
    ap.add_argument("--listen", help="WebSocket HOST:PORT (port 0: any; the port is printed)")
    ap.add_argument("--quic", metavar="HOST:PORT", help="QUIC too (spec 13.2; needs --cert, --key)")
    ap.add_argument("--cert", help="the QUIC server's certificate chain (PEM)")
    ap.add_argument("--key", help="its private key (PEM)")
    ap.add_argument("--idle-timeout-ms", type=int, default=60_000)
    ap.add_argument("--fragment", type=int, default=0, metavar="N", help="fragments of <= N bytes")
    ap.add_argument("--no-partial", action="store_true", help="answer with the FINAL alone")
    ap.add_argument("--coalesce", action="store_true", help="coalesce binary frames")
    ap.add_argument("--budget-updates", action="store_true", help="send BUDGET_UPDATE usage")
    ap.add_argument("--eager-credit", action="store_true", help="return credit at once")
    ap.add_argument("--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT, metavar="S")
    ap.add_argument("--max-sessions", type=int, default=MAX_SESSIONS, metavar="N")
    ap.add_argument("--initial-window", type=int, default=INITIAL_WINDOW, metavar="BYTES")
    ap.add_argument("--text-credit-unlimited", action="store_true", help="ATP-FLOW-011")
    ap.add_argument("--max-frame-size", type=int, default=MAX_FRAME, metavar="BYTES")
    ap.add_argument("--max-message-size", type=int, default=MAX_MESSAGE, metavar="BYTES")
    ap.add_argument("--max-streams", type=int, default=MAX_STREAMS, metavar="N")
    ap.add_argument("--heartbeat-ms", type=int, default=0, metavar="MS", help="our own heartbeats")
    args = ap.parse_args()
    if not args.listen and not args.quic:
        ap.error("give --listen, --quic or both")
    if args.quic and not (args.cert and args.key):
        ap.error("--quic needs --cert and --key (QUIC has no plaintext mode)")
    router = Router(
        Options(
            idle_timeout_ms=args.idle_timeout_ms,
            fragment=max(0, args.fragment),
            no_partial=args.no_partial,
            coalesce=args.coalesce,
            budget_updates=args.budget_updates,
            eager_credit=args.eager_credit,
            handshake_timeout=args.handshake_timeout,
            max_sessions=args.max_sessions,
            heartbeat_ms=args.heartbeat_ms,
            initial_window=max(INITIAL_WINDOW, min(U31, args.initial_window)),  # ATP-SESS-016
            text_credit_unlimited=args.text_credit_unlimited,
            max_frame_size=max(1024, args.max_frame_size),
            max_message_size=max(0, args.max_message_size),
            max_streams=max(0, args.max_streams),
        )
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if router.handshaking >= MAX_SESSIONS:
            writer.close()
            return
        await WsSession(router, reader, writer).run()

    if args.listen:
        host, _, port = args.listen.rpartition(":")
        server = await asyncio.start_server(handle, host, int(port))
        bound = server.sockets[0].getsockname()
        print(f"listening ws://{bound[0]}:{bound[1]}/ws", flush=True)
    if args.quic:
        from atpquic import serve_quic

        host, _, port = args.quic.rpartition(":")
        qhost, qport = await serve_quic(router, host, int(port), args.cert, args.key)
        print(f"listening quic://{qhost}:{qport}", flush=True)
    await asyncio.Event().wait()  # until interrupted


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
