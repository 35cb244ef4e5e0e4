"""Router cases outside one WebSocket session: the handshake timeout on a connection that
never finishes TLS or the upgrade (``router.tls.…``, ATP-WS-014), and feedback on the
router's HTTP port (``router.feedback.…``, ATP-FEED-001…004: needs ``--http-url``, the
router's HTTP base URL; UNSUPPORTED without). This module also sends the router role the
cases of :mod:`._router_handshake` (the upgrade by hand), :mod:`._router_load` (shedding
under pressure), :mod:`._router_learn` (gold's quality floor) and :mod:`._router_quota`
(tenant quotas, with ``--quota-tokens`` / ``--quota-concurrent``).

HTTP is spoken by hand over one TCP (or TLS) connection per request, so that a request
without a Content-Length (411) or with a body over 8 KiB (413) can be sent as the spec
describes them — a client library would fix either.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import trio

from conformance._record import Recorder
from conformance.drivers.ws import client_tls_context, open_session
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import (
    RunContext,
    _router_handshake,
    _router_learn,
    _router_load,
    _router_quota,
)
from conformance.scenario import Runner, ScenarioFailed, result_of

__all__ = ["CASES", "run"]

_ID_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
#: the largest answer read from the HTTP port
_MAX_ANSWER = 64 * 1024

CASES = [
    CaseSpec(
        "router.tls.handshake-timeout",
        Role.ROUTER,
        "a connection that opens TCP and never finishes TLS (wss) or the upgrade (ws) is closed",
        ("ATP-WS-014",),
        description="opens TCP to the target and sends the first bytes of a TLS ClientHello "
        "(wss://) or of an HTTP request line (ws://), then nothing; the router must close "
        "the connection within its handshake timeout (the suite waits at most 30 s; with "
        "--handshake-timeout S, the router's configured timeout, at most 1.5 S + 1 s)",
    ),
    CaseSpec(
        "router.feedback.accepted",
        Role.ROUTER,
        "feedback on a finished stream's decision id is accepted once; a second report is 404",
        ("ATP-FEED-001", "ATP-FEED-002", "ATP-FEED-003"),
        level=Level.L3,
        description="needs --http-url: two streams, whose FINALs carry different decision ids; "
        'POST /v1/feedback {"decision_id", "quality": 0.9} answers 200 {"accepted": true}, '
        "the same report again 404 (a decision takes one report); UNSUPPORTED on 409",
    ),
    CaseSpec(
        "router.feedback.refusals",
        Role.ROUTER,
        "malformed feedback is refused: 400 with a message, 411 without a Content-Length, "
        "413 over 8 KiB",
        ("ATP-FEED-002",),
        level=Level.L3,
        description="needs --http-url: quality 1.5, decision id '!!', a body that is not JSON "
        "(400 each, with a message); a chunked body without Content-Length (411); a 9 KiB "
        "body (413)",
    ),
    CaseSpec(
        "router.feedback.unknown-id",
        Role.ROUTER,
        "feedback naming a decision id the router never made is answered 404 with a message",
        ("ATP-FEED-003",),
        level=Level.L3,
        description="needs --http-url: a well-formed random decision id",
    ),
    CaseSpec(
        "router.feedback.needs-token",
        Role.ROUTER,
        "where sessions need a token, feedback without one is refused 401",
        ("ATP-FEED-004",),
        level=Level.L3,
        description="needs --http-url and --token: a POST without Authorization (401), "
        "with a bad bearer token (401), then with the run's token (not 401)",
    ),
]


async def _http(
    ctx: RunContext,
    base: str,
    body: bytes | None,
    *,
    headers: Mapping[str, str] | None = None,
    path: str = "/v1/feedback",
) -> tuple[int, bytes]:
    """POST ``body`` (``None``: a chunked body, no Content-Length) to ``base + path``."""
    u = urlsplit(base)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ScenarioFailed(f"--http-url {base!r} is not http(s)://HOST:PORT", "an HTTP URL")
    port = u.port or (443 if u.scheme == "https" else 80)
    head = [
        f"POST {u.path.rstrip('/')}{path} HTTP/1.1",
        f"Host: {u.netloc}",
        "Content-Type: application/json",
        "Connection: close",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is None:
        payload = b'{"decision_id": "x", "quality": 1}'
        head.append("Transfer-Encoding: chunked")
        data = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        data = body
    with trio.fail_after(ctx.timeout(10)):
        stream: trio.abc.Stream = await trio.open_tcp_stream(u.hostname, port)
        if u.scheme == "https":
            stream = trio.SSLStream(stream, client_tls_context(ctx), server_hostname=u.hostname)
        async with stream:
            await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            got = b""
            while len(got) < _MAX_ANSWER:
                try:
                    chunk = await stream.receive_some(4096)
                except (trio.BrokenResourceError, OSError):
                    break
                if not chunk:
                    break
                got += chunk
    status_line, _, rest = got.partition(b"\r\n")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ScenarioFailed(f"not an HTTP answer: {got[:120]!r}", "an HTTP status line")
    return int(parts[1]), rest.partition(b"\r\n\r\n")[2]


def _feedback(decision_id: str, quality: Any = 0.9) -> bytes:
    return json.dumps({"decision_id": decision_id, "quality": quality}).encode()


async def _decision_ids(ctx: RunContext, rec: Recorder, n: int) -> list[str]:
    """Run ``n`` streams on one session; the decision id of each FINAL (ATP-FEED-001)."""
    session = await open_session(ctx, rec, text=False)
    r = Runner(ctx, session, rec, False)
    ids: list[str] = []
    try:
        for i in range(n):
            sid = 1 + 2 * i
            await r.send(r.syn({"stream_id": sid}))
            end = await r.end_of(sid, ctx.timeout(10))
            if end is None or "FIN" not in (end.get("flags") or []):
                raise ScenarioFailed(f"stream {sid} did not end with FIN: {end}", "a FINAL")
            tel = end.get("telemetry")
            did = tel.get("decision_id") if isinstance(tel, Mapping) else None
            if not (isinstance(did, str) and 1 <= len(did) <= 64 and set(did) <= _ID_CHARS):
                raise ScenarioFailed(
                    f"FINAL telemetry.decision_id is {did!r}",
                    "a decision id of 1-64 [0-9A-Za-z_-]",
                    ("ATP-FEED-001",),
                )
            ids.append(did)
        if len(set(ids)) < len(ids):
            raise ScenarioFailed(
                f"two streams got the same decision id {ids}",
                "one id per decision",
                ("ATP-FEED-001",),
            )
        if result_of(r, rec, None).verdict is not Verdict.PASS:
            raise ScenarioFailed("the streams broke an invariant", "clean streams")
        return ids
    finally:
        await session.aclose()


async def _handshake_timeout(ctx: RunContext, rec: Recorder) -> CaseResult:
    # the bound: the router's own timeout when the run was told it (--handshake-timeout),
    # with a margin for a loaded host; else 30 s, three times the reference's default
    configured = ctx.options.get("handshake_timeout")
    if configured and float(configured) > 30:
        return rec.result(
            Verdict.UNSUPPORTED,
            f"--handshake-timeout {configured} is over 30 s (configure the router under test "
            "with a shorter handshake timeout for this case)",
        )
    bound = float(configured) * 1.5 + 1 if configured else 30.0
    u = urlsplit(ctx.target)
    if not u.hostname:
        return rec.result(Verdict.ERROR, f"cannot read host of {ctx.target!r}")
    port = u.port or (443 if u.scheme == "wss" else 80)
    try:
        stream = await trio.open_tcp_stream(u.hostname, port)
    except OSError as exc:
        return rec.result(Verdict.ERROR, f"cannot connect: {exc}")
    start = trio.current_time()
    # a TLS handshake record header announcing a ClientHello that never comes, or the
    # start of an HTTP request line that never ends
    first = b"\x16\x03\x01\x02\x00" if u.scheme == "wss" else b"GET / HTTP/1.1\r\n"
    closed = False
    async with stream:
        await stream.send_all(first)
        with trio.move_on_after(ctx.timeout(bound)):
            while True:
                try:
                    if not await stream.receive_some(4096):
                        closed = True
                        break
                except (trio.BrokenResourceError, OSError):
                    closed = True
                    break
    took = trio.current_time() - start
    rec.note("closed after (s)", round(took, 3))
    if not closed:
        return rec.failed(
            f"the connection is still open {took:.1f} s after its first bytes",
            f"closed within the handshake timeout ({configured} s, --handshake-timeout)"
            if configured
            else "closed within the handshake timeout",
            ("ATP-WS-014",),
        )
    return rec.result(Verdict.PASS, f"closed after {took:.1f} s")


CASES += [*_router_handshake.CASES, _router_load.CASE, _router_learn.CASE, *_router_quota.CASES]
#: the ids of the cases this module runs (the router role sends them here)
IDS = frozenset(c.id for c in CASES)


async def run(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    if case.id == _router_load.CASE.id:
        return await _router_load.run(case, ctx, rec)
    if case.id in _router_quota.IDS:
        return await _router_quota.run(case, ctx, rec)
    if case.id == "router.tls.handshake-timeout":
        return await _handshake_timeout(ctx, rec)
    if case.id.startswith("router.handshake."):
        return await _router_handshake.run(case, ctx, rec)
    base = ctx.options.get("http_url")
    if not base:
        return rec.result(Verdict.UNSUPPORTED, "needs --http-url (the router's HTTP base URL)")
    name = case.id.removeprefix("router.feedback.")
    auth = {"Authorization": f"Bearer {ctx.token}"} if ctx.token else {}
    if case.id == _router_learn.CASE.id:

        async def post(body: bytes) -> tuple[int, bytes]:
            return await _http(ctx, str(base), body, headers=auth)

        try:
            return await _router_learn.run(case, ctx, rec, post)
        except (OSError, trio.TooSlowError) as exc:
            return rec.failed(f"the HTTP port did not answer: {exc!r}", "an HTTP answer")
    try:
        if name == "needs-token":
            if not ctx.token:
                return rec.result(Verdict.UNSUPPORTED, "needs --token (a router with auth on)")
            probe = _feedback(secrets.token_hex(8))
            for hdrs in ({}, {"Authorization": "Bearer not-a-token"}):
                status, body = await _http(ctx, str(base), probe, headers=hdrs)
                rec.note(
                    f"without a valid token: HTTP {status}", body[:200].decode("utf-8", "replace")
                )
                if status != 401:
                    return rec.failed(
                        f"feedback with {hdrs or 'no Authorization'} answered {status}",
                        "401",
                        ("ATP-FEED-004",),
                    )
            status, body = await _http(ctx, str(base), probe, headers=auth)
            if status == 401:
                return rec.failed("the run's own token was refused (401)", "not 401")
            return rec.result(Verdict.PASS, f"401 without a token; {status} with one")
        if name == "unknown-id":
            status, body = await _http(
                ctx, str(base), _feedback(secrets.token_hex(12)), headers=auth
            )
            rec.note(f"HTTP {status}", body[:200].decode("utf-8", "replace"))
            if status == 409:
                return rec.result(
                    Verdict.UNSUPPORTED, "the router's learner takes no feedback (409)"
                )
            if status != 404 or not body.strip():
                return rec.failed(f"answered {status} {body[:80]!r}", "404 with a message")
            return rec.passed()
        if name == "refusals":
            (did,) = await _decision_ids(ctx, rec, 1)
            tries: list[tuple[str, bytes | None, int]] = [
                ("quality 1.5", _feedback(did, 1.5), 400),
                ("decision id '!!'", _feedback("!!"), 400),
                ("a body that is not JSON", b"{not json", 400),
                ("no Content-Length (chunked)", None, 411),
                ("a 9 KiB body", b'{"decision_id": "' + b"a" * 9216 + b'"}', 413),
            ]
            for what, body_in, want in tries:
                status, body = await _http(ctx, str(base), body_in, headers=auth)
                rec.note(f"{what}: HTTP {status}", body[:200].decode("utf-8", "replace"))
                if status != want or (want == 400 and not body.strip()):
                    return rec.failed(
                        f"{what}: answered {status} {body[:80]!r}",
                        f"{want}" + (" with a message" if want == 400 else ""),
                    )
            # none of those was taken as the decision's report: the real one still is
            status, body = await _http(ctx, str(base), _feedback(did), headers=auth)
            if status == 409:
                return rec.result(
                    Verdict.UNSUPPORTED, "the router's learner takes no feedback (409)"
                )
            if status != 200:
                return rec.failed(f"a valid report after refusals answered {status}", "200")
            return rec.passed()
        # accepted
        ids = await _decision_ids(ctx, rec, 2)
        status, body = await _http(ctx, str(base), _feedback(ids[0]), headers=auth)
        rec.note(f"first report: HTTP {status}", body[:200].decode("utf-8", "replace"))
        if status == 409:
            return rec.result(Verdict.UNSUPPORTED, "the router's learner takes no feedback (409)")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status != 200 or not (isinstance(answer, dict) and answer.get("accepted") is True):
            return rec.failed(
                f"the report answered {status} {body[:80]!r}",
                '200 {"accepted": true}',
                ("ATP-FEED-002",),
            )
        status, body = await _http(ctx, str(base), _feedback(ids[0], 0.1), headers=auth)
        rec.note(f"second report: HTTP {status}", body[:200].decode("utf-8", "replace"))
        if status != 404:
            return rec.failed(
                f"a second report on the same decision answered {status}",
                "404 (a decision takes one report)",
                ("ATP-FEED-003",),
            )
        return rec.passed()
    except ScenarioFailed as exc:
        return rec.failed(exc.message, exc.expected, exc.violated or case.requirements)
    except (OSError, trio.TooSlowError) as exc:
        return rec.failed(f"the HTTP port did not answer: {exc!r}", "an HTTP answer")
