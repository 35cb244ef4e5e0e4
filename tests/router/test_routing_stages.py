"""The routing stages one by one, data in and data out, without a session or sockets
(ATP-BUDGET, ATP-ADAPT-005, ATP-ADAPT-011, ATP-SEC-004, ATP-SEC-015); and StreamRun
wired to a recording StreamOutput with in-process adapters. The same behaviour end to
end, over real sockets, is in test_streams.py and the test_e2e_* files."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cbor2
import pytest
import trio

from atp_proto._control import AimdLimit
from atp_proto.adapters import CostEstimate, connect
from atp_proto.frames import (
    ATPError,
    BudgetExceeded,
    BudgetWindow,
    ErrorCode,
    QoS,
    StreamOpened,
    StreamReset,
)
from atp_proto.messages import (
    Final,
    Partial,
    decode_result,
    final_body,
    parse_task,
    partial_body,
    telemetry,
)
from atp_proto.router.admission import Admission, Shed
from atp_proto.router.auth import Principal
from atp_proto.router.budget import BudgetLedger
from atp_proto.router.config import RouterConfig
from atp_proto.router.metrics import RouterMetrics
from atp_proto.router.routing import (
    Candidate,
    Outcome,
    PolicyInput,
    PrincipalPolicy,
    RoutingContext,
    SessionInfo,
    StreamFailed,
    StreamRun,
    merge,
    preflight,
)
from atp_proto.router.routing.escalation import next_challenger


def _syn(
    prompt: Any = "hello",
    *,
    sid: int = 1,
    meta: Mapping[str, Any] | None = None,
    qos: QoS = QoS.SILVER,
    window: BudgetWindow | None = None,
) -> StreamOpened:
    payload = cbor2.dumps({"type": "agent.task", "content": {"prompt": prompt}})
    return StreamOpened(sid, 1, payload, qos, 0, window or BudgetWindow(), dict(meta or {}), {})


# ---------------------------------------------------------------------- errors


def test_error_tree() -> None:
    """Every routing error is an ATPError with its wire code (issue 10 item 4)."""
    shed = Shed(QoS.BRONZE, 250, "bronze lane is full")
    assert isinstance(shed, ATPError) and shed.code == ErrorCode.EPREEMPT
    assert shed.retry_after_ms == 250 and shed.message == shed.reason == "bronze lane is full"
    failed = StreamFailed(ErrorCode.EBUDGET, "no", 10)
    assert isinstance(failed, ATPError) and failed.retry_after_ms == 10


# ---------------------------------------------------------------------- budget


def test_ledger_window_is_clamped_by_the_cap() -> None:
    """ATP-BUDGET-001: the effective window is client ∩ tenant ∩ adapter."""
    led = BudgetLedger(BudgetWindow(max_tokens=100, max_parallel=4), BudgetWindow(max_tokens=50))
    assert led.window == BudgetWindow(max_parallel=4, max_tokens=50)
    led.restrict(BudgetWindow(max_parallel=2, max_usd_micros=7))
    assert led.window == BudgetWindow(max_parallel=2, max_tokens=50, max_usd_micros=7)
    led.apply(BudgetWindow(max_tokens=1000))  # a raise never passes the cap
    assert led.window.max_tokens == 50


def test_ledger_charge_records_then_refuses() -> None:
    """ATP-BUDGET-003: usage is recorded even when it passes the window (it was spent)."""
    led = BudgetLedger(BudgetWindow(max_tokens=10, max_usd_micros=100), BudgetWindow())
    led.charge(10, 100)
    assert led.fits(0, 0) and not led.fits(0.5, 0) and not led.fits(0, 1)
    with pytest.raises(BudgetExceeded) as err:
        led.charge(1, 0)
    assert err.value.code == ErrorCode.EBUDGET and "11 tokens" in err.value.message
    assert led.usage.tokens == 11 and led.usage.usd_micros == 100


def test_ledger_apply_raise_and_lower() -> None:
    """ATP-BUDGET-005/010: a raise makes room; a lowering below usage raises EBUDGET
    (and is applied all the same)."""
    led = BudgetLedger(BudgetWindow(max_usd_micros=10), BudgetWindow(), stream_id=3)
    led.charge(0, 8)
    assert not led.fits(0, 5)
    led.apply(BudgetWindow(max_usd_micros=20))
    assert led.fits(0, 5)
    with pytest.raises(BudgetExceeded) as err:
        led.apply(BudgetWindow(max_usd_micros=5))
    assert err.value.code == ErrorCode.EBUDGET and err.value.stream_id == 3
    assert led.window.max_usd_micros == 5


def test_ledger_parallel() -> None:
    """ATP-BUDGET-004: max_parallel adapter calls at most; EWINDOW beyond."""
    led = BudgetLedger(BudgetWindow(max_parallel=1), BudgetWindow())
    led.acquire_parallel()
    with pytest.raises(BudgetExceeded) as err:
        led.acquire_parallel()
    assert err.value.code == ErrorCode.EWINDOW
    led.release_parallel()
    led.release_parallel()  # never below zero
    assert led.usage.parallel == 0
    led.acquire_parallel()


# ---------------------------------------------------------------------- messages


def test_parse_task_errors_are_atp_eproto() -> None:
    """The schema raises ATPError(EPROTO), not a router type."""
    assert parse_task(_syn("hi")).prompt == "hi"
    for bad in (_syn(""), _syn(3), _syn("x", meta={"task_type": 1})):
        with pytest.raises(ATPError) as err:
            parse_task(bad)
        assert err.value.code == ErrorCode.EPROTO and not isinstance(err.value, StreamFailed)


def test_results_round_trip() -> None:
    """ATP-BUDGET-006, ATP-BUDGET-012: bodies decode to Partial / Final; a draft-era
    telemetry ``usd`` reads as usd_micros; counters saturate at 2**64 - 1."""
    p = decode_result(partial_body({"failover": {}}, 0.5), end_stream=False, ext={})
    assert isinstance(p, Partial) and p.content == {"failover": {}} and p.confidence == 0.5
    f = decode_result(final_body("42", "a", 0.9), end_stream=True, ext={"telemetry": {"usd": 3}})
    assert isinstance(f, Final) and f.content["answer"] == "42" and f.telemetry["usd_micros"] == 3
    tel = telemetry(2**70, 5, 1, ["a"])
    assert tel == {"tokens": 2**64 - 1, "usd_micros": 5, "latency_ms": 1, "adapters": ["a"]}


# ---------------------------------------------------------------------- policy


def _decide(principal: Principal, syn: StreamOpened, adapters: tuple[str, ...] = ("a", "b")):
    return PrincipalPolicy(min_confidence=0.3).decide(
        PolicyInput(principal, parse_task(syn), syn.qos, adapters)
    )


def test_policy_claims() -> None:
    """ATP-SEC-004, ATP-SEC-015: task types are allowed by the claim; the lane is capped."""
    p = Principal("s", "t", max_qos=QoS.BRONZE, task_types=frozenset({"qa"}))
    d = _decide(p, _syn(meta={"task_type": "code"}))
    assert not d.allow and d.rule == "task_types" and "'code'" in d.reason
    d = _decide(p, _syn(qos=QoS.GOLD, meta={"fanout": 2, "adapters": ["b", "b"]}))
    assert d.allow and d.lane is QoS.BRONZE and d.candidates == ("b",) and d.fanout == 2
    assert d.min_confidence == 0.3


def test_policy_refuses_bad_hints() -> None:
    p = Principal("s", "t")
    for meta, code in (
        ({"adapters": ["zz"]}, ErrorCode.EPROTO),
        ({"adapters": "a"}, ErrorCode.EPROTO),
        ({"fanout": 17}, ErrorCode.EPROTO),
        ({"min_confidence": True}, ErrorCode.EPROTO),
    ):
        with pytest.raises(ATPError) as err:
            _decide(p, _syn(meta=meta))
        assert err.value.code == code
    with pytest.raises(ATPError) as err:
        _decide(p, _syn(), adapters=())
    assert err.value.code == ErrorCode.EAGENTDOWN and err.value.retry_after_ms == 5000


# ---------------------------------------------------------------------- preflight, merge, escalation


def _cand(name: str, usd: float, conf: float) -> Candidate:
    c = Candidate(name, connect(name, "builtin:echo"))
    c.estimate = CostEstimate(1, 1, int(usd), 1.0, confidence=conf)
    c.guarded_tokens, c.guarded_usd = 2.0, usd
    return c


def test_plan_ranks_cheap_first_and_refuses_ebudget() -> None:
    """ATP-BUDGET-002: the plan ranks every estimated candidate; only fitting ones start."""
    cs = [
        _cand("dear", 50, 0.9),
        _cand("cheap", 1, 0.2),
        Candidate("dead", connect("d", "builtin:echo")),
    ]
    cs[2].error, cs[2].failure = "dead: EAGENTDOWN", None
    plan = preflight.plan(cs, BudgetLedger(BudgetWindow(max_usd_micros=10), BudgetWindow()), [])
    assert [c.name for c in plan.ranked] == ["cheap", "dear"]
    assert [c.name for c in plan.fitting] == ["cheap"]
    with pytest.raises(StreamFailed) as err:
        preflight.plan(cs, BudgetLedger(BudgetWindow(max_usd_micros=0), BudgetWindow()), [])
    assert err.value.code == ErrorCode.EBUDGET and "cheapest (cheap)" in err.value.message


def test_merge_consensus() -> None:
    a = Outcome("a", ["x"], 0.5, finished=True)
    b = Outcome("b", ["x"], 0.4, finished=True)
    c = Outcome("c", ["y"], 0.6, finished=True)
    assert merge.choose([a, b, c, Outcome("d")]).adapter == "a"  # agreement beats 0.6 alone
    with pytest.raises(ValueError):
        merge.choose([Outcome("d")])


def test_next_challenger_never_weaker_and_fits_live_window() -> None:
    """ATP-ADAPT-005: the most confident stronger candidate that fits the live budget;
    never one weaker than the champion."""
    champion = Outcome("c", ["x"], 0.5, finished=True)
    led = BudgetLedger(BudgetWindow(max_usd_micros=10), BudgetWindow())
    remaining = [_cand("weak", 1, 0.4), _cand("best", 100, 0.99), _cand("good", 5, 0.8)]
    pick = next_challenger(champion, remaining, led)
    assert pick is not None and pick.name == "good"  # "best" does not fit: dropped
    assert remaining == []  # "weak" can never challenge
    remaining = [_cand("best", 100, 0.99)]
    led.apply(BudgetWindow(max_usd_micros=1000))  # a raise reaches escalation
    assert next_challenger(champion, remaining, led).name == "best"


def test_aimd_limit() -> None:
    """ATP-ADAPT-003: +1/limit within target, ×0.9 on error or a spike, bounded."""
    lim = AimdLimit(10, 4, 11)
    lim.sample(0.1, error=False, target_s=1.0)
    assert lim.value == pytest.approx(10.1)
    lim.sample(2.5, error=False, target_s=1.0)
    assert lim.value == pytest.approx(9.09)
    lim.sample(1.5, error=False, target_s=1.0)  # between target and spike: unchanged
    lim.sample(None, error=False, target_s=1.0)
    assert lim.value == pytest.approx(9.09) and int(lim) == 9
    for _ in range(30):
        lim.sample(None, error=True, target_s=1.0)
    assert lim.value == 4
    with pytest.raises(ValueError):
        AimdLimit(1, 2, 3)


# ---------------------------------------------------------------------- StreamRun


class RecordingOutput:
    """A StreamOutput that records what routing sends (always writable)."""

    def __init__(self, stream_id: int = 1, lane: QoS = QoS.SILVER) -> None:
        self.stream_id = stream_id
        self.lane = lane
        self.on_window: Callable[[BudgetWindow], None] | None = None
        self.reset: StreamReset | None = None
        self.sent: list[tuple[str, Any, Mapping[str, Any] | None]] = []

    def set_lane(self, lane: QoS) -> None:
        self.lane = lane

    def can_write(self) -> bool:
        return True

    async def writable(self) -> None:
        return None

    def send_partial(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        self.sent.append(("partial", cbor2.loads(body), ext))

    def send_final(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        self.sent.append(("final", cbor2.loads(body), ext))

    def send_error(
        self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        self.sent.append(("error", str(code), message))


def _ctx(adapters: dict[str, str], **cfg: Any) -> RoutingContext:
    config = RouterConfig(**cfg)
    return RoutingContext(
        {n: connect(n, u) for n, u in adapters.items()},
        Admission(config.admission),
        RouterMetrics(),
        config,
        PrincipalPolicy(min_confidence=config.min_confidence, window=config.tenant_window),
    )


async def test_stream_run_wires_the_stages() -> None:
    """The sequence diagram with a recording output: PARTIALs then FINAL with telemetry;
    the lowered lane is said on the first frame (ATP-SEC-015)."""
    ctx = _ctx({"echo": "builtin:echo?chunks=2"})
    out = RecordingOutput(lane=QoS.GOLD)
    principal = Principal("s", "tenant-a", max_qos=QoS.BRONZE)
    await StreamRun(ctx, SessionInfo("s1", principal), _syn("two words", qos=QoS.GOLD), out).run()
    kinds = [k for k, _, _ in out.sent]
    assert kinds == ["partial", "partial", "final"]
    assert out.lane is QoS.BRONZE and out.sent[0][2] == {"lane": "bronze"}
    assert out.sent[1][2] is None
    final, ext = out.sent[-1][1], out.sent[-1][2]
    assert final["content"]["answer"] == "two words" and ext["telemetry"]["adapters"] == ["echo"]
    assert ctx.metrics.tokens.get("tenant-a") > 0 and out.on_window is None


async def test_stream_run_denied_is_esec_naming_the_rule() -> None:
    """ATP-SEC-004: a policy denial ends the stream ESEC, naming the rule."""
    ctx = _ctx({"echo": "builtin:echo"})
    out = RecordingOutput()
    principal = Principal("s", "t", task_types=frozenset({"qa"}))
    await StreamRun(ctx, SessionInfo("s1", principal), _syn(meta={"task_type": "x"}), out).run()
    assert out.sent == [
        ("error", "ESEC", "task type 'x' is not allowed for this token (rule: task_types)")
    ]


async def test_stream_run_window_lowered_stops_at_once(autojump_clock: Any) -> None:
    """ATP-BUDGET-005: on_window below usage cancels the adapters and ends EBUDGET."""
    ctx = _ctx({"slow": "builtin:persona?latency_ms=10000&chunks=3"})
    out = RecordingOutput()
    run = StreamRun(ctx, SessionInfo("s1", Principal("s", "t")), _syn(), out)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run)
        while not out.sent:
            await trio.sleep(1)
        start = trio.current_time()
        assert out.on_window is not None
        out.on_window(BudgetWindow(max_tokens=1))
    assert trio.current_time() - start < 1
    assert out.sent[-1][:2] == ("error", "EBUDGET")
    assert ctx.admission.in_flight == 0


def test_task_body_is_what_parse_task_reads() -> None:
    """[ATP-JSON-001] The client's SYN payload (messages.task_body) and the router's reader
    (messages.parse_task) are one schema: prompt and extra content round-trip."""
    from atp_proto.frames import BudgetWindow, QoS, StreamOpened
    from atp_proto.messages import parse_task, task_body

    ev = StreamOpened(1, 1, task_body("hi", {"lang": "en"}), QoS.GOLD, 0, BudgetWindow(), {}, {})
    task = parse_task(ev)
    assert task.prompt == "hi" and task.content == {"prompt": "hi", "lang": "en"}


async def test_stream_run_every_adapter_failing_backs_the_admission_limit_off() -> None:
    """ATP-ERR-005: when every adapter fails (no answer), the global AIMD limit backs off;
    a stream that succeeds does not lower it (the 'error' adaptation was dead code)."""
    ctx = _ctx({"bad": "builtin:echo?fail=error"})
    before = ctx.admission.limit
    out = RecordingOutput()
    await StreamRun(ctx, SessionInfo("s1", Principal("s", "t")), _syn(), out).run()
    assert out.sent[-1][0] == "error" and out.sent[-1][1] == "EAGENTDOWN"
    assert ctx.admission.limit < before and ctx.admission.in_flight == 0
    ok = _ctx({"echo": "builtin:echo"})
    before = ok.admission.limit
    await StreamRun(ok, SessionInfo("s1", Principal("s", "t")), _syn(), RecordingOutput()).run()
    assert ok.admission.limit >= before


async def test_admission_gauges_match_the_limit_and_each_lane_depth() -> None:
    """``Admission.gauges()`` (read by the router on every admission and release) is
    ``(int(limit), queue_depth(GOLD), queue_depth(SILVER), queue_depth(BRONZE))`` while
    streams of every lane queue, get admitted and leave."""
    seen: list[tuple[int, int, int, int]] = []

    def changed(adm: Admission) -> None:
        want = (
            int(adm.limit),
            adm.queue_depth(QoS.GOLD),
            adm.queue_depth(QoS.SILVER),
            adm.queue_depth(QoS.BRONZE),
        )
        assert adm.gauges() == want
        seen.append(want)

    adm = Admission(on_change=changed)
    adm.limit = 1.0
    async with trio.open_nursery() as nursery:
        await adm.acquire(QoS.GOLD)  # the one slot
        for lane in (QoS.BRONZE, QoS.SILVER, QoS.GOLD, QoS.SILVER):
            nursery.start_soon(adm.acquire, lane)
            await trio.testing.wait_all_tasks_blocked()
        assert adm.gauges() == (1, 1, 2, 1)
        for _ in range(5):
            adm.release(latency_s=0.01)
            await trio.testing.wait_all_tasks_blocked()
    assert adm.gauges()[1:] == (0, 0, 0)
    assert len(set(seen)) >= 5  # the queue moved through several states
