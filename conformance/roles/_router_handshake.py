"""Router cases of the WebSocket upgrade itself, spoken by hand (``router.handshake.…``):
the subprotocol the router selects (ATP-WS-007/008) and the 503 beyond its session limit
(ATP-LIMIT-003, which needs ``--session-limit N``, the router's configured limit).

The upgrade is written and read by hand over one TCP (or TLS) connection so that its
answer is read as sent: a WebSocket library refuses a subprotocol it did not offer before
the caller could see it.
"""

from __future__ import annotations

import base64
import secrets
from urllib.parse import urlsplit

import trio

from conformance._record import Recorder
from conformance.drivers.ws import client_tls_context, open_session
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext
from conformance.scenario import ScenarioFailed

__all__ = ["CASES", "MAX_SESSION_LIMIT", "run"]

#: the most sessions router.handshake.session-limit opens (--session-limit above: refused)
MAX_SESSION_LIMIT = 200
#: a subprotocol no ATP router knows, offered beside or instead of atp.v1
_OTHER_PROTOCOL = "x-conformance.v9"
#: the largest upgrade answer read
_MAX_ANSWER = 64 * 1024

CASES = [
    CaseSpec(
        "router.handshake.subprotocol-atp",
        Role.ROUTER,
        "the router selects atp.v1 when offered, and never a subprotocol the client did not offer",
        ("ATP-WS-008",),
        description=f"upgrades by hand offering {_OTHER_PROTOCOL!r} and 'atp.v1' (the answer's "
        "Sec-WebSocket-Protocol must be atp.v1), then offering only "
        f"{_OTHER_PROTOCOL!r} (no header, or a refusal; never a protocol not offered)",
    ),
    CaseSpec(
        "router.handshake.subprotocol-bearer",
        Role.ROUTER,
        "with the token as a bearer. subprotocol, the router selects atp.v1 if offered, else "
        "the bearer subprotocol",
        ("ATP-WS-007", "ATP-WS-008"),
        level=Level.L2,
        description="needs --token: offers ['atp.v1', 'bearer.TOKEN'] (atp.v1 selected), then "
        "['bearer.TOKEN'] alone (bearer.TOKEN selected)",
    ),
    CaseSpec(
        "router.handshake.session-limit",
        Role.ROUTER,
        "a handshake beyond the router's session limit is refused with HTTP 503 and Retry-After",
        ("ATP-LIMIT-003",),
        level=Level.L2,
        description="needs --session-limit N (the router's configured limit, at most "
        f"{MAX_SESSION_LIMIT}): opens N sessions and keeps them open; the next handshake must "
        "be answered 503 with a Retry-After header; then one more after they close is accepted",
    ),
]


async def _upgrade(
    ctx: RunContext, protocols: list[str], *, auth: bool = True
) -> tuple[int, dict[str, str]]:
    """One WebSocket upgrade by hand offering ``protocols``: the answer's status and its
    headers (lower-case names); the connection is closed at once."""
    u = urlsplit(ctx.target)
    if not u.hostname:
        raise ScenarioFailed(f"cannot read the host of {ctx.target!r}", "ws://HOST:PORT/PATH")
    port = u.port or (443 if u.scheme == "wss" else 80)
    head = [
        f"GET {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1",
        f"Host: {u.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        head.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    if auth and ctx.token:
        head.append(f"Authorization: Bearer {ctx.token}")
    with trio.fail_after(ctx.timeout(10)):
        stream: trio.abc.Stream = await trio.open_tcp_stream(u.hostname, port)
        if u.scheme == "wss":
            stream = trio.SSLStream(stream, client_tls_context(ctx), server_hostname=u.hostname)
        async with stream:
            await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode())
            got = b""
            while b"\r\n\r\n" not in got and len(got) < _MAX_ANSWER:
                try:
                    chunk = await stream.receive_some(4096)
                except (trio.BrokenResourceError, OSError):
                    break
                if not chunk:
                    break
                got += chunk
    lines = got.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ScenarioFailed(f"not an HTTP answer: {got[:120]!r}", "an HTTP status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _subprotocols(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    tries: list[tuple[list[str], str | None]]
    if case.id.endswith("-bearer"):
        if not ctx.token:
            return rec.result(Verdict.UNSUPPORTED, "needs --token (a router with auth on)")
        bearer = f"bearer.{ctx.token}"
        tries = [(["atp.v1", bearer], "atp.v1"), ([bearer], bearer)]
        auth = False
    else:
        tries = [([_OTHER_PROTOCOL, "atp.v1"], "atp.v1"), ([_OTHER_PROTOCOL], None)]
        auth = True
    for offered, want in tries:
        status, headers = await _upgrade(ctx, offered, auth=auth)
        chosen = headers.get("sec-websocket-protocol")
        shown = [p if not p.startswith("bearer.") else "bearer.<token>" for p in offered]
        rec.note(
            f"offered {shown}: HTTP {status}",
            {"selected": "bearer.<token>" if chosen and chosen.startswith("bearer.") else chosen},
        )
        if status == 101 and chosen is not None and chosen not in offered:
            return rec.failed(
                f"offered {shown}, the router selected {chosen!r}",
                "a subprotocol the client offered",
                ("ATP-WS-008",),
            )
        if want is None:
            continue  # none of ATP's offered: any answer but a foreign protocol will do
        if status != 101:
            return rec.failed(
                f"offered {shown}: HTTP {status}", "101 Switching Protocols", case.requirements
            )
        if chosen != want:
            said = "bearer.<token>" if want.startswith("bearer.") else want
            got = "bearer.<token>" if chosen and chosen.startswith("bearer.") else chosen
            return rec.failed(
                f"offered {shown}, the router selected {got!r}",
                f"{said!r} selected",
                ("ATP-WS-007",) if case.id.endswith("-bearer") else ("ATP-WS-008",),
            )
    return rec.passed()


async def _session_limit(ctx: RunContext, rec: Recorder) -> CaseResult:
    limit = ctx.options.get("session_limit")
    if not limit:
        return rec.result(
            Verdict.UNSUPPORTED, "needs --session-limit N (the router's configured session limit)"
        )
    if int(limit) > MAX_SESSION_LIMIT:
        return rec.result(
            Verdict.UNSUPPORTED,
            f"--session-limit {limit} is over {MAX_SESSION_LIMIT} sessions (configure the "
            "router under test with a smaller limit for this case)",
        )
    sessions = []
    try:
        for i in range(int(limit)):
            try:
                sessions.append(await open_session(ctx, rec, text=False))
            except Exception as exc:  # refused before the limit: the limit given is wrong
                return rec.result(
                    Verdict.ERROR,
                    f"session {i + 1} of --session-limit {limit} was refused ({exc}): is the "
                    "limit right, and are no other clients connected?",
                )
        status, headers = await _upgrade(ctx, ["atp.v1"])
        rec.note(
            f"session {int(limit) + 1}: HTTP {status}", {"retry-after": headers.get("retry-after")}
        )
        if status != 503:
            return rec.failed(
                f"the handshake beyond {limit} sessions was answered {status}",
                "HTTP 503 with Retry-After",
                ("ATP-LIMIT-003",),
            )
        if not headers.get("retry-after", "").strip():
            return rec.failed(
                "the 503 beyond the session limit has no Retry-After header",
                "HTTP 503 with Retry-After",
                ("ATP-LIMIT-003",),
            )
    finally:
        for session in sessions:
            await session.aclose()
    # the sessions are gone: a handshake is accepted again (not a router that refuses all)
    with trio.move_on_after(ctx.timeout(5)):
        while True:
            status, _ = await _upgrade(ctx, ["atp.v1"])
            if status == 101:
                return rec.result(
                    Verdict.PASS, f"503 beyond {limit} sessions, 101 once they closed"
                )
            await trio.sleep(0.1)
    return rec.failed(
        f"after the {limit} sessions closed, handshakes are still refused (HTTP {status})",
        "101 once below the limit",
        ("ATP-LIMIT-003",),
    )


async def run(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    try:
        if case.id.endswith("session-limit"):
            return await _session_limit(ctx, rec)
        return await _subprotocols(case, ctx, rec)
    except ScenarioFailed as exc:
        return rec.failed(exc.message, exc.expected, exc.violated or case.requirements)
    except (OSError, trio.TooSlowError) as exc:
        return rec.failed(f"the upgrade got no answer: {exc!r}", "an HTTP answer")
