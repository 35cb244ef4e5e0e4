"""Router cases of a tenant quota (``router.quota.…``, ATP-BUDGET-013/014/016).

A tenant quota is the operator's configuration, which the suite cannot set on a vendor's
router; so the vendor passes what it configured, as with ``--session-limit``:
``--quota-tokens N`` (the tokens per period of the run's tenant: the tenant of ``--token``,
or the default tenant without auth; the reference: ``[quota] tokens = N``) and
``--quota-concurrent N`` (its streams open at once; ``[quota] concurrent = N``). Without
the flag a case is UNSUPPORTED, naming it.

Usage is read from the scripted adapter, which reports ``T = N // 20`` tokens per chunk
(``{tok=T}``, cumulative, ATP-BUDGET-003): each stream has its own adapter token, so the
chunks the adapter sent for it say what it spent (``4 + T * chunks``) — streams ended with
EBUDGET included, which send no FINAL. A chunk leaves every 30 ms, so at most one more is
in flight when the router cancels the call.

* ``router.quota.spent`` (ATP-BUDGET-013): streams of 0.9 N one after another: the first
  ends with FIN, the second is capped at what is left (EBUDGET mid-stream, or refused),
  so all of them spend at most N + 3 chunks; then a new stream is refused with EBUDGET, a
  message naming the quota, and no adapter call.
* ``router.quota.shared`` (ATP-BUDGET-016): four streams of 0.9 N opened at once share
  the quota: together at most N + 3 chunks per stream (a router that gives each stream
  the whole remainder spends 3.6 N), and one ends EBUDGET naming the quota.
* ``router.quota.concurrent`` (ATP-BUDGET-014): N + 2 slow streams at once: N run, the
  two others are refused with EWINDOW and ``retry_after_ms`` before any adapter call;
  then N at once again all run (a refused stream did not count).

Both token cases need a fresh quota: after one spent it, the other is UNSUPPORTED (run
it alone, ``--run router.quota.spent``, on a fresh period or router).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from conformance._record import Recorder
from conformance.drivers.ws import open_session
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext
from conformance.scenario import Runner, ScenarioFailed, result_of

__all__ = ["CASES", "MAX_CONCURRENT", "MAX_TOKENS", "MIN_TOKENS", "run"]

#: the smallest --quota-tokens (a chunk of N // 20 tokens must outweigh the fixed 4)
MIN_TOKENS = 100
#: the largest --quota-tokens (the SYN window's 8 N tokens stays far below 2**64)
MAX_TOKENS = 1 << 40
#: the largest --quota-concurrent (streams the case opens at once: N + 2)
MAX_CONCURRENT = 50
_CHUNKS = 18  #: chunks of a stream: 18 * N // 20 = 0.9 N
_SHARED = 4  #: streams opened at once by router.quota.shared
_SLACK_CHUNKS = 3  #: per stream: the chunk that passed, one in flight, one write's lag
_PAUSE_S = 0.3  #: before the stream that must be refused (the charge is stored)

CASES = [
    CaseSpec(
        "router.quota.concurrent",
        Role.ROUTER,
        "streams over the tenant's concurrent limit are refused with EWINDOW and "
        "retry_after_ms, and refused streams do not count",
        ("ATP-BUDGET-014",),
        level=Level.L2,
        description="needs --adapter-listen and --quota-concurrent N (the tenant's "
        f"configured streams at once, at most {MAX_CONCURRENT}): N + 2 streams of 0.9 s "
        "at once; exactly N run (FIN), the others end EWINDOW with retry_after_ms and "
        "never reach the adapter; then N at once again all end with FIN",
    ),
    CaseSpec(
        "router.quota.shared",
        Role.ROUTER,
        "streams of one tenant open at once share what is left of its token quota",
        ("ATP-BUDGET-016",),
        level=Level.L2,
        description="needs --adapter-listen and --quota-tokens N (the tenant's configured "
        f"tokens per period, at least {MIN_TOKENS}, a fresh quota): {_SHARED} streams at "
        "once (fewer if --quota-concurrent is lower), each reporting 0.9 N in chunks of "
        "N/20: together they spend at most "
        f"N + {_SLACK_CHUNKS} chunks per stream, and one ends EBUDGET with a message "
        "naming the quota",
    ),
    CaseSpec(
        "router.quota.spent",
        Role.ROUTER,
        "a tenant's stream is capped at what is left of its token quota, and once the "
        "quota is spent a new stream is refused with EBUDGET",
        ("ATP-BUDGET-013",),
        level=Level.L2,
        description="needs --adapter-listen and --quota-tokens N (a fresh quota): streams "
        "of 0.9 N in chunks of N/20 one after another until one ends EBUDGET; together "
        f"at most N + {_SLACK_CHUNKS} chunks; then a new stream must be refused with "
        "EBUDGET, a message naming the quota, and no adapter call",
    ),
]
IDS = frozenset(c.id for c in CASES)


class _Streams:
    """Streams of one session, each with its own scripted-adapter token."""

    def __init__(self, r: Runner, adapter: Any, per_chunk: int, *, max_tokens: int) -> None:
        self.r = r
        self.adapter = adapter
        self.per_chunk = per_chunk
        self.max_tokens = max_tokens
        self.sid = 1

    async def open(self, work: str) -> int:
        sid, self.sid = self.sid, self.sid + 2
        window = {"max_parallel": 1, "max_tokens": self.max_tokens, "max_usd_micros": 1 << 40}
        m = self.r.syn({"stream_id": sid, "behaviour": work, "window": window, "ttl": 30})
        m["payload"]["content"]["prompt"] = f"conformance:{self.r.token}-{sid}:{work}"
        await self.r.send(m)
        return sid

    async def end(self, sid: int, seconds: float) -> dict[str, Any]:
        end = await self.r.end_of(sid, self.r.ctx.timeout(seconds))
        if end is None:
            raise ScenarioFailed(f"stream {sid} did not end within {seconds:g} s", "an end")
        return end

    def started(self, sid: int) -> bool:
        return any(e["event"] == "stream_start" for e in self.adapter.events(self._tok(sid)))

    def spent(self, sid: int) -> int:
        """Tokens the adapter reported for ``sid`` (cumulative usage of its last chunk)."""
        sent = sum(1 for e in self.adapter.events(self._tok(sid)) if e["event"] == "chunk_sent")
        return 4 + self.per_chunk * sent if sent else 0

    def _tok(self, sid: int) -> str:
        return f"{self.r.token}-{sid}"


def _error(end: Mapping[str, Any]) -> Mapping[str, Any] | None:
    err = end.get("error")
    return err if end.get("type") == "ERROR" and isinstance(err, Mapping) else None


def _fin(end: Mapping[str, Any]) -> bool:
    return end.get("type") == "DATA" and "FIN" in (end.get("flags") or [])


def _names_quota(err: Mapping[str, Any]) -> bool:
    return "quota" in str(err.get("message") or "").lower()


async def _spent(ctx: RunContext, rec: Recorder, r: Runner, n: int) -> CaseResult:
    t = n // 20
    s = _Streams(r, ctx.options["adapter"], t, max_tokens=8 * n)
    work = f"{{tok={t},n={_CHUNKS}}}slow:30"
    sids: list[int] = []
    total = 0
    for _ in range(5):  # 0.9 N each: the second must end it
        sid = await s.open(work)
        sids.append(sid)
        end = await s.end(sid, 10)
        err = _error(end)
        total = sum(s.spent(x) for x in sids)
        if err is None and not _fin(end):
            raise ScenarioFailed(f"stream {sid} ended with {end}", "FIN or EBUDGET")
        if err is None:
            continue
        if err.get("code") != "EBUDGET":
            raise ScenarioFailed(
                f"stream {sid} ended {err.get('code')}: {err.get('message')!r}",
                "FIN within the quota, EBUDGET past it",
                ("ATP-BUDGET-013",),
            )
        if len(sids) == 1 and not s.started(sid):
            return rec.result(
                Verdict.UNSUPPORTED,
                "the tenant's quota was already spent when the case began (an earlier case "
                "spent it): run router.quota.spent alone on a fresh quota",
            )
        break
    else:
        raise ScenarioFailed(
            f"{len(sids)} streams of 0.9 x --quota-tokens {n} all ended with FIN "
            f"({total} tokens reported)",
            "EBUDGET once the tenant's quota is spent",
            ("ATP-BUDGET-013",),
        )
    bound = n + _SLACK_CHUNKS * t + 4
    rec.note("tokens reported per stream", {x: s.spent(x) for x in sids})
    if total > bound:
        raise ScenarioFailed(
            f"streams one after another spent {total} tokens of a quota of {n} (a stream "
            "not capped at what was left of it)",
            f"at most {bound} (the quota and one stream's in-flight chunks)",
            ("ATP-BUDGET-013",),
        )
    await trio.sleep(_PAUSE_S)
    sid = await s.open(work)
    end = await s.end(sid, 10)
    err = _error(end)
    rec.note("the stream after the quota was spent", end)
    if err is None or err.get("code") != "EBUDGET" or not _names_quota(err):
        raise ScenarioFailed(
            f"a new stream after the quota was spent ended {end}",
            "ERROR EBUDGET with a message naming the tenant's quota",
            ("ATP-BUDGET-013",),
        )
    if s.started(sid):
        raise ScenarioFailed(
            "the stream refused for the spent quota still reached the adapter",
            "refused before any adapter call",
            ("ATP-BUDGET-013",),
        )
    checked = result_of(r, rec, None)
    if checked.verdict is not Verdict.PASS:
        return checked
    return rec.result(Verdict.PASS, f"{total} tokens of a quota of {n}, then EBUDGET")


async def _shared(ctx: RunContext, rec: Recorder, r: Runner, n: int) -> CaseResult:
    t = n // 20
    s = _Streams(r, ctx.options["adapter"], t, max_tokens=8 * n)
    work = f"{{tok={t},n={_CHUNKS}}}slow:30"
    # never past the tenant's streams at once, where the vendor gave them
    k = min(_SHARED, int(ctx.options.get("quota_concurrent") or _SHARED))
    if k < 2:
        return rec.result(Verdict.UNSUPPORTED, "--quota-concurrent 1: no two streams at once")
    sids = [await s.open(work) for _ in range(k)]
    ends = {sid: await s.end(sid, 15) for sid in sids}
    errors = {sid: e for sid, end in ends.items() if (e := _error(end)) is not None}
    for sid, end in ends.items():
        if sid not in errors and not _fin(end):
            raise ScenarioFailed(f"stream {sid} ended with {end}", "FIN or EBUDGET")
    for sid, err in errors.items():
        if err.get("code") != "EBUDGET":
            raise ScenarioFailed(
                f"stream {sid} ended {err.get('code')}: {err.get('message')!r}",
                "FIN or EBUDGET",
                ("ATP-BUDGET-016",),
            )
    if not any(s.started(sid) for sid in sids):
        return rec.result(
            Verdict.UNSUPPORTED,
            "the tenant's quota was already spent when the case began (an earlier case "
            "spent it): run router.quota.shared alone on a fresh quota",
        )
    spent = {sid: s.spent(sid) for sid in sids}
    total = sum(spent.values())
    rec.note("tokens reported per stream", spent)
    bound = n + k * (_SLACK_CHUNKS * t + 4)
    if total > bound:
        raise ScenarioFailed(
            f"{k} streams open at once spent {total} tokens of a quota of {n} (each "
            "spent the remainder as if alone)",
            f"at most {bound} (the quota and each stream's in-flight chunks)",
            ("ATP-BUDGET-016",),
        )
    if not any(_names_quota(err) for err in errors.values()):
        raise ScenarioFailed(
            f"no stream ended EBUDGET naming the quota (ends: {list(ends.values())})",
            "EBUDGET with a message saying that the tenant's quota is spent",
            ("ATP-BUDGET-016",),
        )
    checked = result_of(r, rec, None)
    if checked.verdict is not Verdict.PASS:
        return checked
    return rec.result(Verdict.PASS, f"{k} streams at once spent {total} tokens of a quota of {n}")


async def _concurrent(ctx: RunContext, rec: Recorder, r: Runner, c: int) -> CaseResult:
    s = _Streams(r, ctx.options["adapter"], 0, max_tokens=50_000)
    work = "{tok=0,n=3}slow:300"
    sids = [await s.open(work) for _ in range(c + 2)]
    ends = {sid: await s.end(sid, 15) for sid in sids}
    refused = {sid: e for sid, end in ends.items() if (e := _error(end)) is not None}
    rec.note("refused", {sid: dict(e) for sid, e in refused.items()})
    for sid, err in refused.items():
        if err.get("code") == "EBUDGET":
            return rec.result(
                Verdict.UNSUPPORTED, "the tenant's token or money quota is spent (EBUDGET)"
            )
        if err.get("code") != "EWINDOW" or not isinstance(err.get("retry_after_ms"), int):
            raise ScenarioFailed(
                f"stream {sid} over the concurrent limit ended {dict(err)}",
                "EWINDOW with retry_after_ms",
                ("ATP-BUDGET-014",),
            )
        if s.started(sid):
            raise ScenarioFailed(
                f"stream {sid}, refused with EWINDOW, still reached the adapter",
                "refused before any adapter call",
                ("ATP-BUDGET-014",),
            )
    ran = [sid for sid in sids if _fin(ends[sid])]
    if len(refused) != 2 or len(ran) != c:
        raise ScenarioFailed(
            f"{c + 2} streams at once with --quota-concurrent {c}: {len(ran)} ran, "
            f"{len(refused)} refused",
            f"{c} ran, 2 refused with EWINDOW",
            ("ATP-BUDGET-014",),
        )
    again = [await s.open(work) for _ in range(c)]
    for sid in again:
        end = await s.end(sid, 15)
        if not _fin(end):
            raise ScenarioFailed(
                f"after the first streams ended, stream {sid} of {c} at once ended {end} "
                "(refused streams counted against the limit?)",
                f"all {c} run",
                ("ATP-BUDGET-014",),
            )
    checked = result_of(r, rec, None)
    if checked.verdict is not Verdict.PASS:
        return checked
    return rec.result(Verdict.PASS, f"{c} of {c + 2} ran, 2 refused EWINDOW; then {c} again")


async def run(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    if ctx.options.get("adapter") is None:
        return rec.result(Verdict.UNSUPPORTED, "needs --adapter-listen (the scripted adapter)")
    if case.id == "router.quota.concurrent":
        flag, raw, low = "--quota-concurrent", ctx.options.get("quota_concurrent"), 1
        high = MAX_CONCURRENT
        what = "the tenant's configured streams at once"
    else:
        flag, raw, low = "--quota-tokens", ctx.options.get("quota_tokens"), MIN_TOKENS
        high = MAX_TOKENS
        what = "the tenant's configured tokens per period"
    if not raw:
        return rec.result(Verdict.UNSUPPORTED, f"needs {flag} N ({what})")
    n = int(raw)
    if not low <= n <= high:
        return rec.result(
            Verdict.UNSUPPORTED, f"{flag} {n}: this case needs at least {low}, at most {high}"
        )
    session = await open_session(ctx, rec, text=False)
    r = Runner(ctx, session, rec, False)
    try:
        if case.id == "router.quota.concurrent":
            return await _concurrent(ctx, rec, r, n)
        if case.id == "router.quota.shared":
            return await _shared(ctx, rec, r, n)
        return await _spent(ctx, rec, r, n)
    except ScenarioFailed as exc:
        return result_of(r, rec, exc)
    finally:
        await session.aclose()
