"""The client role over QUIC (spec §13.2): the suite is a scripted router on a QUIC socket
(aioquic's sans-IO server connection on a trio UDP socket, a certificate made for the
run), and the client under test is launched with ``{url}`` = ``quic://127.0.0.1:PORT``
and ``{ca}`` = that certificate (a command without ``{ca}`` makes these cases
UNSUPPORTED). The scripted router is the WebSocket one's (:func:`client._script`) behind a
QUIC stream mapper, so the same exchanges are judged the same way, plus the binding's
rules on what the client does with QUIC streams:

* ALPN ``atp/1`` (ATP-QUIC-001: the router offers nothing else, so a client that does not
  offer it never gets a session);
* stream-0 frames on QUIC stream 0, each ATP stream on its own client-opened
  bidirectional QUIC stream whose first frame is its SYN, binary frames only, no
  unidirectional stream (ATP-QUIC-002, -003, -011), QUIC streams opened in increasing ATP
  stream id order (ATP-QUIC-021);
* the client's FIN on an ATP stream's QUIC stream only after the router's FINAL or ERROR
  on it (ATP-QUIC-012); a normal close with application code 0 (ATP-QUIC-015);
* a router frame for ATP stream 1 sent on the control stream: the client must close the
  connection with 0x100, EPROTO (ATP-QUIC-004, -005);
* the router's QUIC FIN, RESET_STREAM or STOP_SENDING on the control stream once the
  client's SYN has arrived (the answer held back ``HOLD_S``, so that the client's verdict
  cannot hang on which it reads first): the client must close the connection with 0x100,
  EPROTO (ATP-QUIC-025);
* a stateless reset (ATP-QUIC-022): once the client's SYN has arrived, the router end
  stops its connection silently (it acknowledges nothing more and sends nothing; it still
  decrypts what arrives, to tell a CONNECTION_CLOSE) and sends a decoy, a datagram of a
  reset's shape whose last 16 bytes are no token (the client must not end on it, RFC 9000
  §10.3.1), then, ``DECOY_S`` later, one Stateless Reset datagram built by RFC 9000
  §10.3 (first byte 0b01xxxxxx, unpredictable bytes, then the token it issued for the
  connection ID the client's datagram was addressed to). The client must end the session
  at once (exit, its task failed, within ``REACT_S`` while the idle timeout is 30 s) and
  send nothing more on the connection. The token is read from aioquic's
  ``QuicConnection._host_cids``, a CONNECTION_CLOSE seen in ``_close_event`` (both pinned
  in tests/test_pinned_internals.py): aioquic makes the tokens and sends them, as the
  transport parameter and in NEW_CONNECTION_ID frames, but has no API to build a reset.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import trio
from aioquic._buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

from atp_proto.transports.tls import generate_dev_cert
from conformance._record import Recorder
from conformance.drivers.quic import ALPN, split_frames
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext, TargetUnreachable
from conformance.roles._testee import run_testee

__all__ = ["CASES", "REACT_S", "run"]

#: how soon after the stateless reset the client must have ended (ATP-QUIC-022)
REACT_S = 2.0
#: the idle timeout the router end offers: a client that waits for it is plainly late
IDLE_S = 30.0
#: datagrams arriving this soon after the reset may have left before it could be read
GRACE_S = 0.25
#: how long the client is watched after the decoy, before the true reset is sent
DECOY_S = 1.0  # a loaded host may take a few hundred ms to read the decoy
#: how long the answer waits after the router ended its control stream (ATP-QUIC-025): a
#: client that took the end for nothing then gets its FINAL and closes normally
HOLD_S = 0.5

_MAPPING = ("ATP-QUIC-001", "ATP-QUIC-002", "ATP-QUIC-003", "ATP-QUIC-011", "ATP-QUIC-012")
#: id, title, requirements, the scripted router's parameters (client._script)
_TABLE: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = [
    (
        "client.quic.basic.three-streams",
        "three tasks on one QUIC session: each on its own QUIC stream opened in order, "
        "stream-0 frames on QUIC stream 0, FIN after the router's, a normal close with 0",
        (*_MAPPING, "ATP-QUIC-015", "ATP-QUIC-021", "ATP-STREAM-002", "ATP-TIME-002"),
        {"streams": 3, "heartbeat": True},
    ),
    (
        "client.quic.flow.credit-respected",
        "a 400 KB prompt over QUIC with the default 256 KiB credit: the client fragments "
        "on its stream's QUIC stream and never passes its credit",
        (*_MAPPING, "ATP-FLOW-001", "ATP-SEQ-008"),
        {"prompt_size": 400_000, "withhold_s": 0.6},
    ),
    (
        "client.quic.binding.frame-on-wrong-stream",
        "the router's answer for ATP stream 1 arrives on the control stream: the client "
        "closes the connection with 0x100 (EPROTO)",
        ("ATP-QUIC-005", "ATP-QUIC-004"),
        {"misroute": True},
    ),
    (
        "client.quic.stateless-reset",
        "the router resets the connection statelessly (RFC 9000 §10.3) once the client's "
        "SYN arrived: the client ends the session at once, its task failed, and sends "
        "nothing more",
        ("ATP-QUIC-022",),
        {"reset": True},
    ),
    *(
        (
            f"client.quic.binding.control-{how}",
            f"the router's {what} on the control stream once the client's SYN arrived: the "
            "client closes the connection with 0x100 (EPROTO)",
            ("ATP-QUIC-025", "ATP-QUIC-004"),
            {"control_end": how},
        )
        for how, what in (("fin", "QUIC FIN"), ("reset", "RESET_STREAM"), ("stop", "STOP_SENDING"))
    ),
]
CASES = [
    CaseSpec(cid, Role.CLIENT, title, reqs, level=Level.L3, description=title)
    for cid, title, reqs, _ in _TABLE
]
_PARAMS = {cid: p for cid, _, _, p in _TABLE}


class _QuicRouterEnd:
    """The server end of one QUIC connection, with the ``receive`` / ``send`` surface the
    scripted router uses (one call: the whole frames that arrived on one QUIC stream)."""

    def __init__(
        self,
        sock: Any,
        raw: socket.socket,
        rec: Recorder,
        misroute: bool,
        reset: bool = False,
        control_end: str | None = None,
        hold_s: float = HOLD_S,
    ) -> None:
        self.sock = sock
        self.raw = raw  #: the same socket, to send without awaiting (UDP)
        self.rec = rec
        self.misroute = misroute
        self.reset_on_syn = reset
        self.control_end = control_end  #: "fin", "reset" or "stop" on the first SYN
        self.hold_s = hold_s
        self.hold_until: float | None = None  #: the answer waits until then
        self.dcid = b""  #: the connection ID the client's last datagram was sent to
        self.silent_at: float | None = None  #: when the router end went silent
        self.silenced = trio.Event()
        self.token = b""  #: the stateless reset token of the client's CID
        self.reset_at: float | None = None  #: when the stateless reset left
        self.ended_on_decoy = False
        self.after_silence: list[float] = []  #: arrival times of the client's later datagrams
        self.conn: QuicConnection | None = None
        self.addr: Any = None
        self.alpn: str | None = None
        self.q2a: dict[int, int] = {0: 0}
        self.a2q: dict[int, int] = {0: 0}
        self.buffers: dict[int, bytes] = {}
        self.inbox: list[bytes] = []
        self.arrived = trio.Event()
        self.problems: list[tuple[str, str]] = []
        self.order: list[tuple[int, int]] = []  #: (QUIC stream, ATP stream) as opened
        self.final_sent: set[int] = set()  #: QUIC streams the router ended
        self.client_fin: dict[int, bool] = {}  #: QUIC stream -> after the router's end?
        self.close: tuple[int, int | None] | None = None  #: code, frame type
        self.wake = trio.Event()

    def transmit(self) -> None:
        if self.conn is None or self.silent_at is not None:
            return
        for data, addr in self.conn.datagrams_to_send(trio.current_time()):
            with contextlib.suppress(OSError):
                self.raw.sendto(data, addr)
        self.wake.set()

    async def pump(self, conf: QuicConfiguration) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._timer)
            while True:
                data, addr = await self.sock.recvfrom(65536)
                if self.silent_at is not None:  # read (to see a CONNECTION_CLOSE), not answered
                    self.after_silence.append(trio.current_time())
                if self.conn is None:
                    try:
                        header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                    except ValueError:
                        continue
                    self.addr = addr
                    self.conn = QuicConnection(
                        configuration=conf,
                        original_destination_connection_id=header.destination_cid,
                    )
                with contextlib.suppress(ValueError):  # coalesced packets share it (§12.2)
                    self.dcid = pull_quic_header(Buffer(data=data), 8).destination_cid
                self.conn.receive_datagram(data, addr, trio.current_time())
                self._events()
                self.transmit()
                got = self.conn._close_event  # set at once; the event waits out draining
                if self.silent_at is not None and self.close is None and got is not None:
                    self.close = (got.error_code, got.frame_type)
                    self.rec.note(
                        f"the client's CONNECTION_CLOSE after the router fell silent: {got}"
                    )

    async def _timer(self) -> None:
        while True:
            self.wake = trio.Event()
            at = self.conn.get_timer() if self.conn is not None else None
            if self.silent_at is not None:
                at = None
            with trio.move_on_at(at if at is not None else math.inf):
                await self.wake.wait()
                continue
            assert self.conn is not None
            self.conn.handle_timer(trio.current_time())
            self._events()
            self.transmit()

    def _events(self) -> None:
        assert self.conn is not None
        while (ev := self.conn.next_event()) is not None:
            if isinstance(ev, qe.HandshakeCompleted):
                self.alpn = ev.alpn_protocol
            elif isinstance(ev, qe.StreamDataReceived):
                self._data(ev.stream_id, ev.data, ev.end_stream)
            elif isinstance(ev, qe.ConnectionTerminated):
                self.close = (ev.error_code, ev.frame_type)
                self.rec.note(f"the client closed: code {ev.error_code:#x} {ev.reason_phrase!r}")
                self.arrived.set()

    def _data(self, q: int, data: bytes, end: bool) -> None:
        if self.silent_at is not None:
            return
        if q & 2:
            self.problems.append(("ATP-QUIC-011", f"a unidirectional QUIC stream {q}"))
        whole, rest = split_frames(self.buffers.get(q, b"") + data)
        self.buffers[q] = rest
        for frame in whole:
            sid = int.from_bytes(frame[4:8], "big")
            if q not in self.q2a:
                self.q2a[q], self.a2q[sid] = sid, q
                self.order.append((q, sid))
                if sid == 0 or not frame[2] & 0x01:
                    self.problems.append(
                        (
                            "ATP-QUIC-002",
                            f"QUIC stream {q} begins with a frame for {sid}, not a SYN",
                        )
                    )
                elif self.reset_on_syn:
                    self._go_silent()
                    return
                elif self.control_end and self.hold_until is None:
                    self._end_control()
            if self.q2a[q] != sid:
                code = "ATP-QUIC-011" if sid == 0 else "ATP-QUIC-002"
                self.problems.append((code, f"a frame for ATP stream {sid} on QUIC stream {q}"))
        if whole:
            self.inbox.append(b"".join(whole))
            self.arrived.set()
        if rest[:1] == b"{":
            self.problems.append(("ATP-QUIC-003", f"JSON text on QUIC stream {q}"))
        if end and q:
            self.client_fin[q] = q in self.final_sent
            self.rec.note(f"the client's FIN on QUIC stream {q}")

    def _end_control(self) -> None:
        """ATP-QUIC-025: end the control stream (the router's side: FIN; RESET_STREAM; or
        the client's: STOP_SENDING), and hold the answer back a while."""
        assert self.conn is not None
        how = self.control_end
        if how == "fin":
            self.conn.send_stream_data(0, b"", end_stream=True)
        elif how == "reset":
            self.conn.reset_stream(0, 0x100)
        else:
            self.conn.stop_stream(0, 0x100)
        self.hold_until = trio.current_time() + self.hold_s
        self.rec.note(f"the router ended the control stream ({how}) on the client's SYN")

    def _go_silent(self) -> None:
        """Stop answering, and send a decoy: a datagram shaped like a stateless reset whose
        last 16 bytes are no token of ours (a client must not end on it, §10.3.1)."""
        assert self.conn is not None
        tokens = {c.cid: c.stateless_reset_token for c in self.conn._host_cids}
        token = tokens.get(self.dcid)
        if token is None:  # after the handshake the client sends to our CIDs only
            self.rec.note(f"no token for CID {self.dcid.hex()}: the first CID's is used")
            token = self.conn._host_cids[0].stateless_reset_token
        self.token = token
        self.silent_at = trio.current_time()
        for chunk in self.inbox:  # read, never answered: the router has gone silent
            self.rec.received(chunk)
        self.inbox.clear()
        decoy = os.urandom(16)
        while decoy in tokens.values():
            decoy = os.urandom(16)
        self._send_reset_shaped(decoy)
        self.rec.note(
            f"the router stopped its connection silently, sent a decoy (the reset's shape, "
            f"not its token: {decoy.hex()})"
        )
        self.silenced.set()
        self.arrived.set()

    def send_reset(self) -> None:
        """The Stateless Reset (RFC 9000 §10.3) with the token of the client's CID."""
        self.reset_at = trio.current_time()
        size = self._send_reset_shaped(self.token)
        self.rec.note(
            f"the router sent a stateless reset ({size} bytes, token {self.token.hex()} of "
            f"CID {self.dcid.hex()})"
        )

    def _send_reset_shaped(self, last16: bytes) -> int:
        first = (os.urandom(1)[0] & 0x3F) | 0x40  # short header form, fixed bit set
        # 26 unpredictable bytes after the first (§10.3 asks >= 38 bits, >= 21 bytes in all)
        packet = bytes([first]) + os.urandom(26) + last16
        with contextlib.suppress(OSError):
            self.raw.sendto(packet, self.addr)
        return len(packet)

    async def receive(self) -> bytes:
        while not self.inbox:
            if self.close is not None:
                raise ConnectionError("closed")
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.inbox.pop(0)

    async def send(self, data: bytes | str) -> None:
        assert self.conn is not None and isinstance(data, bytes)
        if self.hold_until is not None:
            await trio.sleep_until(self.hold_until)
        if self.silent_at is not None or self.conn._close_event is not None:
            return  # silent, or the client has closed: nothing more is sent
        for frame in split_frames(data)[0]:
            sid = int.from_bytes(frame[4:8], "big")
            q = self.a2q.get(sid)
            if q is None:
                continue  # no QUIC stream for it (the router opens none)
            if self.misroute and sid:
                q = 0
            if not q and self.hold_until is not None:
                continue  # the control stream is ended: nothing more on it
            end = bool(sid and q and (frame[1] == 4 or frame[2] & 0x08))  # ERROR or FIN
            if q in self.final_sent:
                continue
            self.conn.send_stream_data(q, frame, end_stream=end)
            if end:
                self.final_sent.add(q)
        self.transmit()

    async def aclose(self) -> None:
        if self.conn is not None and self.close is None and self.silent_at is None:
            self.conn.close(error_code=0x0)
            self.transmit()


async def run(case: CaseSpec, ctx: RunContext, command: Any) -> CaseResult:
    """``command(params, url, ca)``: the client's argv (None: a placeholder is missing)."""
    from conformance.roles import client

    rec = Recorder(case)
    params = _PARAMS[case.id]
    with tempfile.TemporaryDirectory(prefix="atp-conf-quic-") as tmp:
        cert, key, _ = generate_dev_cert(Path(tmp))
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.setblocking(False)
        raw.bind(("127.0.0.1", 0))
        sock = trio.socket.from_stdlib_socket(raw)
        url = f"quic://127.0.0.1:{sock.getsockname()[1]}"
        argv = command(params, url, str(cert), os.path.join(tmp, "prompt.txt"))
        if argv is None:
            sock.close()
            return rec.result(
                Verdict.UNSUPPORTED, "the --exec command lacks {ca} (or another placeholder)"
            )
        conf = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], idle_timeout=IDLE_S)
        conf.load_cert_chain(str(cert), str(key))
        reset = bool(params.get("reset"))
        end = _QuicRouterEnd(
            sock,
            raw,
            rec,
            bool(params.get("misroute")),
            reset,
            params.get("control_end"),
            ctx.timeout(HOLD_S),
        )
        seen = client._Seen()
        outcome: dict[str, Any] = {}
        done = trio.Event()

        async def serve() -> None:
            try:
                await client._script(end, params, seen, rec, ctx)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.05)  # what the client still sends (its FINs, close)
                    await end.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(end.pump, conf)
            nursery.start_soon(serve)
            nursery.start_soon(run_testee, argv, outcome, done, 2000)
            with trio.move_on_after(ctx.timeout(client.CASE_S)) as scope:
                if reset:
                    await end.silenced.wait()
                    with trio.move_on_after(ctx.timeout(DECOY_S)):
                        await done.wait()
                    end.ended_on_decoy = done.is_set()
                    if not end.ended_on_decoy:
                        end.send_reset()
                    scope.deadline = trio.current_time() + ctx.timeout(REACT_S)
                await done.wait()
            if reset:
                ended = trio.current_time()
                await trio.sleep(ctx.timeout(GRACE_S))  # what is still on the way
            else:
                with trio.move_on_after(ctx.timeout(1)):  # its CONNECTION_CLOSE, on the way
                    while end.close is None:
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        sock.close()
    if "error" in outcome:
        raise TargetUnreachable(outcome["error"])
    rec.note("client exit", outcome)
    if end.conn is None or end.alpn is None:
        return rec.failed(
            "no QUIC handshake completed with ALPN atp/1", "a session", (_MAPPING[0],)
        )
    if reset:
        return _judge_reset(end, rec, outcome, ended, ctx.timeout(GRACE_S), ctx.timeout(REACT_S))
    if params.get("misroute") or params.get("control_end"):
        got = end.close
        if got is None and end.conn._close_event is not None:  # still draining
            got = (end.conn._close_event.error_code, end.conn._close_event.frame_type)
        if got is None or got[1] is not None or got[0] != 0x100:
            shown = "none" if got is None else f"{got[0]:#x}"
            if params.get("misroute"):
                why, reqs = "a frame on the wrong QUIC stream", ("ATP-QUIC-005", "ATP-QUIC-004")
            else:
                why = f"the control stream ended by the router ({params['control_end']})"
                reqs = ("ATP-QUIC-025",)
            return rec.failed(
                f"the client's close: {shown}", f"CONNECTION_CLOSE 0x100 (EPROTO) for {why}", reqs
            )
        return rec.passed("closed with 0x100")
    seen.problems += end.problems
    ids = [sid for _, sid in sorted(end.order)]
    if ids != sorted(ids):
        seen.problems.append(("ATP-QUIC-021", f"QUIC streams opened for ATP streams {ids}"))
    early = [q for q, after in end.client_fin.items() if not after]
    if early:
        seen.problems.append(("ATP-QUIC-012", f"FIN before the router's end on QUIC {early}"))
    if end.close is not None and end.close[1] is None and end.close[0] != 0x0:
        seen.problems.append(("ATP-QUIC-015", f"a normal session closed with {end.close[0]:#x}"))
    return client._judge(case, params, seen, rec, outcome, scope.cancelled_caught)


def _judge_reset(
    end: _QuicRouterEnd,
    rec: Recorder,
    outcome: dict[str, Any],
    ended: float,
    grace: float,
    react: float,
) -> CaseResult:
    """ATP-QUIC-022: the client did not end on the decoy; after the reset it ended at
    once, with its task failed (exit status not 0: the stream never had its FINAL), and
    sent nothing more: no CONNECTION_CLOSE at all, no datagram later than ``grace`` after
    the reset (one before may have left before the client could read the reset)."""
    reqs = ("ATP-QUIC-022",)
    if end.silent_at is None:
        return rec.failed(
            "the client opened no ATP stream, so no reset was sent",
            "a SYN on a new QUIC stream",
            ("ATP-QUIC-002", "ATP-STREAM-001"),
        )
    problems = []
    if end.close is not None:  # it cannot have closed before: it was waiting for its answer
        problems.append(f"a CONNECTION_CLOSE ({end.close[0]:#x}) after the router fell silent")
    if end.ended_on_decoy:
        problems.append(
            "the client ended on a datagram whose last 16 bytes are no stateless reset token"
        )
        return rec.failed("; ".join(problems), "no end before the reset itself", reqs)
    if end.reset_at is None:
        return rec.failed(
            "the client's SYN came too late to send the reset within the case's time bound",
            "a SYN soon after the handshake",
            reqs,
        )
    late = [t for t in end.after_silence if t - end.reset_at > grace]
    rec.note(f"{len(late)} datagram(s) from the client later than {grace:g} s after the reset")
    if "rc" not in outcome:
        problems.append(f"the client was still running {react:g} s after the stateless reset")
    elif outcome["rc"] == 0:
        problems.append("the client reported success for a task that never got its FINAL")
    if late:
        problems.append(f"{len(late)} datagram(s) sent on the connection after the reset")
    if problems:
        return rec.failed(
            "; ".join(problems),
            "the session ended at once (its stream as EINTERNAL), nothing more sent",
            reqs,
        )
    took = (ended - end.reset_at) * 1000
    return rec.passed(f"not ended by the decoy; ended {took:.0f} ms after the reset")
