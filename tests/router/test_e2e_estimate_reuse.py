"""Estimate reuse end to end (ATP-BUDGET-018/019): a router built as ``atp serve`` builds
it, REAL persona adapter processes over gRPC, one of them sending ``max_age_ms`` with its
estimates: the router answers later preflights of the same class from the reused reply
(counted by ``atp_estimates_total``), calls the other adapter's Estimate for every stream,
and calls again once a Stream call to the first has failed. What the adapter itself sees
is checked from the adapter's side by the conformance cases
(tests/conformance/test_router_estimate.py)."""

from __future__ import annotations

from typing import Any

import trio

from atp_proto.adapters.process import spawn_adapter
from atp_proto.client import Final, StreamError, connect
from atp_proto.router import Router, RouterConfig

from .conftest import ws_url


async def _answer(client: Any, prompt: str, adapter: str) -> Final:
    async with client.stream(prompt, meta={"adapters": [adapter]}) as st:
        async for item in st:
            if isinstance(item, Final):
                return item
    raise AssertionError("no FINAL")


async def test_router_reuses_what_the_adapter_allows(nursery: trio.Nursery) -> None:
    async with (
        spawn_adapter("persona", options={"latency_ms": "0", "max_age_ms": "60000"}) as cached,
        spawn_adapter("persona", options={"latency_ms": "0"}) as plain,
    ):
        cfg = RouterConfig(
            ws_port=0,
            metrics_port=None,
            auth=False,
            adapters={"cached": cached.url, "plain": plain.url},
            health_interval_s=60,
        )
        router = Router(cfg.validate())
        await nursery.start(router.serve)
        est = router.metrics.estimates
        with trio.fail_after(30):
            async with connect(ws_url(router)) as client:
                answers = [await _answer(client, f"question {i:02d}", "cached") for i in range(5)]
                for i in range(3):
                    await _answer(client, f"question {i:02d}", "plain")
                assert (est.get("cached", "called"), est.get("cached", "reused")) == (1, 4)
                assert (est.get("plain", "called"), est.get("plain", "reused")) == (3, 0)
                # a prompt of another size class is estimated afresh
                await _answer(client, "q" * 200, "cached")
                assert est.get("cached", "called") == 2
                # the answers are the adapter's, whatever the preflight reused
                assert [a.telemetry["adapters"] for a in answers] == [["cached"]] * 5
                assert len({a.content["answer"] for a in answers}) == 5
                # ATP-BUDGET-019: the adapter dies; its Stream call fails; the next
                # preflight may not reuse what it said before
                cached.process.kill()
                await cached.process.wait()
                for _ in range(2):
                    try:
                        await _answer(client, "question 07", "cached")
                    except StreamError as exc:
                        assert exc.code == "EAGENTDOWN"
                    else:  # pragma: no cover - the adapter is dead
                        raise AssertionError("a dead adapter answered")
                # the first of these reused the estimate and its Stream call failed;
                # the second had to call Estimate again
                assert (est.get("cached", "called"), est.get("cached", "reused")) == (3, 5)
