"""The router role over QUIC (spec §13.2): ``--target quic://HOST:PORT``.

Two kinds of case, every id under ``router.quic.``:

* the transport-neutral router cases run again over QUIC: every binary scenario
  (``router.X`` -> ``router.quic.X``) and every invalid vector (``router.quic.vector.…``),
  citing their requirements minus the WebSocket and JSON ones; a scenario that cites
  nothing else is WebSocket-only and not repeated;
* the binding's own cases (``router.quic.binding.…``, ``router.quic.auth.…`` with
  ``--token``), one or more for each ATP-QUIC MUST a client can observe: ALPN, the stream
  mapping, JSON refused, close codes, resets with their FIN and STOP_SENDING, the FIN with
  the FINAL, the order of new streams, ``caps.auth``, the frame size limit.

Every QUIC case also checks the binding's invariants on what the router sent
(:func:`quic_invariants`): frames only on their ATP stream's QUIC stream and stream-0
frames on QUIC stream 0, no router-opened QUIC stream (ATP-QUIC-002, -011); the QUIC FIN
with the end of each ATP stream (ATP-QUIC-013); an ERROR's STOP_SENDING with its code and
no RESET_STREAM for the router's own reset (ATP-QUIC-006); a close code matching the
ERROR on stream 0 (ATP-QUIC-004). A run against a ``ws://`` target does not list these
cases (:func:`conformance.roles.router.cases`); given one anyway, they are SKIPPED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import trio

from conformance._record import Recorder
from conformance.drivers.quic import (
    ALPN,
    ERROR_CODES,
    QuicSession,
    code_name,
    open_quic,
    quic_code,
)
from conformance.drivers.ws import to_binary
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext, _router_final
from conformance.roles._quic_cases import BINDING as _BINDING
from conformance.scenario import Runner, ScenarioFailed, Unsupported, result_of, run_steps

__all__ = ["PREFIX", "cases", "quic_invariants", "run"]

PREFIX = "router.quic."
_TRANSPORT_ONLY = ("ATP-WS-", "ATP-JSON-")


_BY_ID = {PREFIX + b[0]: b for b in _BINDING}


#: what each ``needs`` of a binding case means, for ``atp conformance explain``
_NEEDS = {
    "token": "needs --token (auth on); UNSUPPORTED without",
    "limited_token": "needs --limited-token; UNSUPPORTED without",
    "adapter": "needs --adapter-listen; UNSUPPORTED without",
    "bad_token": "caps.auth carries the --token with its signature altered",
    "no_caps": "the client sends no CAPABILITIES first",
    "no_auto_fin": "the client keeps its side of the QUIC streams open",
}


def _neutral(reqs: Sequence[str]) -> tuple[str, ...]:
    return tuple(r for r in reqs if not r.startswith(_TRANSPORT_ONLY))


#: transport-neutral cases not repeated over QUIC, and why
_NOT_OVER_QUIC = {
    # a new QUIC stream whose SYN names an id not above every earlier QUIC stream's is a
    # connection error over QUIC (ATP-QUIC-023), not ATP-STREAM-002's stream error: the
    # binding's cases binding.syn-on-ended-id and binding.id-below-earlier check that
    "router.stream.syn-on-closed-id",
    "router.stream.id-not-increasing",
    "router.stream.refused-syn-id-used",
    "router.stream.refused-syn-id-used-qos",
}


def cases(options: Mapping[str, Any]) -> list[CaseSpec]:
    """Every QUIC case: the binding's, then the transport-neutral scenarios and vectors."""
    from conformance.roles import router

    out = [
        CaseSpec(
            PREFIX + cid,
            Role.ROUTER,
            title,
            reqs,
            level=Level.L3,
            description=title + "".join(f"; {_NEEDS[n]}" for n in needs),
        )
        for cid, reqs, title, needs, _ in _BINDING
    ]
    from conformance.roles import _router_http

    for spec in router._ws_cases(options):
        if spec.id in _router_http.IDS:
            continue  # cases in code drive WebSocket sessions of their own (handshake, load)
        if spec.id.startswith(("router.text.", PREFIX)) or spec.id.split(".")[1] in (
            "auth",
            "tls",
            "feedback",
            "lanes",
        ):
            continue
        if spec.id in _NOT_OVER_QUIC:
            continue
        reqs = _neutral(spec.requirements)
        if not reqs or "ATP-WS-001" in spec.requirements:
            continue  # a WebSocket-only case (ATP-WS-001: a frame cut by a message's end)
        out.append(
            CaseSpec(
                PREFIX + spec.id.removeprefix("router."),
                Role.ROUTER,
                spec.title + " (over QUIC)",
                reqs,
                level=spec.level,
                strength=spec.strength,
                description=spec.description,
            )
        )
    return out


async def _opener(ctx: RunContext, rec: Recorder, *, text: bool = False, **_: Any) -> QuicSession:
    return await open_quic(ctx, rec, auth=ctx.token)


async def run(case: CaseSpec, ctx: RunContext) -> CaseResult:
    rec = Recorder(case)
    if not ctx.target.startswith("quic://"):
        return rec.result(Verdict.SKIPPED, "a QUIC case: run with --target quic://HOST:PORT")
    if case.id in _BY_ID:
        return await _binding(case, ctx, rec)
    from conformance.roles import router

    inner = "router." + case.id.removeprefix(PREFIX)
    if inner.startswith("router.vector."):
        return await router.run_vector(case, ctx, rec, inner, opener=_opener, check=_check)
    if inner in _router_final.IDS:  # in code, on a session from the opener
        if ctx.adapter_listen:
            await _until_adapter_serves(case, ctx)
        return await _router_final.run(case, ctx, rec, opener=_opener, check=_check)
    sc = router.scenarios()[inner]
    if "adapter" in sc.get("needs", []) and ctx.adapter_listen:
        await _until_adapter_serves(case, ctx)
    return await router.run_scenario(case, ctx, rec, sc, opener=_opener, check=_check)


async def _until_adapter_serves(case: CaseSpec, ctx: RunContext) -> None:
    """Over QUIC the cases follow each other faster than over WebSocket, so an earlier
    case's adapter failures may have opened the router's breaker: wait (on a session of
    its own, not recorded) until the scripted adapter serves again."""
    s = await open_quic(ctx, Recorder(case), auth=None)
    r = Runner(ctx, s, s.rec, False)  # type: ignore[arg-type]
    try:
        await _caps(r, ctx.token)
        await run_steps(r, [{"until_serves": {"behaviour": "ok"}, "within_ms": 6000}])
    except ScenarioFailed:
        pass  # the case itself then says what is wrong
    finally:
        await s.aclose()


def _check(r: Runner, rec: Recorder, exc: ScenarioFailed | None) -> CaseResult:
    """The scenario's verdict, with the binding's invariants added (as result_of does)."""
    broken = quic_invariants(r.s) if isinstance(r.s, QuicSession) else []
    if broken and exc is None:
        exc = ScenarioFailed(
            "; ".join(f"[{i}] {m}" for i, m in broken[:4]),
            "the QUIC binding's invariants hold",
            tuple(dict.fromkeys(i for i, _ in broken)),
        )
    elif broken and exc is not None:
        exc = ScenarioFailed(
            exc.message + "; also " + "; ".join(f"[{i}] {m}" for i, m in broken[:3]),
            exc.expected,
            tuple(dict.fromkeys([*exc.violated, *(i for i, _ in broken)])),
        )
    return result_of(r, rec, exc)


def quic_invariants(s: QuicSession) -> list[tuple[str, str]]:
    """(requirement ID, what was wrong) for what the router sent on the QUIC level."""
    out: list[tuple[str, str]] = []
    if s.router_streams:
        out.append(("ATP-QUIC-011", f"the router opened QUIC streams {sorted(s.router_streams)}"))
    ended: dict[int, tuple[int, dict[str, Any]]] = {}
    for i, f in enumerate(s.frames):
        sid, q = f.get("stream_id"), f.get("_q")
        if not isinstance(sid, int) or sid < 0:
            continue
        if sid == 0 and q != 0:
            out.append(("ATP-QUIC-011", f"a stream-0 frame on QUIC stream {q}"))
        elif sid and s.a2q.get(sid, q) != q:
            out.append(
                (
                    "ATP-QUIC-002",
                    f"a frame for ATP stream {sid} on QUIC stream {q}, not {s.a2q[sid]}",
                )
            )
        if sid and (f.get("type") == "ERROR" or "FIN" in (f.get("flags") or [])):
            ended.setdefault(sid, (i, f))
    for sid, (i, f) in ended.items():
        q = s.a2q.get(sid)
        if q is None:
            continue
        later = [g for g in s.frames[i + 1 :] if g.get("_q") == q]
        if later:
            out.append(("ATP-QUIC-013", f"a frame on QUIC stream {q} after stream {sid}'s end"))
        if not s.closed and q not in s.fins:
            out.append(("ATP-QUIC-013", f"no QUIC FIN with the end of stream {sid}"))
        if f.get("type") == "ERROR" and q in s.resets and q not in s.stops:
            out.append(("ATP-QUIC-006", f"RESET_STREAM for the router's own reset of {sid}"))
        code = (f.get("error") or {}).get("code") if f.get("type") == "ERROR" else None
        if (
            f.get("type") == "ERROR"
            and not s.closed
            and q not in s.fin_sent
            and isinstance(code, str)
            and code in _CODES
            and s.stops.get(q) != quic_code(code)
        ):
            got = s.stops.get(q)
            out.append(
                (
                    "ATP-QUIC-006",
                    f"ERROR {code} on stream {sid} without STOP_SENDING {quic_code(code):#x} "
                    f"(got {'none' if got is None else hex(got)})",
                )
            )
    errs = [f for f in s.frames if f.get("type") == "ERROR" and f.get("stream_id") == 0]
    real = [f for f in errs if not f.get("_from_close")]
    if s.peer_close and real:
        code = (real[-1].get("error") or {}).get("code")
        want = quic_code(code) if isinstance(code, str) and code in _CODES else None
        got, frame_type, _ = s.peer_close
        if code != "EDRAINING" and want is not None and (frame_type is not None or got != want):
            out.append(
                ("ATP-QUIC-004", f"ERROR {code} on stream 0, then a close with code {got:#x}")
            )
    return out


_CODES = frozenset(ERROR_CODES)  #: spec §11's names, as the driver maps them


# ------------------------------------------------------------------ the binding's cases


async def _binding(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    _, _, _, needs, steps = _BY_ID[case.id]
    token: str | None = ctx.token
    if "token" in needs and not ctx.token:
        return rec.result(Verdict.UNSUPPORTED, "needs --token (a router with auth on)")
    if "limited_token" in needs:
        token = ctx.options.get("limited_token")
        if not token:
            return rec.result(
                Verdict.UNSUPPORTED, "needs --limited-token (task_types [qa], max_qos bronze)"
            )
    if "adapter" in needs and not ctx.adapter_listen:
        return rec.result(Verdict.UNSUPPORTED, "needs --adapter-listen (the scripted adapter)")
    if "bad_token" in needs and token:
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    if steps and "quic_alpn" in steps[0]:
        return await _alpn(ctx, rec)
    s = await open_quic(ctx, rec, auto_fin="no_auto_fin" not in needs, auth=None)
    r = Runner(ctx, s, rec, False)  # type: ignore[arg-type]
    r.open_other = _opener
    try:
        if "no_caps" not in needs:
            await _caps(r, token)
        await _steps(r, s, steps, token)
        await trio.sleep(0.05)  # a STOP_SENDING or FIN sent just after the end frame
        return _check(r, rec, None)
    except Unsupported as exc:
        return rec.result(Verdict.UNSUPPORTED, str(exc))
    except ScenarioFailed as exc:
        return _check(r, rec, exc)
    finally:
        await s.aclose()


async def _caps(r: Runner, token: str | None) -> None:
    caps: dict[str, Any] = {"versions": [1]}
    if token:
        caps["auth"] = f"Bearer {token}"
    await r.s.send({"type": "CAPABILITIES", "stream_id": 0, "caps": caps})
    got = await r.wait_for({"type": "CAPABILITIES", "stream_id": 0}, r.ctx.timeout(5))
    if got is None:
        raise ScenarioFailed(
            "no CAPABILITIES in answer to ours", "the router's CAPABILITIES", ("ATP-QUIC-008",)
        )
    r.router_caps = got.get("caps") if isinstance(got.get("caps"), Mapping) else {}


async def _steps(r: Runner, s: QuicSession, steps: Sequence[Mapping[str, Any]], token: Any) -> None:
    t = r.ctx.timeout
    for step in steps:
        op, arg = next(
            (k, v)
            for k, v in step.items()
            if k not in ("within_ms", "for_ms", "why", "violated", "or_with_token")
        )
        if not op.startswith(
            ("quic_", "expect_quic", "expect_reset", "expect_stop", "expect_no_stop")
        ):
            await run_steps(r, [step])
            continue
        if op == "quic_send":
            on = arg["on"]
            q = (
                s.open_quic_stream(unidirectional=on == "uni")
                if on in ("new", "uni")
                else s.a2q.get(on, on)
            )
            if "frame" in arg:
                data = to_binary(r._expand(arg["frame"]))
            else:
                data = str(arg.get("text", arg.get("data", ""))).encode()
            s.send_on(q, data, end=bool(arg.get("fin")))
        elif op == "quic_reset":
            s.reset(s.a2q[arg["stream_id"]], int(arg["code"]))
        elif op == "quic_stop":
            s.stop(s.a2q[arg["stream_id"]], int(arg["code"]))
        elif op == "quic_close":
            s.close_connection(int(arg["code"]))
            await trio.sleep(0.05)
        elif op == "expect_quic_close":
            codes = [arg["code"]]
            if r.ctx.token and step.get("or_with_token"):
                codes.append(step["or_with_token"])
            await _expect_quic_close(r, s, codes, tuple(arg.get("violated", ())))
        elif op == "expect_quic_fin":
            q = s.a2q[arg["stream_id"]]
            await _until(lambda q=q: q in s.fins, t(2))
            if q not in s.fins:
                raise ScenarioFailed(
                    f"no QUIC FIN on QUIC stream {q}", "the FIN with the FINAL", ("ATP-QUIC-013",)
                )
        elif op == "expect_reset_stream":
            q = s.a2q[arg["stream_id"]]
            await _until(lambda q=q: q in s.resets, t(3))
            if q not in s.resets:
                raise ScenarioFailed(
                    f"STOP_SENDING on QUIC stream {q} not answered with RESET_STREAM",
                    "RESET_STREAM (RFC 9000 §3.5)",
                    ("ATP-QUIC-006",),
                )
        elif op == "expect_no_stop_sending":  # the client's side has ended (ATP-QUIC-024)
            q = s.a2q[arg["stream_id"]]
            await trio.sleep(0.2)
            if q in s.stops:
                raise ScenarioFailed(
                    f"STOP_SENDING {s.stops[q]:#x} on QUIC stream {q}, whose client side ended",
                    "no STOP_SENDING",
                    ("ATP-QUIC-024",),
                )
        elif op == "expect_stop_sending":
            q = s.a2q[arg["stream_id"]]
            want = quic_code(arg["code"])
            await _until(lambda q=q: q in s.stops, t(2))
            if s.stops.get(q) != want:
                got = s.stops.get(q)
                raise ScenarioFailed(
                    f"STOP_SENDING on QUIC stream {q}: {'none' if got is None else hex(got)}",
                    f"STOP_SENDING {want:#x} after the ERROR",
                    ("ATP-QUIC-006",),
                )
        elif op == "quic_no_auth_echo":
            if "auth" in (r.router_caps or {}):
                raise ScenarioFailed(
                    "the router's CAPABILITIES carries caps.auth", "no auth", ("ATP-QUIC-009",)
                )
        elif op == "quic_out_of_order":
            await _out_of_order(r, s)
        elif op == "quic_reset_first":
            q = s.open_quic_stream()
            s.reset(q, 0xFF)
            await trio.sleep(0.05)
            await run_steps(r, [{"open": {"stream_id": 1}}])
            await run_steps(r, [{"expect_end": {"stream_id": 1, "how": "fin"}}])
        elif op == "quic_big":
            await _big(r, s)
        elif op == "quic_syn_before_auth":
            await r.send(r.syn({"stream_id": 1}))
            await trio.sleep(0.15)
            bad = (token or "x")[:-4] + "AAAA"
            await r.s.send(
                {"type": "CAPABILITIES", "stream_id": 0, "caps": {"versions": [1], "auth": bad}}
            )
            await _expect_quic_close(r, s, "ESEC", ("ATP-QUIC-008",))
            served = [f for f in s.frames if f.get("stream_id") == 1 and f.get("type") == "DATA"]
            if served:
                raise ScenarioFailed(
                    "the router answered the SYN sent before authentication",
                    "no frame for stream 1",
                    ("ATP-QUIC-009",),
                )
        else:
            raise ValueError(f"unknown QUIC step {op!r}")


async def _until(check: Any, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.01)


async def _expect_quic_close(
    r: Runner, s: QuicSession, code: str | list[str], violated: tuple[str, ...]
) -> None:
    codes = [code] if isinstance(code, str) else code
    wants = [quic_code(c) for c in codes]
    expected = " or ".join(f"CONNECTION_CLOSE {quic_code(c):#x} ({c})" for c in codes)
    if not await s.wait_closed(r.ctx.timeout(5)):
        raise ScenarioFailed("the connection stayed open", expected, violated)
    got, frame_type, reason = s.peer_close or (-1, None, "")
    if frame_type is not None or got not in wants:
        kind = "application" if frame_type is None else "transport"
        name = code_name(got) if frame_type is None else None
        raise ScenarioFailed(
            f"closed with {kind} code {got:#x}{f' ({name})' if name else ''} {reason!r}",
            expected,
            violated if got not in range(0x100, 0x10D) else ("ATP-QUIC-004", *violated),
        )


async def _alpn(ctx: RunContext, rec: Recorder) -> CaseResult:
    other = await open_quic(ctx, rec, alpn=("h3",), wait=False)
    with trio.move_on_after(ctx.timeout(3)):
        await other.handshake.wait()
    bad = other.alpn
    await other.aclose()
    if bad is not None:
        return rec.failed(f"a handshake offering only h3 completed (ALPN {bad!r})", "refused")
    good = await open_quic(ctx, rec)
    try:
        if good.alpn != ALPN:
            return rec.failed(f"negotiated ALPN {good.alpn!r}", f"ALPN {ALPN}")
        return rec.passed(f"h3 refused, {ALPN} negotiated")
    finally:
        await good.aclose()


async def _out_of_order(r: Runner, s: QuicSession) -> None:
    """SYN 3 on QUIC stream 8 sent (and delivered) before SYN 1 on QUIC stream 4."""
    q1 = s.open_quic_stream()
    q3 = q1 + 4
    s.a2q.update({1: q1, 3: q3})
    s.q2a.update({q1: 1, q3: 3})
    syn1, syn3 = r.syn({"stream_id": 1}), r.syn({"stream_id": 3})
    r.syn_seq.update({1: 1, 3: 1})
    r.next_sid = 5
    s.conn.send_stream_data(q1, b"")  # QUIC stream 4 exists (aioquic), nothing sent on it
    s.send_on(q3, to_binary(r._expand(syn3)))
    await trio.sleep(0.1)
    s.send_on(q1, to_binary(r._expand(syn1)))
    for sid in (1, 3):
        await run_steps(
            r, [{"expect_end": {"stream_id": sid, "how": "fin", "violated": ["ATP-QUIC-021"]}}]
        )


async def _big(r: Runner, s: QuicSession) -> None:
    import struct

    limit = int((r.router_caps or {}).get("max_frame_size", 1_048_576))
    if limit > 8 * 1024 * 1024:
        raise Unsupported(f"the router's max_frame_size is {limit} (over 8 MiB)")
    head = struct.pack("!BBBBIIHHII", 1, 0, 0x05, 1, 1, 1, 0, 8, 0, limit + 1)
    r.syn_seq[1] = 1
    r.next_sid = 3
    q = s.quic_stream_for(1)
    s.send_on(q, head)
    body = bytes(limit + 1)
    for i in range(0, len(body), 65536):
        s.send_on(q, body[i : i + 65536])
        await trio.sleep(0)
    await run_steps(
        r,
        [
            {"expect_end": {"stream_id": 1, "code": "ETOOBIG", "violated": ["ATP-QUIC-020"]}},
            {"still_serves": ["ATP-LIMIT-001"]},
        ],
    )
