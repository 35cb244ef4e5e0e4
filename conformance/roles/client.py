"""The client role: the suite is a scripted router; it launches the client under test
(``--exec "CMD {url}"``) against it and checks what the client sends and how it reacts.

Placeholders in the command: ``{url}`` (required), ``{prompt_file}`` (a file holding the
task's prompt), ``{streams}`` (tasks the client runs one after another on one session),
``{ttl}`` (the stream's ttl in seconds) and ``{ca}`` (the certificate to trust: the QUIC
cases of :mod:`conformance.roles.client_quic`, empty for the others); a case that needs one
the command lacks is UNSUPPORTED. The client is expected to open a session, run its tasks, and
exit. Every frame it sends is checked against the invariants of a client (version,
reserved bits, SYN on frag_seq 0, stream ids strictly increasing, msg_seq +1, credit).
"""

from __future__ import annotations

import json
import shlex
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from conformance._record import Recorder
from conformance.drivers.ws import from_binary, from_text, to_binary
from conformance.model import CaseResult, CaseSpec, Role, Verdict
from conformance.roles import RunContext, TargetUnreachable, _client_tls, client_quic
from conformance.roles._testee import run_testee

__all__ = ["cases", "run"]

DEFAULT_WINDOW = 262_144
CASE_S = 10.0
#: how far above the client's first stream id the stray ERROR and BUDGET_UPDATE go
#: (client.stream.never-opened): ids it has not used
_STRAY_ERROR, _STRAY_BUDGET = 1000, 1002

_CASES: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = [
    (
        "client.basic.three-streams",
        "three tasks on one session: SYN on frag_seq 0, ids strictly "
        "increasing, msg_seq from the SYN, a heartbeat answered",
        (
            "ATP-STREAM-001",
            "ATP-STREAM-002",
            "ATP-SEQ-001",
            "ATP-FRAME-001",
            "ATP-FRAME-002",
            "ATP-FRAME-004",
            "ATP-FLAG-001",
            "ATP-FRAME-018",
            "ATP-TIME-002",
            "ATP-JSON-002",
        ),
        {"streams": 3, "heartbeat": True},
    ),
    (
        "client.flow.credit-respected",
        "a 400 KB prompt with the default 256 KiB credit: the "
        "client fragments, never passes its credit, and goes on when credit comes",
        (
            "ATP-FLOW-001",
            "ATP-FLOW-003",
            "ATP-SEQ-008",
            "ATP-SEQ-010",
            "ATP-SEQ-011",
            "ATP-LIMIT-004",
            "ATP-SESS-015",
            "ATP-SESS-007",
        ),
        {"prompt_size": 400_000, "withhold_s": 0.6},
    ),
    (
        "client.stream.syn-from-router",
        "a SYN from the router is a stream error EPROTO",
        ("ATP-STREAM-006", "ATP-ERR-001"),
        {"router_syn": True},
    ),
    (
        "client.session.draining",
        "after EDRAINING on stream 0 the client opens no new stream on that session",
        ("ATP-SESS-006", "ATP-ERR-007"),
        {"streams": 2, "drain": True},
    ),
    (
        "client.err.retry-after",
        "a stream refused with retry_after_ms is not retried earlier",
        ("ATP-ERR-008",),
        {"streams": 1, "refuse_ms": 600},
    ),
    (
        "client.frame.budget-update",
        "a BUDGET_UPDATE from the router is accepted mid-stream",
        ("ATP-FRAME-014", "ATP-EXT-004"),
        {"budget_update": True},
    ),
    (
        "client.stream.never-opened",
        "a BUDGET_UPDATE on a stream id the client never opened is a stream error EPROTO, "
        "an ERROR there is discarded without an answer, and the open stream goes on",
        ("ATP-STREAM-016", "ATP-ERR-011", "ATP-ERR-001"),
        {"stray": True},
    ),
    (
        "client.flow.credit-out-of-range",
        "a WINDOW_UPDATE credit of 2^31 (outside 1 .. 2^31-1) is a stream error EPROTO, "
        "not EWINDOW",
        ("ATP-FLOW-004", "ATP-FRAME-023"),
        {"bad_credit": True},
    ),
    (
        "client.ws.message-ends-inside-oversized-frame",
        "a message that ends inside a frame announcing a body over max_frame_size is a "
        "connection error EPROTO, with no ETOOBIG on the stream",
        ("ATP-WS-001", "ATP-LIMIT-001"),
        {"cut_frame": True},
    ),
    (
        "client.final.streamed",
        'a client that asks meta.final_answer "streamed" takes a FINAL without answer whose '
        "streamed.chunks counts the PARTIALs it got (exit 0)",
        ("ATP-FINAL-004",),
        {"streamed_final": "ok"},
    ),
    (
        "client.final.streamed-short",
        "a FINAL without answer whose streamed.chunks counts one PARTIAL more than arrived "
        "is a failed stream: the client reports no answer (exit not 0)",
        ("ATP-FINAL-004",),
        {"streamed_final": "short"},
    ),
    (
        "client.time.ttl",
        "a stream whose ttl passes without an answer does not hang the client",
        ("ATP-TIME-007",),
        {"ttl": 1, "silent": True},
    ),
]


def cases(options: Mapping[str, Any]) -> list[CaseSpec]:
    return [
        *(
            CaseSpec(cid, Role.CLIENT, title, reqs, description=title)
            for cid, title, reqs, _ in _CASES
        ),
        _client_tls.CASE,
        *client_quic.CASES,
    ]


@dataclass
class _Seen:
    frames: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)
    syn_times: list[float] = field(default_factory=list)
    after_drain_syn: bool = False
    errors_from_client: list[dict[str, Any]] = field(default_factory=list)
    hb_ack: bool = False
    #: meta.final_answer of each SYN (ATP-FINAL-004)
    final_answer: list[Any] = field(default_factory=list)


def _command(
    ctx: RunContext, params: Mapping[str, Any], url: str, prompt_path: str
) -> list[str] | None:
    cmd = str(params.get("_cmd") or ctx.options.get("exec") or ctx.target)
    needed = {
        "{prompt_file}": "prompt_size" in params,
        "{streams}": params.get("streams", 1) > 1,
        "{ttl}": "ttl" in params,
    }
    if any(need and ph not in cmd for ph, need in needed.items()):
        return None
    prompt = "conformance:client:ok" + "x" * int(params.get("prompt_size", 0))
    with open(prompt_path, "w", encoding="utf-8") as fh:
        fh.write(prompt)
    out = []
    for part in shlex.split(cmd):
        out.append(  # noqa: PERF401 - the placeholders, one per line
            part.replace("{url}", url)
            .replace("{prompt_file}", fh.name)
            .replace("{streams}", str(params.get("streams", 1)))
            .replace("{ttl}", str(params.get("ttl", 0)))
            .replace("{ca}", "")
        )
    return out


def _quic_command(
    ctx: RunContext, params: Mapping[str, Any], url: str, ca: str, prompt_path: str
) -> list[str] | None:
    """The command of a QUIC case: ``{ca}`` is required there, and filled in."""
    if "{ca}" not in str(ctx.options.get("exec") or ctx.target):
        return None
    cmd = str(ctx.options.get("exec") or ctx.target).replace("{ca}", ca)
    return _command(ctx, dict(params, _cmd=cmd), url, prompt_path)


async def run(case: CaseSpec, ctx: RunContext) -> CaseResult:
    if case.id == _client_tls.CASE.id:
        with tempfile.TemporaryDirectory(prefix="atp-conf-prompt-") as tmp:
            return await _client_tls.run(
                case, ctx, lambda url: _command(ctx, {}, url, f"{tmp}/prompt.txt")
            )
    if case.id.startswith("client.quic."):
        return await client_quic.run(case, ctx, lambda *a: _quic_command(ctx, *a))
    params = next(p for cid, _, _, p in _CASES if cid == case.id)
    rec = Recorder(case)
    seen = _Seen()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ws"
    import os

    fd, prompt_path = tempfile.mkstemp(suffix=".txt", prefix="atp-conf-prompt-")
    os.close(fd)
    try:
        return await _run(case, ctx, params, rec, seen, listeners, url, prompt_path)
    finally:
        os.unlink(prompt_path)


async def _run(
    case: CaseSpec,
    ctx: RunContext,
    params: Mapping[str, Any],
    rec: Recorder,
    seen: _Seen,
    listeners: Any,
    url: str,
    prompt_path: str,
) -> CaseResult:
    from atp_proto.transports.ws_server import WsConnection

    argv = _command(ctx, params, url, prompt_path)
    if argv is None:
        for ln in listeners:
            await ln.aclose()
        return rec.result(
            Verdict.UNSUPPORTED, "the --exec command lacks a placeholder this case needs"
        )
    done = trio.Event()
    outcome: dict[str, Any] = {}

    async def serve_one() -> None:
        stream = await listeners[0].accept()
        ws = WsConnection(stream, max_message_size=1 << 21)
        req = await ws.read_request()
        if req is None:
            return
        await ws.accept("atp.v1" if "atp.v1" in req.subprotocols else None)
        try:
            await _script(ws, params, seen, rec, ctx)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        nursery.start_soon(run_testee, argv, outcome, done, 2000)
        with trio.move_on_after(ctx.timeout(CASE_S)) as scope:
            await done.wait()
        nursery.cancel_scope.cancel()
    for ln in listeners:
        await ln.aclose()
    if "error" in outcome:
        raise TargetUnreachable(outcome["error"])
    rec.note("client exit", outcome)
    return _judge(case, params, seen, rec, outcome, scope.cancelled_caught)


def _judge(
    case: CaseSpec,
    params: Mapping[str, Any],
    seen: _Seen,
    rec: Recorder,
    outcome: Mapping[str, Any],
    hung: bool,
) -> CaseResult:
    probs = list(seen.problems)
    if hung:
        probs.append(
            (
                "ATP-TIME-007" if params.get("silent") else "ATP-STREAM-011",
                f"the client did not exit within {CASE_S:g} s",
            )
        )
    if params.get("router_syn") and not any(
        e.get("stream_id") == 2 and (e.get("error") or {}).get("code") == "EPROTO"
        for e in seen.errors_from_client
    ):
        probs.append(("ATP-STREAM-006", "no ERROR EPROTO on stream 2 for the router's SYN"))
    codes = {
        (e.get("stream_id"), (e.get("error") or {}).get("code")) for e in seen.errors_from_client
    }
    if params.get("bad_credit") and (seen.opened[:1] and (seen.opened[0], "EPROTO") not in codes):
        got = sorted(str(c) for i, c in codes if i == seen.opened[0]) or ["no ERROR"]
        probs.append(("ATP-FLOW-004", f"credit 2^31 answered with {', '.join(got)}, not EPROTO"))
    if params.get("stray") and seen.opened[:1]:
        first = seen.opened[0]
        if (first + _STRAY_BUDGET, "EPROTO") not in codes:
            got = sorted(str(c) for i, c in codes if i == first + _STRAY_BUDGET) or ["no ERROR"]
            probs.append(
                (
                    "ATP-STREAM-016",
                    f"a BUDGET_UPDATE on stream {first + _STRAY_BUDGET}, never opened, "
                    f"answered with {', '.join(got)}, not EPROTO",
                )
            )
        if any(i == first + _STRAY_ERROR for i, _ in codes):
            probs.append(
                (
                    "ATP-ERR-011",
                    f"an ERROR on stream {first + _STRAY_ERROR}, never opened, answered "
                    "with an ERROR",
                )
            )
    if params.get("cut_frame") and seen.opened[:1]:
        if (0, "EPROTO") not in codes:
            probs.append(("ATP-WS-001", "no ERROR EPROTO on stream 0 for a message cut in a frame"))
        if any(i == seen.opened[0] for i, _ in codes):
            probs.append(("ATP-WS-001", "a stream error for a frame the message ends inside"))
    if params.get("budget_update") and any(i in seen.opened for i, _ in codes):
        got = sorted(str(c) for i, c in codes if i in seen.opened)
        probs.append(
            ("ATP-FRAME-014", f"the router's BUDGET_UPDATE answered with ERROR {', '.join(got)}")
        )
    if params.get("heartbeat") and not seen.hb_ack:
        probs.append(("ATP-TIME-002", "the heartbeat got no HB|ACK with its payload"))
    if params.get("drain") and seen.after_drain_syn:
        probs.append(("ATP-SESS-006", "a SYN after EDRAINING on the same session"))
    if params.get("refuse_ms") and len(seen.syn_times) > 1:
        gap = (seen.syn_times[1] - seen.syn_times[0]) * 1000
        if gap < params["refuse_ms"]:
            probs.append(
                (
                    "ATP-ERR-008",
                    f"retried after {gap:.0f} ms (retry_after_ms {params['refuse_ms']})",
                )
            )
    mode = params.get("streamed_final")
    if mode and "streamed" not in seen.final_answer:
        return rec.result(
            Verdict.UNSUPPORTED,
            'the client did not ask for meta.final_answer "streamed" (its FINALs are full)',
        )
    if mode == "ok" and outcome.get("rc") != 0:
        probs.append(
            (
                "ATP-FINAL-004",
                f"a FINAL without answer, streamed.chunks matching its PARTIALs: the client "
                f"exited {outcome.get('rc')}",
            )
        )
    if mode == "short" and outcome.get("rc") == 0:
        probs.append(
            (
                "ATP-FINAL-004",
                "streamed.chunks counts 3 PARTIALs, 2 arrived: the client reported an answer "
                "(exit 0)",
            )
        )
    want_streams = params.get("streams", 1)
    if (
        not params.get("silent")
        and not params.get("drain")
        and not params.get("refuse_ms")
        and not params.get("router_syn")
        and len(seen.opened) < want_streams
    ):
        probs.append(
            ("ATP-STREAM-001", f"{len(seen.opened)} stream(s) opened, {want_streams} asked")
        )
    if probs:
        return rec.failed(
            "; ".join(f"[{i}] {m}" for i, m in probs[:5]),
            "a client that keeps every rule of the exchange",
            tuple(dict.fromkeys(i for i, _ in probs)),
        )
    return rec.passed()


async def _script(
    ws: Any, params: Mapping[str, Any], seen: _Seen, rec: Recorder, ctx: RunContext
) -> None:
    """The scripted router: answer CAPABILITIES, then each SYN as the case says."""
    text = False
    msgs: dict[int, bytearray] = {}
    next_seq: dict[int, int] = {}
    spent: dict[int, int] = {}
    credit: dict[int, int] = {}
    highest = 0
    drained = False
    answered = 0
    pending: list[tuple[int, int]] = []  #: credit granted, applied from the next message on
    cont: dict[int, bool] = {}  #: whether each stream's last DATA frame had CONT

    async def send(m: dict[str, Any]) -> None:
        data: bytes | str = json.dumps(m) if text else to_binary(m)
        rec.sent(data)
        await ws.send(data)

    async def answer_streamed(sid: int, seq: int) -> None:
        """Two chunk PARTIALs, then a FINAL without answer counting them (or one more)."""
        for i, text in enumerate(("hel", "lo")):
            await send(
                {
                    "type": "DATA",
                    "flags": ["MORE"],
                    "stream_id": sid,
                    "msg_seq": seq + i,
                    "payload": {
                        "type": "agent.result.partial",
                        "content": {"chunk": i, "adapter": "conf", "text": text},
                        "confidence": 0.8,
                    },
                }
            )
        chunks = 3 if params.get("streamed_final") == "short" else 2
        await send(
            {
                "type": "DATA",
                "flags": ["FIN"],
                "stream_id": sid,
                "msg_seq": seq + 2,
                "telemetry": {"tokens": 1, "usd_micros": 1, "latency_ms": 1},
                "payload": {
                    "type": "agent.result.final",
                    "content": {"ok": True, "adapter": "conf", "streamed": {"chunks": chunks}},
                    "confidence": 0.8,
                },
            }
        )

    async def answer(sid: int) -> None:
        seq = next_seq.get(sid, 1)
        if params.get("streamed_final") and seen.final_answer[-1:] == ["streamed"]:
            await answer_streamed(sid, seq)
            return
        if params.get("budget_update"):
            await send(
                {"type": "BUDGET_UPDATE", "stream_id": sid, "usage": {"tokens": 3, "x_new": 1}}
            )
        await send(
            {
                "type": "DATA",
                "flags": ["MORE"],
                "stream_id": sid,
                "msg_seq": seq,
                "payload": {"type": "agent.result.partial", "content": {"chunk": 0}},
            }
        )
        await send(
            {
                "type": "DATA",
                "flags": ["FIN"],
                "stream_id": sid,
                "msg_seq": seq + 1,
                "telemetry": {"tokens": 1, "usd_micros": 1, "latency_ms": 1},
                "payload": {"type": "agent.result.final", "content": {"ok": True, "answer": "ok"}},
            }
        )

    while True:
        try:
            msg = await ws.receive()
        except Exception:
            return
        if not isinstance(msg, (bytes, str)):
            seen.problems.append(("ATP-WS-011", "a message over the limit"))
            continue
        rec.received(msg)
        for s_id, c in pending:
            credit[s_id] = credit.get(s_id, DEFAULT_WINDOW) + c
        pending.clear()
        text = isinstance(msg, str)
        try:
            frames = [from_text(msg)] if isinstance(msg, str) else from_binary(msg)
        except ValueError as exc:
            seen.problems.append(("ATP-WS-001", f"undecodable message: {exc}"))
            continue
        for f in frames:
            seen.frames.append(f)
            t, sid, flags = f.get("type"), f.get("stream_id"), f.get("flags") or []
            if f.get("v", 1) != 1:
                seen.problems.append(("ATP-FRAME-002", f"version {f.get('v')}"))
            if isinstance(sid, int) and sid & 0x80000000:
                seen.problems.append(("ATP-FRAME-004", "reserved stream-id bit"))
            if f.get("raw_flags", 0) & 0x80:
                seen.problems.append(("ATP-FLAG-001", "a reserved flag bit"))
            if t == "CAPABILITIES":
                caps = {"versions": [1], "initial_window": DEFAULT_WINDOW, "max_streams": 100}
                await send({"type": "CAPABILITIES", "stream_id": 0, "caps": caps})
                if params.get("heartbeat"):
                    await send(
                        {"type": "DATA", "flags": ["HB"], "stream_id": 0, "payload_b64": "CQgH"}
                    )
                if params.get("router_syn"):
                    await send(
                        {
                            "type": "DATA",
                            "flags": ["SYN"],
                            "stream_id": 2,
                            "msg_seq": 1,
                            "payload": {"type": "agent.task"},
                        }
                    )
                continue
            if t == "DATA" and sid == 0 and "HB" in flags and "ACK" in flags:
                seen.hb_ack = (
                    seen.hb_ack
                    or f.get("payload_b64") == "CQgH"
                    or (f.get("payload_hex") == "090807")
                )
                continue
            if t == "ERROR":
                seen.errors_from_client.append(f)
                continue
            if t in ("WINDOW_UPDATE", "CAPABILITIES") or sid == 0:
                if f.get("msg_seq") or f.get("frag_seq"):
                    seen.problems.append(("ATP-FRAME-018", f"{t} with a msg_seq"))
                continue
            if t != "DATA" or not isinstance(sid, int):
                continue
            spent[sid] = spent.get(sid, 0) + int(f.get("size", 0))
            if spent[sid] > credit.get(sid, DEFAULT_WINDOW):
                seen.problems.append(
                    (
                        "ATP-FLOW-001",
                        f"stream {sid}: {spent[sid]} bytes with "
                        f"{credit.get(sid, DEFAULT_WINDOW)} of credit",
                    )
                )
                credit[sid] = 1 << 40
            if f.get("frag_seq") and not cont.get(sid, False):
                seen.problems.append(
                    (
                        "ATP-SEQ-010",
                        f"stream {sid}: frag_seq {f.get('frag_seq')} follows a frame without CONT",
                    )
                )
            cont[sid] = "CONT" in flags
            if "SYN" in flags:
                if f.get("frag_seq"):
                    seen.problems.append(("ATP-STREAM-001", "SYN on a frag_seq other than 0"))
                if sid <= highest:
                    seen.problems.append(("ATP-STREAM-002", f"SYN on stream {sid} after {highest}"))
                if drained:
                    seen.after_drain_syn = True
                highest = max(highest, sid)
                seen.opened.append(sid)
                seen.syn_times.append(trio.current_time())
                meta = f.get("meta")
                seen.final_answer.append(
                    meta.get("final_answer") if isinstance(meta, Mapping) else None
                )
                next_seq[sid] = int(f.get("msg_seq", 0)) + 1
                msgs[sid] = bytearray()
            elif sid in next_seq and f.get("frag_seq", 0) == 0:
                if f.get("msg_seq") != next_seq[sid]:
                    seen.problems.append(
                        (
                            "ATP-SEQ-001",
                            f"stream {sid}: msg_seq {f.get('msg_seq')}, expected {next_seq[sid]}",
                        )
                    )
                next_seq[sid] = int(f.get("msg_seq", 0)) + 1
            if "CONT" in flags:  # more fragments of the SYN message to come
                if params.get("withhold_s") and spent[sid] > DEFAULT_WINDOW // 2:
                    withhold = params["withhold_s"]
                    params = dict(params, withhold_s=0)  # once

                    async def grant_later(s: int = sid, w: float = withhold) -> None:
                        await trio.sleep(ctx.timeout(w))
                        pending.append((s, 1 << 22))  # counts for messages read after it
                        await send({"type": "WINDOW_UPDATE", "stream_id": s, "credit": 1 << 22})

                    async with trio.open_nursery() as n:  # read nothing meanwhile
                        n.start_soon(grant_later)
                continue
            if "SYN" not in flags and f.get("frag_seq", 0) == 0 and sid in next_seq:
                continue  # a later message of the client (e.g. FIN): nothing to do
            answered += 1
            if params.get("silent"):
                continue
            if params.get("bad_credit"):  # ATP-FLOW-004: malformed, whatever the window
                await send({"type": "WINDOW_UPDATE", "stream_id": sid, "credit": 1 << 31})
                continue
            if params.get("cut_frame"):  # ATP-WS-001: the header announces 4 GiB, 16 bytes follow
                head = struct.pack(
                    "!BBBBIIHHII", 1, 0, 0x04, 0, sid, next_seq[sid], 0, 0, 0, 0xFFFFFF00
                )
                rec.sent(head + bytes(16))
                await ws.send(head + bytes(16))
                continue
            if params.get("stray") and answered == 1:
                # ids the client has not used: an ERROR (ATP-ERR-011: discarded, never
                # answered), then a BUDGET_UPDATE (ATP-STREAM-016: a stream error EPROTO);
                # then the stream's answer, which the client must still take
                await send(
                    {
                        "type": "ERROR",
                        "flags": ["RST"],
                        "stream_id": sid + _STRAY_ERROR,
                        "error": {"code": "EINTERNAL", "message": "stray (conformance)"},
                    }
                )
                await send(
                    {
                        "type": "BUDGET_UPDATE",
                        "stream_id": sid + _STRAY_BUDGET,
                        "usage": {"tokens": 1},
                    }
                )
            if params.get("refuse_ms") and answered == 1:
                await send(
                    {
                        "type": "ERROR",
                        "flags": ["RST"],
                        "stream_id": sid,
                        "error": {
                            "code": "EPREEMPT",
                            "message": "shed (conformance)",
                            "retry_after_ms": params["refuse_ms"],
                        },
                    }
                )
                continue
            await answer(sid)
            if params.get("drain") and not drained:
                drained = True
                await send(
                    {
                        "type": "ERROR",
                        "stream_id": 0,
                        "error": {
                            "code": "EDRAINING",
                            "message": "draining (conformance)",
                            "retry_after_ms": 1000,
                        },
                    }
                )
