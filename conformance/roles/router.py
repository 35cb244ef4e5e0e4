"""The router role: the suite plays the client (and, with ``--adapter-listen``, the
router's adapter) against a router at ``ws://``/``wss://``, or at ``quic://`` (the cases of
:mod:`conformance.roles.router_quic`, ``router.quic.…``; the others are SKIPPED there).

Cases come from three places, each naming its requirement IDs:

* ``conformance/scenarios/router*.yaml`` — scripted exchanges (:mod:`conformance.scenario`),
  run in the binary encoding and, unless a case says ``encodings: [binary]``, again in the
  JSON text mapping as ``router.text.…``;
* every invalid vector of ``conformance/vectors/frames.json`` sent to the router
  (``router.vector.…``): it must answer with the vector's code, on the stream for a stream
  error (and keep serving, ATP-ERR-001), on stream 0 then close for a connection error
  (ATP-ERR-002);
* handshake and authentication cases in code (``router.auth.…``, L2, need ``--token``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import yaml

from atp_proto.transports.ws_client import HandshakeRefused
from conformance._record import Recorder
from conformance.drivers.ws import WsSession, open_session
from conformance.model import CaseResult, CaseSpec, Level, Role, Strength, Verdict
from conformance.roles import (
    RunContext,
    TargetUnreachable,
    _router_final,
    _router_http,
    router_quic,
)
from conformance.scenario import Runner, ScenarioFailed, Unsupported, result_of, run_steps
from conformance.vectors import load

__all__ = ["cases", "run"]


@cache
def scenarios() -> dict[str, dict[str, Any]]:
    """Case id -> scenario (with ``_text`` for the text-mapping run), from the YAML files."""
    out: dict[str, dict[str, Any]] = {}
    folder = resources.files("conformance").joinpath("scenarios")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not (entry.name.startswith("router") and entry.name.endswith(".yaml")):
            continue
        for sc in yaml.safe_load(entry.read_text("utf-8"))["cases"]:
            encs = sc.get("encodings", ["binary", "text"])
            if "binary" in encs:
                out[sc["id"]] = dict(sc, _text=False)
            if "text" in encs:
                tid = sc["id"].replace("router.", "router.text.", 1)
                out[tid] = dict(sc, id=tid, _text=True)
    return out


def _vectors() -> list[dict[str, Any]]:
    return [v for v in load("frames")["vectors"] if "error" in v]


_AUTH = [
    (
        "router.auth.valid-token",
        ("ATP-SEC-001", "ATP-WS-006"),
        "a valid bearer token in the Authorization header opens a session that serves",
    ),
    ("router.auth.no-token", ("ATP-SEC-001",), "a handshake without a token is refused (HTTP 401)"),
    (
        "router.auth.bad-signature",
        ("ATP-SEC-001", "ATP-SEC-002"),
        "the token with its signature altered is refused",
    ),
    (
        "router.auth.alg-none",
        ("ATP-SEC-002", "ATP-SEC-007"),
        "the token's claims re-signed with alg none are refused",
    ),
    (
        "router.auth.expired-token",
        ("ATP-SEC-003",),
        "an expired token (option expired_token) is refused",
    ),
    (
        "router.auth.query-token",
        ("ATP-WS-006", "ATP-WS-003"),
        "the token in the access_token query parameter is accepted",
    ),
    (
        "router.auth.subprotocol-token",
        ("ATP-WS-006",),
        "the token as a bearer. subprotocol is accepted and atp.v1 selected",
    ),
    (
        "router.auth.header-first",
        ("ATP-WS-009",),
        "a valid token in the header beside a bad one in the query is accepted (the header wins)",
    ),
    (
        "router.auth.task-type-refused",
        ("ATP-SEC-004",),
        "with the limited token (task_types [qa]), a stream of another task type is refused ESEC",
    ),
    (
        "router.auth.lane-capped",
        ("ATP-SEC-004", "ATP-SEC-015"),
        "with the limited token (max_qos bronze), a gold SYN runs as bronze, said in ext lane",
    ),
    (
        "router.auth.no-secret-in-refusal",
        ("ATP-SEC-005", "ATP-ERR-006"),
        "a refused handshake's answer does not echo the token",
    ),
]


_LANES = CaseSpec(
    "router.lanes.gold-not-starved",
    Role.ROUTER,
    "at its concurrency limit the router admits a gold stream before the bronze ones queued "
    "ahead of it (weighted fair queuing), and a stream of qos 0 as silver",
    ("ATP-ADAPT-001", "ATP-FRAME-017"),
    level=Level.L2,
    description="needs --adapter-listen: times one bronze stream alone (T), then opens 8 bronze "
    "and, once they are queued, 1 gold stream and 1 of qos 0 of the same work; when the "
    "router queued them (the last bronze ends after 2.5 T) at least 3 bronze streams must "
    "end after the gold one, and at least 1 after the qos 0 one (silver, ATP-FRAME-017); "
    "UNSUPPORTED when the router ran them all at once",
)


def cases(options: Mapping[str, Any]) -> list[CaseSpec]:
    """Every router case: the WebSocket ones, then the QUIC ones (``router.quic.…``); a
    run against one transport (``options["target"]``) gets only that transport's."""
    target = str(options.get("target") or "")
    ws = [] if target.startswith("quic://") else _ws_cases(options)
    quic = [] if target.startswith(("ws://", "wss://")) else router_quic.cases(options)
    return [*ws, *quic]


def _ws_cases(options: Mapping[str, Any]) -> list[CaseSpec]:
    out: list[CaseSpec] = [_LANES, *_router_http.CASES, *_router_final.CASES]
    for sid, sc in scenarios().items():
        out.append(
            CaseSpec(
                sid,
                Role.ROUTER,
                sc["title"],
                tuple(sc["requirements"]),
                level=Level(sc.get("level", "L1")),
                strength=Strength(sc.get("strength", "MUST")),
                description=sc.get("description", "") or _describe(sc),
            )
        )
    for v in _vectors():
        scope = (
            "on the stream, and keeps serving"
            if v["scope"] == "stream"
            else "on stream 0, then closes the transport"
        )
        out.append(
            CaseSpec(
                f"router.vector.{v['id']}",
                Role.ROUTER,
                v["title"],
                tuple(
                    dict.fromkeys(
                        [
                            *v["requirements"],
                            "ATP-ERR-001" if v["scope"] == "stream" else "ATP-ERR-002",
                        ]
                    )
                ),
                description=f"sends the vector's bytes ({v['title']}) after the "
                f"CAPABILITIES exchange; expects ERROR {v['error']} {scope}",
            )
        )
    for cid, reqs, title in _AUTH:
        out.append(
            CaseSpec(
                cid,
                Role.ROUTER,
                title,
                reqs,
                level=Level.L2,
                description=title + " (needs --token; UNSUPPORTED without)",
            )
        )
    return out


def _describe(sc: Mapping[str, Any]) -> str:
    return "steps: " + "; ".join(json.dumps(s, default=str)[:160] for s in sc.get("steps", []))


async def _setup(
    ctx: RunContext, rec: Recorder, text: bool, caps: Any, opener: Any = open_session
) -> tuple[WsSession, Runner]:
    session = await opener(ctx, rec, text=text)
    r = Runner(ctx, session, rec, text)
    r.open_other = opener
    if caps is not False and not text:
        mine = {"versions": [1], **(caps or {})}
        if isinstance(mine.get("initial_window"), int):
            r.initial_window = mine["initial_window"]
        await session.send({"type": "CAPABILITIES", "stream_id": 0, "caps": mine})
        got = await r.wait_for({"type": "CAPABILITIES", "stream_id": 0}, ctx.timeout(5))
        if got is None:
            refusal = next(
                (f for f in r.s.frames if f.get("type") == "ERROR" and not f.get("stream_id")),
                None,
            )
            if refusal is not None and caps:
                # the case's own CAPABILITIES refused: what the case checks (its requirements)
                raise ScenarioFailed(
                    f"our CAPABILITIES {json.dumps(mine)} were refused: {refusal.get('error')}",
                    "the router's CAPABILITIES",
                )
            raise ScenarioFailed(
                "no CAPABILITIES in answer to ours", "the router's CAPABILITIES", ("ATP-SESS-002",)
            )
        r.router_caps = got.get("caps") if isinstance(got.get("caps"), Mapping) else {}
    return session, r


async def run(case: CaseSpec, ctx: RunContext) -> CaseResult:
    if case.id.startswith(router_quic.PREFIX):  # the QUIC binding: roles/router_quic.py
        return await router_quic.run(case, ctx)
    rec = Recorder(case)
    if ctx.target.startswith("quic://"):
        return rec.result(Verdict.SKIPPED, "a WebSocket case (the target is quic://)")
    kind = case.id.split(".")[1]
    if case.id == _LANES.id:
        return await _lanes(case, ctx, rec)
    if kind == "auth":
        return await _auth(case, ctx, rec)
    if case.id in _router_http.IDS:
        return await _router_http.run(case, ctx, rec)
    if case.id in _router_final.IDS:
        return await _router_final.run(case, ctx, rec)
    if kind == "vector":
        return await run_vector(case, ctx, rec, case.id)
    return await run_scenario(case, ctx, rec, scenarios()[case.id])


async def run_scenario(
    case: CaseSpec,
    ctx: RunContext,
    rec: Recorder,
    sc: Mapping[str, Any],
    opener: Any = open_session,
    check: Any = result_of,
) -> CaseResult:
    """One scenario on a session from ``opener``, judged by ``check`` (QUIC adds its own)."""
    enc = ctx.options.get("encoding", "both")
    if enc != "both" and enc != ("text" if sc["_text"] else "binary"):
        return rec.result(Verdict.SKIPPED, f"--encoding {enc}")
    needs = set(sc.get("needs", []))
    if "adapter" in needs and not ctx.adapter_listen:
        return rec.result(Verdict.UNSUPPORTED, "needs --adapter-listen (the scripted adapter)")
    if "token" in needs and not ctx.token:
        return rec.result(Verdict.UNSUPPORTED, "needs --token")
    if "policy" in needs and not ctx.options.get("denied_meta"):
        return rec.result(Verdict.UNSUPPORTED, "needs --denied-meta (a router with a policy)")
    if "policy_unreachable" in needs and not ctx.options.get("policy_unreachable"):
        return rec.result(
            Verdict.UNSUPPORTED, "needs --policy-unreachable (a router whose policy is down)"
        )
    session = None
    r: Runner | None = None
    try:
        session, r = await _setup(ctx, rec, sc["_text"], sc.get("caps"), opener)
        await run_steps(r, sc["steps"])
        return check(r, rec, None)  # type: ignore[no-any-return]
    except Unsupported as exc:
        return rec.result(Verdict.UNSUPPORTED, str(exc))
    except ScenarioFailed as exc:
        if r is None:
            return rec.failed(exc.message, exc.expected, exc.violated)
        return check(r, rec, exc)  # type: ignore[no-any-return]
    except HandshakeRefused as exc:
        return rec.failed(
            f"the handshake was refused: HTTP {exc.status}", "a session", ("ATP-WS-003",)
        )
    finally:
        if session is not None:
            await session.aclose()


async def run_vector(
    case: CaseSpec,
    ctx: RunContext,
    rec: Recorder,
    cid: str,
    opener: Any = open_session,
    check: Any = result_of,
) -> CaseResult:
    """The invalid vector of case id ``cid`` on a session from ``opener``."""
    vid = cid.removeprefix("router.vector.")
    v = next(x for x in _vectors() if x["id"] == vid)
    session, r = await _setup(ctx, rec, False, None, opener)
    try:
        r.next_sid = 101
        await session.send_raw(bytes.fromhex(v["hex"]))
        if v["scope"] == "connection":
            await run_steps(
                r, [{"expect_close": {"code": v["error"], "violated": v["requirements"]}}]
            )
        else:
            # the stream the vector's frame is on
            sid = int.from_bytes(bytes.fromhex(v["hex"])[4:8], "big")
            await run_steps(
                r,
                [
                    {
                        "expect_end": {
                            "stream_id": sid,
                            "code": v["error"],
                            "violated": v["requirements"],
                        }
                    },
                    {"still_serves": ["ATP-ERR-001"]},
                ],
            )
        return check(r, rec, None)  # type: ignore[no-any-return]
    except ScenarioFailed as exc:
        return check(r, rec, exc)  # type: ignore[no-any-return]
    finally:
        await session.aclose()


async def _lanes(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    import trio

    if not ctx.adapter_listen:
        return rec.result(Verdict.UNSUPPORTED, "needs --adapter-listen (the scripted adapter)")
    session, r = await _setup(ctx, rec, False, None)
    try:
        work = {"behaviour": "slow:60", "qos": "bronze", "ttl": 30}
        t0 = trio.current_time()
        await r.send(r.syn({"stream_id": 1, **work}))
        first = await r.end_of(1, ctx.timeout(10))
        if first is None or "FIN" not in first.get("flags", []):
            return rec.failed(f"a lone bronze stream did not complete: {first}", "FIN")
        alone = trio.current_time() - t0
        sent = trio.current_time()
        bronze = [3, 5, 7, 9, 11, 13, 15, 17]
        for sid in bronze:
            await r.send(r.syn({"stream_id": sid, **work}))
        # the gold stream comes once the bronze ones are surely queued (their estimates done)
        with trio.move_on_after(min(alone, 0.3)):
            while await r.s.next(1.0) is not None or not r.s.closed:
                pass
        gold, unspecified = 19, 21
        await r.send(r.syn({"stream_id": gold, **dict(work, qos="gold")}))
        # and a stream of qos 0, which runs in the silver lane (ATP-FRAME-017)
        await r.send(r.syn({"stream_id": unspecified, **dict(work, qos=0)}))
        ends: dict[int, float] = {}
        watched = [*bronze, gold, unspecified]
        with trio.move_on_after(ctx.timeout(alone * 16 + 5)):
            while len(ends) < len(watched):
                for f in r.s.frames:
                    if f.get("stream_id") in watched and _is_end(f):
                        ends.setdefault(f["stream_id"], trio.current_time() - sent)
                if len(ends) == len(watched):
                    break
                if await r.s.next(ctx.timeout(alone * 16 + 5)) is None and r.s.closed:
                    break
        rec.note("end times (s after sending)", {str(k): round(v, 3) for k, v in ends.items()})
        if len(ends) < len(watched):
            return rec.failed(
                f"only {len(ends)} of {len(watched)} streams ended", "every stream ends"
            )
        if max(ends[b] for b in bronze) < 2.5 * alone:
            return rec.result(
                Verdict.UNSUPPORTED,
                "the router ran all 7 streams at once (not at "
                "its concurrency limit): lanes cannot be observed",
            )
        later = sum(1 for b in bronze if ends[b] > ends[gold])
        if later < 3:
            return rec.failed(
                f"only {later} of 8 bronze streams queued before the gold one ended after it",
                "at least 3 end after the gold stream",
                ("ATP-ADAPT-001",),
            )
        if not any(ends[b] > ends[unspecified] for b in bronze):
            return rec.failed(
                "the stream of qos 0, sent after the 8 bronze ones, ended after all of them: "
                "it ran as bronze",
                "qos 0 runs in the silver lane: at least one queued bronze stream ends after it",
                ("ATP-FRAME-017",),
            )
        return rec.passed(
            f"{later} of 8 bronze streams ended after the gold one, "
            f"{sum(1 for b in bronze if ends[b] > ends[unspecified])} after the qos 0 one"
        )
    finally:
        await session.aclose()


def _is_end(f: Mapping[str, Any]) -> bool:
    return f.get("type") == "ERROR" or "FIN" in (f.get("flags") or [])


async def _limited(name: str, ctx: RunContext, rec: Recorder) -> CaseResult:
    limited = ctx.options.get("limited_token")
    if not limited:
        return rec.result(
            Verdict.UNSUPPORTED, "needs --limited-token (task_types [qa], max_qos bronze)"
        )
    session = await open_session(ctx, rec, text=False, token=str(limited))
    r = Runner(ctx, session, rec, False)
    try:
        if name == "task-type-refused":
            steps: list[dict[str, Any]] = [
                {"open": {"stream_id": 1, "meta": {"task_type": "conformance-other"}}},
                {"expect_end": {"stream_id": 1, "code": "ESEC", "violated": ["ATP-SEC-004"]}},
                {"still_serves": ["ATP-SEC-004"]},
            ]
        else:
            steps = [
                {"open": {"stream_id": 1, "qos": "gold"}},
                {"expect": {"stream_id": 1, "type": "DATA", "lane": "bronze"}},
                {"expect_end": {"stream_id": 1, "how": "fin"}},
            ]
        await run_steps(r, steps)
        return result_of(r, rec, None)
    except ScenarioFailed as exc:
        return result_of(r, rec, exc)
    except HandshakeRefused as exc:
        return rec.failed(f"refused the limited token: HTTP {exc.status}", "a session")
    finally:
        await session.aclose()


def _alg_none(token: str) -> str:
    parts = token.split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return f"{header}.{parts[1] if len(parts) > 1 else ''}."


async def _auth(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    if not ctx.token:
        return rec.result(Verdict.UNSUPPORTED, "needs --token (a router with auth on)")
    name = case.id.removeprefix("router.auth.")
    tok = ctx.token
    if name in ("task-type-refused", "lane-capped"):
        return await _limited(name, ctx, rec)
    refused = {
        "no-token": None,
        "bad-signature": tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB"),
        "alg-none": _alg_none(tok),
        "no-secret-in-refusal": tok + "x",
    }
    if name == "expired-token":
        expired = ctx.options.get("expired_token")
        if not expired:
            return rec.result(Verdict.UNSUPPORTED, "needs an expired token (option expired_token)")
        refused["expired-token"] = str(expired)
    if name in refused:
        bad = refused[name]
        try:
            session = await open_session(ctx, rec, text=False, token=bad)
        except HandshakeRefused as exc:
            rec.note(
                f"refused: HTTP {exc.status}", {"body": exc.body[:300].decode("utf-8", "replace")}
            )
            if (
                name == "no-secret-in-refusal"
                and bad
                and (bad.encode() in exc.body or any(bad.encode() in v for _, v in exc.headers))
            ):
                return rec.failed("the refusal echoes the token", "no token in the answer")
            return rec.passed(f"refused (HTTP {exc.status})")
        # accepted the handshake: it must at least not serve a stream
        r = Runner(ctx, session, rec, False)
        try:
            await session.send(r.syn({"stream_id": 1}))
            end = await r.end_of(1, ctx.timeout(5))
            if end is not None and "FIN" in end.get("flags", []):
                return rec.failed(
                    "served a stream without a valid token", "the handshake refused (401)"
                )
            if not session.closed and end is None:
                return rec.failed(
                    "accepted the handshake and kept the session open",
                    "the handshake refused (401)",
                )
            return rec.passed("refused after the handshake")
        finally:
            await session.aclose()
    kw: dict[str, Any] = {}
    if name == "query-token":
        kw = {"token": None, "query": f"access_token={tok}"}
    elif name == "header-first":
        kw = {"query": "access_token=not-a-valid-token"}
    elif name == "subprotocol-token":
        kw = {"token": None, "subprotocols": ["atp.v1", f"bearer.{tok}"]}
    try:
        session = await open_session(ctx, rec, text=False, **kw)
    except HandshakeRefused as exc:
        return rec.failed(f"refused a valid token: HTTP {exc.status}", "a session")
    try:
        r = Runner(ctx, session, rec, False)
        await run_steps(r, [{"still_serves": list(case.requirements)}])
        return result_of(r, rec, None)
    except ScenarioFailed as exc:
        return result_of(r, rec, exc)
    except TargetUnreachable:
        raise
    finally:
        await session.aclose()


async def prepare(ctx: RunContext) -> dict[str, Any]:
    """Called once per run before the cases: a ``ws://`` / ``wss://`` target where nothing
    accepts a TCP connection is unreachable (exit 3) at once, rather than after cases that
    open their own connections (the handshake timeout, the subprotocols) reported it as an
    ERROR and a FAIL of the router. (A ``quic://`` target is UDP: its first case finds out.)

    Raises:
        TargetUnreachable: no TCP connection to the target's host and port.
    """
    from urllib.parse import urlsplit

    import trio

    from atp_proto._cli._reasons import connect_reason

    u = urlsplit(ctx.target)
    if u.scheme not in ("ws", "wss") or not u.hostname:
        return {}  # quic://, or a URL the cases themselves refuse in words
    try:
        port = u.port or (443 if u.scheme == "wss" else 80)
    except ValueError:
        return {}
    try:
        with trio.fail_after(ctx.timeout(5)):
            stream = await trio.open_tcp_stream(u.hostname, port)
    except trio.TooSlowError:
        raise TargetUnreachable(
            f"cannot reach {ctx.target}: no TCP connection within {ctx.timeout(5):g} s"
        ) from None
    except OSError as exc:
        raise TargetUnreachable(f"cannot reach {ctx.target}: {connect_reason(exc)}") from None
    await trio.aclose_forcefully(stream)
    return {}
