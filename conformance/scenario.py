"""The scenario interpreter: runs one case of ``conformance/scenarios/*.yaml`` (schema
``conformance/schema/scenario.schema.json``) against a router over one WebSocket session.

A scenario is a list of steps (``open``, ``send``, ``send_raw``, ``grant``, ``expect``,
``expect_end``, ``expect_close``, ``expect_none``, ``still_serves``, ``adapter_event``,
``sleep_ms``, ``repeat``; with the scripted adapter ``adapter_meta``, ``adapter_count``,
``adapter_inflight``; ``drain`` (grant back every DATA frame's cost until the stream
ends), ``received_bytes``); matchers compare received frames (as JSON mappings) field by
field, with ``{"any_of": [...]}``, ``{"present": bool}``, ``{"has": [...]}`` /
``{"lacks": [...]}`` (flags), ``{"gte": n}`` / ``{"lte": n}``, ``{"regex": re}`` (full
match), ``{"contains": s}``. After the steps the
*invariants* every router exchange must keep are checked on everything received, each
with its requirement ID (msg_seq numbering, MORE/FIN, one end per stream, credit,
encoding, control frames' sequence numbers, telemetry at L2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from conformance._scenario_invariants import invariants, result_of
from conformance._scenario_runner import (
    DEFAULT_WINDOW,
    END_MS,
    META,
    WINDOW,
    Runner,
    ScenarioFailed,
    Unsupported,
    _ended,
    matches,
)

__all__ = [  # the interpreter's names, importable from here as before the split
    "DEFAULT_WINDOW",
    "END_MS",
    "META",
    "WINDOW",
    "Runner",
    "ScenarioFailed",
    "Unsupported",
    "_ended",
    "invariants",
    "matches",
    "result_of",
    "run_steps",
]


async def run_steps(r: Runner, steps: Sequence[Mapping[str, Any]]) -> None:
    for step in steps:
        ((op, arg),) = (
            (k, v) for k, v in step.items() if k not in ("within_ms", "for_ms", "why", "violated")
        )
        why = step.get("why", "")
        if op == "open":
            await r.send(r.syn(arg or {}))
        elif op == "send":
            await r.send(arg)
        elif op == "send_batch":  # several frames of ONE stream in one binary message
            from conformance.drivers.ws import to_binary

            if len({r._expand(m).get("stream_id", 0) for m in arg}) > 1:
                # over QUIC each ATP stream has its own QUIC stream (ATP-QUIC-002): frames
                # of several streams could not be one message there, nor keep their order
                raise ValueError(f"a send_batch holds frames of several streams: {arg}")
            for raw in arg:
                m = r._expand(raw)
                if "SYN" in (m.get("flags") or []):
                    r.syn_seq[m["stream_id"]] = int(m.get("msg_seq", 0))
                    r.next_sid = max(r.next_sid, int(m["stream_id"]) + 2)
            await r.s.send_raw(b"".join(to_binary(r._expand(m)) for m in arg))
        elif op == "send_big":  # a frame whose body is over the limit, zeros
            import struct

            if "past_credit" in arg:  # past the credit the router granted: its initial_window
                caps = r.router_caps or {}
                window = int(caps.get("initial_window", DEFAULT_WINDOW))
                limit = int(caps.get("max_frame_size", 1_048_576))
                arg = {**arg, "payload_len": window + int(arg["past_credit"])}
                if arg["payload_len"] > limit:
                    raise Unsupported(
                        f"the router's initial_window {window} leaves no frame past its "
                        f"credit within its max_frame_size {limit}"
                    )
            if "past_frame_limit" in arg:  # over the max_frame_size the router advertised
                limit = int((r.router_caps or {}).get("max_frame_size", 1_048_576))
                if limit > 64 * 1024 * 1024:
                    raise Unsupported(f"the router's max_frame_size is {limit} (over 64 MiB)")
                arg = {**arg, "payload_len": limit + int(arg["past_frame_limit"])}
            head = struct.pack(
                "!BBBBIIHHII",
                1,
                0,
                0x05,
                1,
                int(arg["stream_id"]),
                1,
                0,
                8,
                0,
                int(arg["payload_len"]),
            )
            r.syn_seq[arg["stream_id"]] = 1
            r.next_sid = max(r.next_sid, int(arg["stream_id"]) + 2)
            await r.s.send_raw(head + bytes(int(arg["payload_len"])))
        elif op == "idle_close":  # ATP-TIME-004: say nothing, open nothing, and wait
            idle = int((r.router_caps or {}).get("idle_timeout_ms", 60_000))
            if idle > int(arg.get("max_ms", 10_000)):
                raise Unsupported(
                    f"the router's idle_timeout_ms is {idle} (over {arg.get('max_ms', 10_000)})"
                )
            await _expect_close(
                r,
                {"code": "ETIMEOUT", "violated": ["ATP-TIME-004"]},
                r.ctx.timeout(idle / 1000 + 3),
            )
        elif op == "idle_heartbeats":  # ATP-TIME-008: heartbeats alone keep a session
            idle = int((r.router_caps or {}).get("idle_timeout_ms", 60_000))
            if idle > int(arg.get("max_ms", 10_000)):
                raise Unsupported(
                    f"the router's idle_timeout_ms is {idle} (over {arg.get('max_ms', 10_000)})"
                )
            # no stream open: a heartbeat every third of the idle timeout, for twice it
            # (in the router's time: the scale stretches neither)
            for beat in range(6):
                await r.s.send(
                    {"type": "DATA", "flags": ["HB"], "stream_id": 0, "payload_b64": "aGI="}
                )
                closing = await r.wait_for({"type": "ERROR", "stream_id": 0}, idle / 3000)
                if closing is not None or r.s.closed:
                    raise ScenarioFailed(
                        f"the session was closed after {beat + 1} heartbeats, one every "
                        f"{idle // 3} ms: {_short(closing) if closing else 'transport closed'}",
                        "heartbeats count as activity: the idle timeout restarts on each",
                        tuple(arg.get("violated", ())),
                    )
        elif op == "other_session":  # the same steps' language on a second session
            from conformance.drivers.ws import open_session

            other = await (r.open_other or open_session)(r.ctx, r.rec, text=r.text)
            try:
                r2 = Runner(r.ctx, other, r.rec, r.text)
                r2.next_sid = 101
                await run_steps(r2, arg)
            finally:
                await other.aclose()
        elif op == "send_fragmented":
            await _send_fragmented(r, arg, r.ms(step, default=4000))
        elif op == "open_to_limit":  # as many streams as the router's max_streams allows
            limit = int((r.router_caps or {}).get("max_streams", 100))
            if limit > 1000:
                raise Unsupported(f"the router's max_streams is {limit} (over 1,000)")
            for _ in range(limit):
                await r.send(r.syn(dict(arg)))
            await r.send(r.syn(dict(arg)))
        elif op == "adapter_none":
            adapter = r.ctx.options.get("adapter")
            if adapter is None:
                raise Unsupported("needs --adapter-listen")
            await trio.sleep(r.ms(step, "for_ms", 500))
            seen_events = [
                e.get("event")
                for e in adapter.events(r.token)
                if arg.get("adapter") in (None, e.get("adapter"))
            ]
            if arg["event"] in seen_events:
                raise ScenarioFailed(
                    f"the adapter saw {arg['event']!r} (events {seen_events})",
                    f"no {arg['event']} yet",
                    tuple(arg.get("violated", ())),
                )
        elif op == "expect_transport_close":
            if not await r.s.wait_closed(r.ms(step, default=5000)):
                raise ScenarioFailed(
                    "the transport stayed open", "the session ends", tuple(arg.get("violated", ()))
                )
            errs = [f for f in r.s.frames if f.get("type") == "ERROR" and f.get("stream_id") == 0]
            if errs and arg.get("no_error"):
                raise ScenarioFailed(
                    f"answered with {_short(errs[0])}", "no ERROR in answer", ("ATP-ERR-011",)
                )
        elif op == "close":
            await r.s.aclose()
            r.s.closed = True
        elif op == "adapter_deadline":
            adapter = r.ctx.options.get("adapter")
            if adapter is None:
                raise Unsupported("needs --adapter-listen")
            starts = [e for e in adapter.events(r.token) if e.get("event") == "stream_start"]
            dl = starts[0].get("deadline_ms") if starts else None
            if not isinstance(dl, (int, float)) or dl <= arg["gt_ms"]:
                raise ScenarioFailed(
                    f"the adapter call's deadline is {dl} ms",
                    f"a gRPC deadline later than {arg['gt_ms']} ms",
                    tuple(arg.get("violated", ())),
                )
        elif op == "send_raw":
            if "text" in arg:
                import json

                try:  # the session_id it carries is the one the router must echo
                    obj = json.loads(arg["text"])
                    sid_text = obj.get("session_id")
                    if isinstance(sid_text, str) and r.session_id is None:
                        r.session_id, r.session_from = sid_text, len(r.s.frames)
                    num = obj.get("stream_id")
                    if "SYN" in (obj.get("flags") or []) and type(num) is int:
                        r.next_sid = max(r.next_sid, num + 2)  # used, refused or not
                except (ValueError, AttributeError, TypeError):
                    pass
            raw = bytes.fromhex(arg["hex"]) if "hex" in arg else arg["text"]
            if isinstance(raw, bytes) and len(raw) >= 24 and raw[2] & 0x01:
                # a SYN uses its id even when it is refused (ATP-STREAM-002): open above it
                syn_sid = int.from_bytes(raw[4:8], "big")
                r.next_sid = max(r.next_sid, syn_sid + 2)
            await r.s.send_raw(raw)
        elif op == "grant":
            await r.send(
                {"type": "WINDOW_UPDATE", "stream_id": arg["stream_id"], "credit": arg["credit"]}
            )
        elif op == "sleep_ms":  # keep reading meanwhile: what arrives is what was sent so far
            with trio.move_on_after(r.ctx.timeout(float(arg) / 1000)):
                while await r.s.next(60.0) is not None or not r.s.closed:
                    pass
                await trio.sleep_forever()
        elif op == "repeat":
            for _ in range(int(arg["times"])):
                await run_steps(r, arg["steps"])
        elif op == "expect":
            got = await r.wait_for(arg, r.ms(step))
            if got is None:
                raise ScenarioFailed(
                    f"no frame matching {arg} {why}".strip(),
                    str(arg),
                    tuple(step.get("violated", ())),
                )
        elif op == "expect_none":
            seen = len(r.s.frames)
            with trio.move_on_after(r.ms(step, "for_ms", 500)):
                while True:
                    f = await r.s.next(r.ms(step, "for_ms", 500))
                    if f is None and r.s.closed:
                        break
            bad = [f for f in r.s.frames[seen:] if matches(f, arg)]
            if bad:
                raise ScenarioFailed(
                    f"unexpected frame {_short(bad[0])} {why}".strip(),
                    f"none matching {arg}",
                    tuple(step.get("violated", ())),
                )
        elif op == "expect_end":
            await _expect_end(r, arg, r.ms(step))
        elif op == "expect_close":
            await _expect_close(r, arg, r.ms(step, default=5000))
        elif op == "until_serves":  # poll (a breaker may be open from an earlier case)
            with trio.move_on_after(r.ms(step, default=8000)):
                while True:
                    sid = r.next_sid
                    await r.send(r.syn({"stream_id": sid, **(arg or {})}))
                    end = await r.end_of(sid, r.ms({}, default=5000))
                    if end is not None and "FIN" in end.get("flags", []):
                        break
                    await trio.sleep(r.ctx.timeout(0.5))
            # earlier refusals are the harness's polling, not the case's subject
            for f in r.s.frames:
                f["_poll"] = True
        elif op == "still_serves":
            nums = [f["stream_num"] for f in r.s.frames if isinstance(f.get("stream_num"), int)]
            # over QUIC, above every ATP id an earlier QUIC stream named (ATP-QUIC-023)
            fresh = getattr(r.s, "fresh_sid", 1)
            sid = max([r.next_sid, fresh, *(n + 1 for n in nums)])
            await r.send(r.syn({"stream_id": sid}))
            end = await r.end_of(sid, r.ms(step))
            if end is None or "FIN" not in end.get("flags", []):
                raise ScenarioFailed(
                    f"the session no longer serves: stream {sid} ended with {_short(end)}",
                    "a new stream on the same session completes with FIN",
                    tuple(arg) if isinstance(arg, list) else ("ATP-ERR-001",),
                )
        elif op == "adapter_event":
            await _adapter_event(r, arg, r.ms(step, default=5000))
        elif op == "adapter_mark":  # adapter_count since_mark counts the events after it
            adapter = r.ctx.options.get("adapter")
            r.mark = len(adapter.events(r.token)) if adapter is not None else 0
        elif op in ("adapter_meta", "adapter_count", "adapter_inflight"):
            from conformance._scenario_steps import adapter_check

            if "within_ms" in step:  # events may still be coming: wait for them to hold
                with trio.move_on_after(r.ms(step)):
                    while True:
                        try:
                            adapter_check(r, op, arg)
                            break
                        except ScenarioFailed:
                            await trio.sleep(0.02)
            adapter_check(r, op, arg)
        elif op == "requires_event":  # an optional behaviour (MAY): not used, UNSUPPORTED
            adapter = r.ctx.options.get("adapter")
            if adapter is None:
                raise Unsupported("needs --adapter-listen")
            if not await adapter.wait_event(
                r.token, arg["event"], timeout=r.ms(step, default=1000), name=arg.get("adapter")
            ):
                raise Unsupported(arg.get("why") or f"the router made no {arg['event']} call")
            firsts = [e for e in adapter.events(r.token) if e.get("event") == arg["event"]]
            if arg.get("first") and firsts[0].get("adapter") != arg.get("adapter"):
                order = [(e.get("adapter"), e.get("event")) for e in adapter.events(r.token)]
                raise Unsupported(
                    f"{arg.get('why') or 'the first ' + arg['event'] + ' was elsewhere'} "
                    f"(events {order[:12]})"
                )
        elif op == "frames_count":
            n = sum(1 for f in r.s.frames if matches(f, arg["match"]))
            if (
                ("eq" in arg and n != arg["eq"])
                or ("lte" in arg and n > arg["lte"])
                or ("gte" in arg and n < arg["gte"])
            ):
                # the router's choice leaves nothing to test, unless what it sent broke an
                # invariant (an answer past the credit "fits" too): then that is the verdict
                if "unsupported" in arg and not invariants(r):
                    raise Unsupported(f"{arg['unsupported']} ({n} frames matching {arg['match']})")
                want = {k: arg[k] for k in ("eq", "gte", "lte") if k in arg}
                raise ScenarioFailed(
                    f"{n} frames matching {arg['match']} {why}".strip(),
                    f"a count {want}",
                    tuple(arg.get("violated", ())),
                )
        elif op == "drain":
            from conformance._scenario_steps import drain

            await drain(r, arg, r.ms(step, default=10_000))
        elif op == "received_bytes":
            sid = r.last_sid if arg["stream_id"] == "last" else arg["stream_id"]
            total = sum(
                int(f.get("size", 0))
                for f in r.s.frames
                if f.get("stream_id") == sid and f.get("type") == "DATA"
            )
            if total < int(arg["gte"]):
                raise ScenarioFailed(
                    f"stream {sid}: {total} bytes of DATA received",
                    f"at least {arg['gte']} bytes",
                    tuple(arg.get("violated", ())),
                )
        else:
            raise ValueError(f"unknown step {op!r}")


async def _send_fragmented(r: Runner, arg: Mapping[str, Any], wait: float) -> None:
    """A SYN message of a ``prompt_bytes`` prompt in fragments of ``fragment`` payload bytes,
    sent within the router's credit: when it runs out, wait (up to ``wait``) for the
    WINDOW_UPDATE the router owes for buffered fragments (ATP-SEQ-009, ATP-FLOW-012).
    ``prompt_bytes: half_window`` with ``fragment: whole``: one frame of just over half the
    router's initial_window (ATP-FLOW-010), UNSUPPORTED when its max_frame_size is smaller."""
    import cbor2

    from conformance.drivers.ws import to_binary

    sid = arg["stream_id"]
    if "past_message_limit" in arg:  # over the max_message_size the router advertised
        limit = int((r.router_caps or {}).get("max_message_size", 4_194_304))
        if limit > 64 * 1024 * 1024:
            raise Unsupported(f"the router's max_message_size is {limit} (over 64 MiB)")
        arg = {**arg, "prompt_bytes": limit + int(arg["past_message_limit"])}
    window = int((r.router_caps or {}).get("initial_window", DEFAULT_WINDOW))
    prompt_bytes = arg["prompt_bytes"]
    if prompt_bytes == "half_window":
        prompt_bytes = -(-window // 2) + 1024
        frame_max = int((r.router_caps or {}).get("max_frame_size", 1_048_576))
        if prompt_bytes + 4096 > min(frame_max, window):
            raise Unsupported(
                f"one frame of half the router's initial_window ({window}) does not fit its "
                f"max_frame_size ({frame_max}) and credit"
            )
    body = cbor2.dumps(
        {"type": "agent.task", "content": {"prompt": r.prompt() + "x" * int(prompt_bytes)}}
    )
    size = len(body) if arg["fragment"] == "whole" else int(arg["fragment"])
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    credit, seen = window, 0
    r.syn_seq[sid] = 1
    r.next_sid = max(r.next_sid, sid + 2)
    batch: list[bytes] = []
    batch_bytes = 0
    import base64

    for i, part in enumerate(parts[:65536]):  # frag_seq is 16 bits: 65,536 fragments at most
        m: dict[str, Any] = {
            "type": "DATA",
            "stream_id": sid,
            "msg_seq": 1,
            "frag_seq": i,
            "flags": (["SYN"] if i == 0 else []) + (["CONT"] if i < len(parts) - 1 else []),
            "payload_b64": base64.b64encode(part).decode(),
        }
        if i == 0:
            # the stream's ttl is a time bound too: --timeout-scale stretches it, or a slow
            # host's 65,536 fragments outlast it (ETIMEOUT instead of the error under test)
            ttl = min(0xFFFF, math.ceil(r.ctx.timeout(8)))
            m.update(qos="gold", ttl=ttl, window=arg.get("window", WINDOW), meta=dict(META))
        frame = to_binary(m)
        while len(frame) > credit:
            if batch:
                await r.s.send_raw(b"".join(batch))
                batch, batch_bytes = [], 0
            got = None
            with trio.move_on_after(wait):
                while got is None:
                    f = await r.s.next(wait)
                    if f is None and r.s.closed:
                        break
                    for g in r.s.frames[seen:]:
                        if g.get("stream_id") == sid and g.get("type") == "WINDOW_UPDATE":
                            credit += int(g.get("credit") or 0)
                            got = g
                        elif g.get("stream_id") == sid and _ended(g):
                            return  # the router ended it: the case's expect_end judges that
                    seen = len(r.s.frames)
            if got is None:
                raise ScenarioFailed(
                    f"no credit came back after {i} fragments ({window - credit} bytes in flight)",
                    "WINDOW_UPDATE for the buffered fragments",
                    tuple(arg.get("violated", ())),
                )
        credit -= len(frame)
        batch.append(frame)
        batch_bytes += len(frame)
        if batch_bytes >= 65536:
            await r.s.send_raw(b"".join(batch))
            batch, batch_bytes = [], 0
    if batch:
        await r.s.send_raw(b"".join(batch))


def _short(f: Mapping[str, Any] | None) -> str:
    if f is None:
        return "nothing (no end within the time bound)"
    keep = ("type", "stream_id", "flags", "msg_seq", "error")
    return str({k: f[k] for k in keep if k in f})


async def _expect_end(r: Runner, arg: Mapping[str, Any], timeout: float) -> None:
    sid = r.last_sid if arg["stream_id"] == "last" else arg["stream_id"]
    end = await r.end_of(sid, timeout)
    how = arg.get("how", "any")
    codes = arg.get("code")
    codes = [codes] if isinstance(codes, str) else codes
    want = f"stream {sid} ends with " + (f"ERROR {'/'.join(codes)}" if codes else how)
    viol = tuple(arg.get("violated", ()))
    if end is None:
        raise ScenarioFailed(f"stream {sid} did not end: {_short(end)}", want, viol)
    is_err = end.get("type") == "ERROR"
    if how == "fin" and (is_err or "FIN" not in end.get("flags", [])):
        raise ScenarioFailed(f"stream {sid} ended with {_short(end)}", want, viol)
    if codes or how == "error":
        code = (end.get("error") or {}).get("code") if is_err else None
        if not is_err or (codes and code not in codes):
            hint = ""
            if code == "ETIMEOUT" and "ETIMEOUT" not in (codes or ()):
                # the case's ttl ran out before the router could answer: a slow host
                # (or a slow router), which --timeout-scale gives more time
                scale = r.ctx.timeout_scale
                hint = (
                    " (the stream's ttl passed: on a slow host, give the case more time "
                    f"with --timeout-scale {max(3, math.ceil(scale * 2)):g})"
                )
            raise ScenarioFailed(f"stream {sid} ended with {_short(end)}{hint}", want, viol)
        msg = (end.get("error") or {}).get("message")
        if arg.get("message_regex") and not (
            isinstance(msg, str) and re.search(arg["message_regex"], msg)
        ):
            raise ScenarioFailed(
                f"ERROR message {msg!r} does not match {arg['message_regex']!r}", want, viol
            )
        if arg.get("retry_after") and not isinstance(
            (end.get("error") or {}).get("retry_after_ms"), int
        ):
            raise ScenarioFailed(
                f"ERROR without retry_after_ms: {_short(end)}", want, ("ATP-ERR-004", *viol)
            )


async def _expect_close(r: Runner, arg: Mapping[str, Any], timeout: float) -> None:
    codes = arg.get("code")
    codes = [codes] if isinstance(codes, str) else codes
    err = await r.wait_for({"type": "ERROR", "stream_id": 0}, timeout)
    want = f"ERROR {'/'.join(codes or ['*'])} on stream 0, then the transport closes"
    if err is None:
        raise ScenarioFailed(
            "no ERROR on stream 0"
            + (" (the transport closed)" if r.s.closed else " within the time bound"),
            want,
            ("ATP-ERR-002", *arg.get("violated", ())),
        )
    code = (err.get("error") or {}).get("code")
    if codes and code not in codes:
        raise ScenarioFailed(f"ERROR {code} on stream 0", want, tuple(arg.get("violated", ())))
    if not await r.s.wait_closed(timeout):
        raise ScenarioFailed(
            "the transport stayed open after a connection error",
            want,
            ("ATP-ERR-002", "ATP-SESS-004"),
        )
    quic = type(r.s).__module__.endswith(".quic")
    close = close_code_of(str(code), quic=quic)
    if close is not None and r.s.close_code != close:
        # ATP-ERR-002: "then close the transport with the code's close code" (spec §11)
        shown = "{:#x}" if quic else "{}"
        got = r.s.close_code
        raise ScenarioFailed(
            f"ERROR {code} on stream 0, then the transport closed with "
            + ("no close code" if got is None else "close code " + shown.format(got)),
            f"{want}, with close code " + shown.format(close),
            ("ATP-ERR-002",),
        )


#: the error codes of spec §11 in the table's order: a code's QUIC close code is 0x100 plus
#: its index, its WebSocket close code 4000 plus its index, but where a standard one fits
ERROR_CODES = (
    "EPROTO", "ESEQ_RETRY", "EWINDOW", "EBUDGET", "ETIMEOUT", "EAGENTDOWN", "ESEC",
    "ECONSENSUS", "EPREEMPT", "EDRAINING", "EWINDOW_AGENT", "ETOOBIG", "EINTERNAL",
)  # fmt: skip
_WS_STANDARD = {"EPROTO": 1002, "ESEC": 1008, "EDRAINING": 1001, "ETOOBIG": 1009, "EINTERNAL": 1011}


def close_code_of(code: str, *, quic: bool) -> int | None:
    """The close code of a connection error ``code`` (None: not a code of the table)."""
    if code not in ERROR_CODES:
        return None
    index = ERROR_CODES.index(code)
    return 0x100 + index if quic else _WS_STANDARD.get(code, 4000 + index)


async def _adapter_event(r: Runner, arg: Mapping[str, Any], timeout: float) -> None:
    adapter = r.ctx.options.get("adapter")
    if adapter is None:
        raise Unsupported("needs --adapter-listen")
    ok = await adapter.wait_event(r.token, arg["event"], timeout=timeout, name=arg.get("adapter"))
    if not ok:
        events = [(e.get("adapter"), e.get("event")) for e in adapter.events(r.token)]
        raise ScenarioFailed(
            f"the adapter saw no {arg['event']!r} (events: {events})",
            f"the adapter call is {arg['event']}",
            tuple(arg.get("violated", ())),
        )
