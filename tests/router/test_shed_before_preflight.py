"""ATP-ADAPT-025 and 026. 025: a stream the admission refuses at once is shed before the preflight's
Estimate calls, so a bronze flood does not load the adapters that admitted and gold
streams wait on (found by ``atp bench e2e --scenario qos``: gold p50 rose from 20 ms to
2.5 s under a 5x bronze flood while the router used 27% of a core — every shed bronze
SYN had cost an Estimate call first). Unit level: StreamRun with a counting adapter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cbor2
import pytest
import trio

from atp_proto.adapters import connect
from atp_proto.frames import BudgetWindow, ErrorCode, QoS, StreamOpened, StreamReset
from atp_proto.router.admission import Admission, AdmissionConfig
from atp_proto.router.auth import Principal
from atp_proto.router.config import RouterConfig
from atp_proto.router.metrics import RouterMetrics
from atp_proto.router.routing import PrincipalPolicy, RoutingContext, SessionInfo, StreamRun


class CountingAdapter:
    """builtin:echo that counts its Estimate calls."""

    def __init__(self) -> None:
        self.inner = connect("echo", "builtin:echo")
        self.name = "echo"
        self.estimates = 0

    async def estimate(self, request: Any) -> Any:
        self.estimates += 1
        return await self.inner.estimate(request)

    def stream(self, request: Any) -> Any:
        return self.inner.stream(request)

    async def health(self) -> Any:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()


class Out:
    def __init__(self, lane: QoS) -> None:
        self.stream_id = 1
        self.lane = lane
        self.on_window: Callable[[BudgetWindow], None] | None = None
        self.reset: StreamReset | None = None
        self.sent: list[tuple[str, Any, Any]] = []

    def set_lane(self, lane: QoS) -> None:
        self.lane = lane

    def can_write(self) -> bool:
        return True

    async def writable(self) -> None:
        return None

    def send_partial(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        self.sent.append(("partial", None, None))

    def send_final(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        self.sent.append(("final", None, None))

    def send_error(
        self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        self.sent.append(("error", str(code), retry_after_ms))


def _syn(qos: QoS) -> StreamOpened:
    payload = cbor2.dumps({"type": "agent.task", "content": {"prompt": "hi"}})
    return StreamOpened(1, 1, payload, qos, 0, BudgetWindow(), {}, {})


def test_refuse_now_matches_acquire() -> None:
    """refuse_now says what acquire would do at once, without queueing anything."""
    adm = Admission(AdmissionConfig(initial_limit=1, min_limit=1, max_limit=1, max_queue=4))
    assert adm.refuse_now(QoS.BRONZE) is None  # a free slot
    adm.in_flight = 1
    assert adm.refuse_now(QoS.BRONZE) is None  # it would queue (bronze share: 1 of 4)
    assert adm.waiting == 0


async def test_a_shed_bronze_stream_costs_the_adapters_nothing() -> None:
    config = RouterConfig(
        admission=AdmissionConfig(initial_limit=1, min_limit=1, max_limit=1, max_queue=4)
    )
    adapter = CountingAdapter()
    ctx = RoutingContext(
        {"echo": adapter},  # type: ignore[dict-item]
        Admission(config.admission),
        RouterMetrics(),
        config,
        PrincipalPolicy(min_confidence=config.min_confidence, window=config.tenant_window),
    )
    adm = ctx.admission
    async with trio.open_nursery() as nursery:
        await adm.acquire(QoS.GOLD)  # the one slot
        nursery.start_soon(adm.acquire, QoS.BRONZE)  # bronze's whole queue share
        await trio.testing.wait_all_tasks_blocked()
        assert adm.queue_depth(QoS.BRONZE) == 1
        out = Out(QoS.BRONZE)
        await StreamRun(ctx, SessionInfo("s1", Principal("s", "t")), _syn(QoS.BRONZE), out).run()
        assert out.sent and out.sent[-1][:2] == ("error", "EPREEMPT")
        assert out.sent[-1][2] is not None and out.sent[-1][2] > 0  # ATP-ERR-004
        assert adapter.estimates == 0
        assert ctx.metrics.shed.get("bronze") == 1
        # a gold stream is not refused: it queues (and runs once the slot is free)
        gold = Out(QoS.GOLD)
        nursery.start_soon(
            StreamRun(ctx, SessionInfo("s1", Principal("s", "t")), _syn(QoS.GOLD), gold).run
        )
        await trio.testing.wait_all_tasks_blocked()
        assert adapter.estimates == 1 and adm.queue_depth(QoS.GOLD) == 1
        adm.release()  # the first slot: gold goes before the queued bronze (6 : 1)
        with trio.fail_after(5):
            while not gold.sent:
                await trio.sleep(0.01)
        assert gold.sent[-1][0] == "final"
        nursery.cancel_scope.cancel()


async def test_bronze_limit_share_keeps_headroom_for_gold() -> None:
    """ATP-ADAPT-026: with bronze_limit_share 0.5 of a limit of 4, bronze runs at most 2
    streams at once and queues beyond; gold takes the other slots at once, and a freed slot
    goes to bronze again only below its share."""
    adm = Admission(
        AdmissionConfig(
            initial_limit=4, min_limit=4, max_limit=4, max_queue=16, bronze_limit_share=0.5
        )
    )
    async with trio.open_nursery() as nursery:
        await adm.acquire(QoS.BRONZE)
        await adm.acquire(QoS.BRONZE)
        nursery.start_soon(adm.acquire, QoS.BRONZE)  # a third bronze waits
        await trio.testing.wait_all_tasks_blocked()
        assert adm.in_flight == 2 and adm.queue_depth(QoS.BRONZE) == 1
        with trio.fail_after(1):  # gold does not wait: two slots are free for it
            await adm.acquire(QoS.GOLD)
            await adm.acquire(QoS.GOLD)
        assert adm.in_flight == 4 and adm.queue_depth(QoS.BRONZE) == 1
        adm.release()  # a gold slot frees: bronze holds 2 of 3 running, its share is 2
        await trio.testing.wait_all_tasks_blocked()
        assert adm.in_flight == 3 and adm.queue_depth(QoS.BRONZE) == 1
        adm.release()  # 2 running (both bronze): still at bronze's share
        await trio.testing.wait_all_tasks_blocked()
        assert adm.in_flight == 2 and adm.queue_depth(QoS.BRONZE) == 1
        adm.release()  # a bronze ended: 1 running, below the share: the waiter goes
        await trio.testing.wait_all_tasks_blocked()
        assert adm.in_flight == 2 and adm.queue_depth(QoS.BRONZE) == 0


def test_bronze_limit_share_is_checked() -> None:
    for bad in (0.0, 1.5, True, "half"):
        with pytest.raises(ValueError, match="bronze_limit_share"):
            AdmissionConfig(bronze_limit_share=bad)  # type: ignore[arg-type]
    assert AdmissionConfig().bronze_limit_share == 1.0  # the default keeps no headroom
