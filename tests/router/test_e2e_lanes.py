"""QoS lanes at admission (ATP-QOS, ATP-ERR EPREEMPT): weighted fair queuing across gold /
silver / bronze when the router is saturated, and bronze shed first.

End to end with a global limit of 1 and a slow adapter (one stream runs at a time, the
rest queue), plus unit tests of :class:`atp_proto.router.admission.Admission` itself.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from atp_proto.client import StreamError, connect
from atp_proto.frames import QoS
from atp_proto.router.admission import Admission, AdmissionConfig, Shed

from .conftest import ws_url

ADAPTERS = {
    "blocker": "builtin:persona?latency_ms=150&chunks=4",
    "slow": "builtin:persona?latency_ms=40&chunks=3",
}


def _one_at_a_time(**fields: float) -> AdmissionConfig:
    return AdmissionConfig(initial_limit=1, min_limit=1, max_limit=1, **fields)  # type: ignore[arg-type]


async def _wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


class Runner:
    """Opens named streams on one client and records how each ended, in order."""

    def __init__(self, client, nursery: trio.Nursery) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.nursery = nursery
        self.done: list[str] = []
        self.errors: dict[str, StreamError] = {}

    def open(self, name: str, qos: str, adapter: str = "slow") -> None:
        async def run() -> None:
            try:
                final = await self.client.ask(name, qos=qos, meta={"adapters": [adapter]})
                assert final.content["ok"]
                self.done.append(name)
            except StreamError as exc:
                self.errors[name] = exc

        self.nursery.start_soon(run)


async def test_gold_admitted_before_bronze_queued_earlier(start_router) -> None:
    """[ATP-ADAPT-001] ATP-QOS: with the router saturated, gold streams that arrive after bronze ones are
    admitted first (virtual finish time 1/6 < 1), then the bronze ones in FIFO order;
    nothing is shed while the queue has room."""
    router = await start_router(adapters=ADAPTERS, admission=_one_at_a_time(max_queue=16))
    adm = router.admission
    async with connect(ws_url(router)) as client, trio.open_nursery() as nursery:
        r = Runner(client, nursery)
        r.open("blocker", "gold", adapter="blocker")
        await _wait_for(lambda: adm.in_flight == 1)
        for i in range(3):
            r.open(f"bronze{i}", "bronze")
            await _wait_for(lambda i=i: adm.queue_depth(QoS.BRONZE) == i + 1)
        for i in range(3):
            r.open(f"gold{i}", "gold")
            await _wait_for(lambda i=i: adm.queue_depth(QoS.GOLD) == i + 1)
        assert router.metrics.lane_queue.get("bronze") == 3
        assert router.metrics.lane_queue.get("gold") == 3
    assert r.errors == {}
    assert r.done == ["blocker", "gold0", "gold1", "gold2", "bronze0", "bronze1", "bronze2"]
    assert adm.in_flight == 0 and adm.waiting == 0
    assert router.metrics.lane_queue.get("bronze") == 0


async def test_weighted_share_under_backlog(start_router) -> None:
    """[ATP-ADAPT-001] ATP-QOS: with every lane backlogged, admissions follow the 6:3:1 weights — the
    first ten after the blocker hold 6 gold, 3 silver and 1 bronze (no lane starves)."""
    router = await start_router(
        adapters={"blocker": ADAPTERS["blocker"], "slow": "builtin:echo?latency_ms=5"},
        admission=_one_at_a_time(max_queue=64, bronze_queue_share=0.5),
    )
    adm = router.admission
    async with connect(ws_url(router)) as client, trio.open_nursery() as nursery:
        r = Runner(client, nursery)
        r.open("blocker", "gold", adapter="blocker")
        await _wait_for(lambda: adm.in_flight == 1)
        for lane in ("bronze", "silver", "gold"):
            for i in range(10):
                r.open(f"{lane}{i:02d}", lane)
        await _wait_for(lambda: adm.waiting == 30)
    assert r.errors == {}
    first = Counter(name[:-2] for name in r.done[1:11])
    assert first == {"gold": 6, "silver": 3, "bronze": 1}
    assert len(r.done) == 31


async def test_bronze_shed_when_its_share_is_full(start_router) -> None:
    """[ATP-ADAPT-002, ATP-ERR-004] ATP-QOS / ATP-ERR: bronze may hold only ``bronze_queue_share`` of the queue; one
    more bronze stream is refused at once with EPREEMPT and a retry_after_ms hint, while
    gold still queues and is served."""
    router = await start_router(
        adapters=ADAPTERS, admission=_one_at_a_time(max_queue=4, bronze_queue_share=0.5)
    )
    adm = router.admission
    async with connect(ws_url(router)) as client, trio.open_nursery() as nursery:
        r = Runner(client, nursery)
        r.open("blocker", "gold", adapter="blocker")
        await _wait_for(lambda: adm.in_flight == 1)
        for i in range(2):
            r.open(f"bronze{i}", "bronze")
            await _wait_for(lambda i=i: adm.queue_depth(QoS.BRONZE) == i + 1)
        r.open("bronze-extra", "bronze")
        await _wait_for(lambda: "bronze-extra" in r.errors)
        r.open("gold0", "gold")
        await _wait_for(lambda: adm.queue_depth(QoS.GOLD) == 1)
    err = r.errors.pop("bronze-extra")
    assert err.code == "EPREEMPT"
    assert err.retry_after_ms is not None and err.retry_after_ms > 0
    assert "bronze" in err.message
    assert r.errors == {}
    assert r.done == ["blocker", "gold0", "bronze0", "bronze1"]
    assert router.metrics.shed.get("bronze") == 1
    assert router.metrics.errors.get("EPREEMPT") == 1
    assert router.metrics.streams_total.get("bronze", "EPREEMPT") == 1


async def test_queue_overflow_sheds_newest_bronze_never_gold(start_router) -> None:
    """[ATP-ADAPT-002, ATP-ERR-004] ATP-QOS / ATP-ERR: when the whole queue is full, a gold arrival evicts the newest
    waiting bronze (EPREEMPT + retry_after_ms) instead of being refused; gold is refused
    only once no bronze is left to evict, and a bronze arrival on a full queue is
    refused itself."""
    router = await start_router(
        adapters=ADAPTERS, admission=_one_at_a_time(max_queue=4, bronze_queue_share=0.5)
    )
    adm = router.admission
    async with connect(ws_url(router)) as client, trio.open_nursery() as nursery:
        r = Runner(client, nursery)
        r.open("blocker", "gold", adapter="blocker")
        await _wait_for(lambda: adm.in_flight == 1)
        for i in range(2):
            r.open(f"bronze{i}", "bronze")
            await _wait_for(lambda i=i: adm.queue_depth(QoS.BRONZE) == i + 1)
        for i in range(2):
            r.open(f"gold{i}", "gold")
            await _wait_for(lambda i=i: adm.queue_depth(QoS.GOLD) == i + 1)
        # full (4 waiting): a bronze arrival is refused itself
        r.open("bronze-late", "bronze")
        await _wait_for(lambda: "bronze-late" in r.errors)
        # a gold arrival evicts the newest bronze, then the next one
        r.open("gold2", "gold")
        await _wait_for(lambda: "bronze1" in r.errors)
        assert adm.queue_depth(QoS.GOLD) == 3
        r.open("gold3", "gold")
        await _wait_for(lambda: "bronze0" in r.errors)
        # no bronze left: now gold itself is refused
        r.open("gold4", "gold")
        await _wait_for(lambda: "gold4" in r.errors)
        assert adm.queue_depth(QoS.GOLD) == 4
    for name in ("bronze-late", "bronze1", "bronze0", "gold4"):
        err = r.errors.pop(name)
        assert err.code == "EPREEMPT", (name, err)
        assert err.retry_after_ms is not None and err.retry_after_ms > 0
    assert r.errors == {}
    assert r.done == ["blocker", "gold0", "gold1", "gold2", "gold3"]
    assert router.metrics.shed.get("bronze") == 3  # the refused arrival and two evictions
    assert router.metrics.streams_total.get("bronze", "EPREEMPT") == 3
    assert router.metrics.streams_total.get("gold", "EPREEMPT") == 1


# ---------------------------------------------------------------------- unit: Admission


async def _admission_order(adm: Admission, arrivals: list[QoS]) -> list[int]:
    """Queue ``arrivals`` behind one held slot; release slots one by one; return the
    arrival indexes in admission order."""
    await adm.acquire(QoS.GOLD)  # the held slot
    order: list[int] = []

    async def waiter(i: int, lane: QoS) -> None:
        await adm.acquire(lane)
        order.append(i)

    async with trio.open_nursery() as nursery:
        for i, lane in enumerate(arrivals):
            nursery.start_soon(waiter, i, lane)
            await trio.testing.wait_all_tasks_blocked()
        assert adm.waiting == len(arrivals)
        for _ in range(len(arrivals) + 1):
            adm.release()
            await trio.testing.wait_all_tasks_blocked()
    return order


async def test_admission_unit_weighted_fair_order(autojump_clock) -> None:
    """[ATP-ADAPT-001] ATP-QOS (unit): virtual-finish-time order across lanes, FIFO within a lane;
    ties between lanes go to the higher lane."""
    adm = Admission(_one_at_a_time(max_queue=64, bronze_queue_share=1.0))
    B, S, G = QoS.BRONZE, QoS.SILVER, QoS.GOLD
    arrivals = [B, B, S, S, G, G, G]
    order = await _admission_order(adm, arrivals)
    # finish: B 1, 2; S 1/3, 2/3; G 1/6, 2/6, 3/6 -> G0 G1 S0 G2 S1 B0 B1
    assert [arrivals[i].label + str(i) for i in order] == [
        "gold4",
        "gold5",
        "silver2",
        "gold6",
        "silver3",
        "bronze0",
        "bronze1",
    ]


async def test_admission_unit_late_bronze_not_starved(autojump_clock) -> None:
    """[ATP-ADAPT-001] ATP-QOS (unit): a bronze stream that arrives while gold keeps arriving is admitted
    after at most ~6 gold ones (its virtual start is the current virtual time, not 0)."""
    adm = Admission(_one_at_a_time(max_queue=64))
    await adm.acquire(QoS.GOLD)
    order: list[str] = []

    async def waiter(name: str, lane: QoS) -> None:
        await adm.acquire(lane)
        order.append(name)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(waiter, f"g{i}", QoS.GOLD)
        await trio.testing.wait_all_tasks_blocked()
        adm.release()  # admits g0; vtime moves on
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "bronze", QoS.BRONZE)
        await trio.testing.wait_all_tasks_blocked()
        n = 4
        while "bronze" not in order:
            nursery.start_soon(waiter, f"g{n}", QoS.GOLD)  # a steady gold arrival
            n += 1
            await trio.testing.wait_all_tasks_blocked()
            adm.release()
            await trio.testing.wait_all_tasks_blocked()
            assert n < 20, order
        nursery.cancel_scope.cancel()
    assert order.index("bronze") <= 7


async def test_admission_unit_shedding_and_cancellation(autojump_clock) -> None:
    """[ATP-ADAPT-002] ATP-QOS (unit): bronze share refusal, eviction of the newest bronze by a higher
    lane on a full queue, refusal of gold only when no bronze is left; a cancelled
    waiter leaves the queue, an admitted-then-cancelled one gives its slot back."""
    adm = Admission(_one_at_a_time(max_queue=3, bronze_queue_share=0.6))
    await adm.acquire(QoS.GOLD)
    results: dict[str, object] = {}

    async def waiter(name: str, lane: QoS, scope: trio.CancelScope | None = None) -> None:
        try:
            with scope or trio.CancelScope():
                await adm.acquire(lane)
                results[name] = "admitted"
                return
            results[name] = "cancelled"
        except Shed as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        cancel_me = trio.CancelScope()
        for name in ("b0", "b1"):  # one at a time: trio may run new tasks in any order
            nursery.start_soon(waiter, name, QoS.BRONZE)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "b2", QoS.BRONZE)  # 2 >= 3 * 0.6: share full
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(results.pop("b2"), Shed)
        nursery.start_soon(waiter, "s0", QoS.SILVER, cancel_me)
        await trio.testing.wait_all_tasks_blocked()
        assert adm.waiting == 3
        nursery.start_soon(waiter, "g0", QoS.GOLD)  # full: evicts b1 (newest bronze)
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(results.pop("b1"), Shed)
        cancel_me.cancel()  # s0 leaves the queue
        await trio.testing.wait_all_tasks_blocked()
        assert results.pop("s0") == "cancelled"
        assert adm.waiting == 2 and adm.queue_depth(QoS.SILVER) == 0
        nursery.start_soon(waiter, "g1", QoS.GOLD)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "g2", QoS.GOLD)  # full again: evicts b0
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(results.pop("b0"), Shed)
        nursery.start_soon(waiter, "g3", QoS.GOLD)  # full, no bronze: refused
        await trio.testing.wait_all_tasks_blocked()
        shed = results.pop("g3")
        assert isinstance(shed, Shed) and shed.retry_after_ms > 0
        for _ in range(4):
            adm.release()
            await trio.testing.wait_all_tasks_blocked()
    assert results == {"g0": "admitted", "g1": "admitted", "g2": "admitted"}
    assert adm.in_flight == 0 and adm.waiting == 0


@pytest.mark.parametrize("error", [False, True])
async def test_admission_unit_aimd(autojump_clock, error: bool) -> None:
    """[ATP-ADAPT-003] The global limit grows by 1/limit on a fast success and shrinks ×0.9 on an error,
    within [min_limit, max_limit]."""
    adm = Admission(AdmissionConfig(initial_limit=10, min_limit=4, max_limit=11))
    await adm.acquire(QoS.SILVER)
    adm.release(latency_s=0.01, error=error)
    assert adm.limit == pytest.approx(9.0 if error else 10.1)
    for _ in range(50):
        await adm.acquire(QoS.SILVER)
        adm.release(latency_s=0.01, error=error)
    assert adm.limit == (4 if error else 11)


async def test_admission_unit_silver_shed_before_gold(autojump_clock) -> None:
    """ATP-ADAPT-002 (unit): on a full queue with no bronze waiting, a gold arrival evicts
    the newest silver waiter rather than being refused; a silver arrival never evicts
    silver (it is refused instead)."""
    adm = Admission(_one_at_a_time(max_queue=2))
    await adm.acquire(QoS.GOLD)
    results: dict[str, object] = {}

    async def waiter(name: str, lane: QoS) -> None:
        try:
            await adm.acquire(lane)
            results[name] = "admitted"
        except Shed as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        for name in ("s0", "s1"):
            nursery.start_soon(waiter, name, QoS.SILVER)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "s2", QoS.SILVER)  # full, nothing lower: refused
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(results.pop("s2"), Shed)
        nursery.start_soon(waiter, "g0", QoS.GOLD)  # full: evicts s1, the newest silver
        await trio.testing.wait_all_tasks_blocked()
        shed = results.pop("s1")
        assert isinstance(shed, Shed) and shed.lane is QoS.SILVER and shed.retry_after_ms > 0
        for _ in range(3):
            adm.release()
            await trio.testing.wait_all_tasks_blocked()
    assert results == {"g0": "admitted", "s0": "admitted"}
