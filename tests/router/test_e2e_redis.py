"""Tenant quotas shared through a real Redis by real router processes (issue 14 item 5).

Every test runs ``atp serve --redis URL`` processes (atp_proto.testing.processes) in front
of real gRPC persona adapter processes, against a real ``redis-server`` (Debian's package,
installed by the fixture when missing; atp_proto.testing.redis_server). Tenants come from
HS256 tokens, so one pair of routers holds several tenants' quotas at once.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from atp_proto.client import StreamError, connect, feedback
from atp_proto.frames import BudgetWindow
from atp_proto.router.auth import issue_token
from atp_proto.router.routing.learner import store
from atp_proto.testing.http import http_get, metric_value
from atp_proto.testing.processes import RouterProcess, adapter_argv, clean_env
from atp_proto.testing.redis_server import RedisServer, RedisUnavailable
from tests.router._redis import redis_or_skip

from ._helpers_e2e import ROOT

SECRET = "quota-tests-" + "k" * 40

QUOTAS = """
[quota]
period_s = 3600
[quota.tenants.budget]
tokens = 200
[quota.tenants.conc]
concurrent = 3
[quota.tenants.rate]
streams_per_s = 0.01
burst = 5
[quota.tenants.kill]
tokens = 100000
[quota.tenants.outage]
tokens = 100000
[quota.tenants.oom]
tokens = 100000
[quota.tenants.inflight]
tokens = 1000
[quota.tenants.conc2]
concurrent = 2
[quota.tenants.away]
tokens = 100000
"""


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


@pytest.fixture(scope="module")
def adapters() -> Iterator[dict[str, str]]:
    """Two gRPC persona adapter processes: a quick one and a slow one (4 chunks, 300 ms:
    a stream lasts longer than opening 8 sessions takes on a loaded host)."""
    procs = {
        name: subprocess.Popen(
            adapter_argv("persona", options={"latency_ms": ms}),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
            cwd=ROOT,
        )
        for name, ms in (("persona", "1"), ("slow", "300"))
    }
    try:
        urls = {}
        for name, p in procs.items():
            assert p.stdout is not None
            m = re.search(rb"listening on [^\s]*:(\d+)", p.stdout.readline())
            assert m, f"adapter {name} did not start"
            urls[name] = f"grpc://127.0.0.1:{int(m.group(1))}"
        yield urls
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(5)


def _routers(n: int, adapters: dict[str, str], *args: str) -> list[RouterProcess]:
    env = clean_env({"ATP_JWT_KEY": SECRET})
    with ThreadPoolExecutor(n) as pool:
        return list(
            pool.map(
                lambda _: RouterProcess(
                    *args, adapters=adapters, config_toml=QUOTAS, env=env, cwd=ROOT
                ),
                range(n),
            )
        )


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer, adapters: dict[str, str]) -> Iterator[list[RouterProcess]]:
    """Two routers sharing the module's Redis."""
    routers = _routers(2, adapters, "--redis", redis_server.url)
    try:
        yield routers
    finally:
        for r in routers:
            r.stop()


def _token(tenant: str) -> str:
    return issue_token(SECRET, tenant=tenant)


async def _ask(router: RouterProcess, tenant: str, adapter: str = "persona") -> Any:
    """The FINAL's telemetry, or the StreamError."""
    async with connect(router.ws_url, token=_token(tenant)) as client:
        try:
            final = await client.ask("how many tokens", meta={"adapters": [adapter]})
        except StreamError as exc:
            return exc
        return final.telemetry


def _used(server: RedisServer, tenant: str) -> int:
    """The tenant's tokens in this period, read from Redis itself."""
    client = redis.Redis.from_url(server.url)
    try:
        total = 0
        for key in client.scan_iter(f"atp:q:{{{tenant}}}:b:*"):
            total += int(client.hget(key, "t") or 0)
        return total
    finally:
        client.close()


def _redis_up(router: RouterProcess) -> float | None:
    async def get() -> float | None:
        assert router.metrics_port is not None
        _, text = await http_get(router.metrics_port, "/metrics")
        return metric_value(text, "atp_redis_up", use="quota")

    return trio.run(get)


def _sequential(routers: list[RouterProcess], tenant: str, n: int) -> list[Any]:
    async def run() -> list[Any]:
        return [await _ask(routers[i % len(routers)], tenant) for i in range(n)]

    return trio.run(run)


def test_tenant_budget_holds_across_two_routers(
    shared: list[RouterProcess], redis_server: RedisServer, adapters: dict[str, str]
) -> None:
    """[ATP-BUDGET-013] A tenant's 200-token budget is spent through two routers in turn:
    what both together served never passes 200, every stream after the first refusal is
    refused with EBUDGET by either router, and Redis holds exactly what the FINALs
    reported. The same two routers without Redis each allow the whole budget (limit x 2),
    which is what sharing prevents."""
    results = _sequential(shared, "budget", 10)
    ok = [r["tokens"] for r in results if isinstance(r, dict)]
    first_refusal = next(i for i, r in enumerate(results) if isinstance(r, StreamError))
    assert all(isinstance(r, StreamError) for r in results[first_refusal:])
    assert {r.code for r in results[first_refusal:]} == {"EBUDGET"}
    assert len(ok) >= 2 and sum(ok) <= 200
    assert sum(ok) > 200 - 2 * max(ok)  # the budget was used up: no further stream fit
    assert _used(redis_server, "budget") == sum(ok)

    alone = _routers(2, adapters)  # in-process quotas: each router counts alone
    try:
        results = _sequential(alone, "budget", 10)
    finally:
        for r in alone:
            r.stop()
    assert sum(r["tokens"] for r in results if isinstance(r, dict)) > 200


def test_concurrent_streams_exact_across_two_routers(shared: list[RouterProcess]) -> None:
    """[ATP-BUDGET-014] 8 streams of a tenant allowed 3 at once, opened together on two
    routers (4 each): exactly 3 run, 5 are refused with EWINDOW and retry_after_ms."""
    results: list[Any] = []

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(8):

                async def one(router: RouterProcess = shared[i % 2]) -> None:
                    results.append(await _ask(router, "conc", adapter="slow"))

                nursery.start_soon(one)

    trio.run(run)
    refused = [r for r in results if isinstance(r, StreamError)]
    assert len(results) - len(refused) == 3
    assert [r.code for r in refused] == ["EWINDOW"] * 5
    assert all(r.retry_after_ms and "3 concurrent streams" in r.message for r in refused)


def test_stream_rate_exact_across_two_routers(shared: list[RouterProcess]) -> None:
    """[ATP-BUDGET-014] A bucket of 5 streams refilled at 0.01/s: of 12 streams sent at
    once through two routers exactly 5 run; the rest get EWINDOW with a retry_after_ms of
    the refill time (about 100 s)."""
    results: list[Any] = []

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(12):

                async def one(router: RouterProcess = shared[i % 2]) -> None:
                    results.append(await _ask(router, "rate"))

                nursery.start_soon(one)

    trio.run(run)
    refused = [r for r in results if isinstance(r, StreamError)]
    assert len(results) - len(refused) == 5
    assert {r.code for r in refused} == {"EWINDOW"}
    assert all(50_000 < (r.retry_after_ms or 0) <= 100_000 for r in refused)


def test_router_killed_loses_no_budget_accounting(
    shared: list[RouterProcess], redis_server: RedisServer, adapters: dict[str, str]
) -> None:
    """[ATP-BUDGET-013] A router SIGKILLed the moment its client has the third FINAL (no
    drain, no shutdown write) has accounted for all three in Redis; the other router goes
    on from there."""
    (victim,) = _routers(1, adapters, "--redis", redis_server.url)
    try:

        async def run() -> list[Any]:
            out = [await _ask(victim, "kill") for _ in range(3)]
            victim.kill()
            return out

        results = trio.run(run)
    finally:
        victim.stop()
    assert all(isinstance(r, dict) for r in results), results
    spent = sum(r["tokens"] for r in results)
    assert _used(redis_server, "kill") == spent
    (after,) = _sequential(shared[1:], "kill", 1)
    assert _used(redis_server, "kill") == spent + after["tokens"]


def _kill_mid_flight(victim: RouterProcess, streams: list[tuple[str, BudgetWindow | None]]) -> None:
    """Open ``streams`` (tenant, client window) on the slow adapter through ``victim``,
    SIGKILL it once every one has had its first chunk."""

    async def run() -> None:
        started = [trio.Event() for _ in streams]

        async def one(i: int, tenant: str, window: BudgetWindow | None) -> None:
            async with connect(victim.ws_url, token=_token(tenant)) as client:
                try:
                    async with client.stream(
                        "how many tokens", window=window, meta={"adapters": ["slow"]}
                    ) as st:
                        async for _ in st:
                            started[i].set()
                except StreamError:
                    pass  # the router died under the stream

        async with trio.open_nursery() as nursery:
            for i, (tenant, window) in enumerate(streams):
                nursery.start_soon(one, i, tenant, window)
            with trio.fail_after(20):
                for ev in started:
                    await ev.wait()
            victim.kill()
            victim.wait(5)

    trio.run(run)


def test_router_killed_with_streams_in_flight_is_charged_their_holds(
    shared: list[RouterProcess], redis_server: RedisServer, adapters: dict[str, str]
) -> None:
    """[ATP-BUDGET-017] A router SIGKILLed with three streams of a 1,000-token tenant in
    flight (each with a 150-token client window, each past its first chunk), and two of a
    tenant allowed 2 streams at once. While its lease runs, the other router counts the
    dead router's open streams (a third stream of the 2-stream tenant is refused); once it
    lapsed, the other router's next admission charges each killed stream its hold, the
    larger of what it had written and its hold: its 150-token share lowered to the
    preflight's guard-banded estimate (ATP-BUDGET-017) — what Redis held, exactly, and
    less than 450; the 2-stream tenant runs two streams at once again."""
    (victim,) = _routers(1, adapters, "--redis", redis_server.url)
    try:
        window = BudgetWindow(max_tokens=150)
        _kill_mid_flight(victim, [("inflight", window)] * 3 + [("conc2", None)] * 2)
    finally:
        victim.stop()
    written = _used(redis_server, "inflight")  # what was written before the kill
    client = redis.Redis.from_url(redis_server.url)
    try:
        holds = [v.split() for v in client.hgetall("atp:q:{inflight}:h").values()]
    finally:
        client.close()
    assert len(holds) == 3 and all(0 <= int(h[0]) < 150 for h in holds)
    held = sum(int(h[0]) for h in holds)  # what the streams may still have spent
    assert written + held < 450
    (early,) = _sequential(shared, "conc2", 1)
    assert isinstance(early, StreamError) and early.code == "EWINDOW"
    time.sleep(5.5)  # the dead router's lease (5 s) lapses

    (after,) = _sequential(shared[1:], "inflight", 1)
    assert isinstance(after, dict), after
    assert _used(redis_server, "inflight") == written + held + after["tokens"]
    results: list[Any] = []

    async def two() -> None:
        async with trio.open_nursery() as nursery:
            for router in shared:

                async def one(router: RouterProcess = router) -> None:
                    results.append(await _ask(router, "conc2", adapter="slow"))

                nursery.start_soon(one)

    trio.run(two)
    assert all(isinstance(r, dict) for r in results), results


def test_redis_restarted_mid_run_fails_closed_then_recovers(adapters: dict[str, str]) -> None:
    """[ATP-BUDGET-015] Redis stopped: the router refuses new streams with EAGENTDOWN,
    retry_after_ms and a message naming the quota store (fail closed), and keeps running;
    Redis back (its append-only file kept the usage): streams are served again without a
    router restart, and the usage before the outage still counts."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        (router,) = _routers(1, adapters, "--redis", server.url)
        try:
            (before,) = _sequential([router], "outage", 1)
            server.stop()
            (down,) = _sequential([router], "outage", 1)
            assert isinstance(down, StreamError) and down.code == "EAGENTDOWN"
            assert down.retry_after_ms and "quota store (Redis) is unreachable" in down.message
            assert _redis_up(router) == 0.0
            server.restart()
            deadline = time.monotonic() + 10
            while True:
                (again,) = _sequential([router], "outage", 1)
                if isinstance(again, dict) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert isinstance(again, dict), again
            assert router.proc.poll() is None
            assert _redis_up(router) == 1.0
            assert _used(server, "outage") == before["tokens"] + again["tokens"]
            assert "Redis unreachable" in router.log() and "Redis reachable again" in router.log()
        finally:
            router.stop()


def _write_errors(router: RouterProcess, kind: str) -> float | None:
    async def get() -> float | None:
        assert router.metrics_port is not None
        _, text = await http_get(router.metrics_port, "/metrics")
        return metric_value(text, "atp_redis_write_errors_total", kind=kind)

    return trio.run(get)


def test_redis_out_of_memory_fails_closed_then_counts_every_stream_once(
    adapters: dict[str, str],
) -> None:
    """[ATP-BUDGET-015] Redis past ``maxmemory`` (``noeviction``) refuses the router's
    writes (OOM): the router refuses new streams with EAGENTDOWN naming the refusal
    (at the latest once a write of usage was refused; before, a probe of Redis half a
    second later was admitted, Redis running a script whose first write adds no
    memory), counts it in
    ``atp_redis_write_errors_total{kind="refused"}`` and keeps the usage; memory back,
    streams are served again and Redis holds exactly the usage of every stream served."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        (router,) = _routers(1, adapters, "--redis", server.url)
        admin = redis.Redis.from_url(server.url)
        try:
            served = _sequential([router], "oom", 1)
            assert _write_errors(router, "refused") == 0.0
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            try:
                for _ in range(5):  # Redis may run an admission whose first write adds nothing
                    (r,) = _sequential([router], "oom", 1)
                    if not isinstance(r, dict):
                        break
                    served.append(r)
                assert isinstance(r, StreamError) and r.code == "EAGENTDOWN", r
                assert "quota store (Redis) refuses writes (OOM)" in r.message
                assert (_write_errors(router, "refused") or 0) >= 1
                time.sleep(0.7)  # past the probe interval: still refused, not admitted
                (r,) = _sequential([router], "oom", 1)
                assert isinstance(r, StreamError) and r.code == "EAGENTDOWN", r
            finally:
                admin.config_set("maxmemory", 0)
            deadline = time.monotonic() + 15
            while True:
                (again,) = _sequential([router], "oom", 1)
                if isinstance(again, dict) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert isinstance(again, dict), again
            served.append(again)
            time.sleep(0.5)  # the last stream's usage is written before its FINAL; margin
            assert _used(server, "oom") == sum(r["tokens"] for r in served)
            assert "Redis refuses writes (OOM)" in router.log()
        finally:
            admin.close()
            router.stop()


def test_redis_down_longer_than_the_lease_with_streams_in_flight_counts_them_exactly(
    adapters: dict[str, str],
) -> None:
    """[ATP-BUDGET-017] Redis stops while router A has two streams in flight and stays
    down longer than A's lease (6 s > 5 s): the streams finish (their usage queued in A),
    Redis comes back. Whichever runs first — A writing its queue, or router B's
    admission presuming A dead and charging its holds — the tenant ends charged exactly
    what the FINALs said (a charged hold covers its stream's usage, the rest is given
    back), plus B's stream."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        a, b = _routers(2, adapters, "--redis", server.url)
        try:
            finals: list[Any] = []

            async def run() -> None:
                started = [trio.Event(), trio.Event()]

                async def one(i: int) -> None:
                    async with connect(a.ws_url, token=_token("away")) as client:
                        async with client.stream(
                            "how many tokens", meta={"adapters": ["slow"]}
                        ) as st:
                            async for item in st:
                                started[i].set()
                                if getattr(item, "telemetry", None):
                                    finals.append(item.telemetry)

                async with trio.open_nursery() as nursery:
                    for i in range(2):
                        nursery.start_soon(one, i)
                    for ev in started:
                        await ev.wait()
                    await trio.to_thread.run_sync(server.stop)
                stopped = trio.current_time()
                await trio.sleep(max(0.0, 6.0 - (trio.current_time() - stopped)))

            trio.run(run)
            assert len(finals) == 2, finals
            server.restart()
            deadline = time.monotonic() + 15
            while True:
                (late,) = _sequential([b], "away", 1)
                if isinstance(late, dict) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)  # EBUDGET while A's holds are charged, EAGENTDOWN: again
            assert isinstance(late, dict), late
            want = sum(f["tokens"] for f in finals) + late["tokens"]
            deadline = time.monotonic() + 10
            while _used(server, "away") != want and time.monotonic() < deadline:
                time.sleep(0.2)  # A's queue is written within its backoff (<= 2 s)
            assert _used(server, "away") == want
        finally:
            for r in (a, b):
                r.stop()


def test_learning_reaches_a_router_that_served_nothing(
    redis_server: RedisServer, adapters: dict[str, str], tmp_path: Path
) -> None:
    """Two bandit routers on one Redis: feedback given to router A for A's stream is, a
    sync later, in router B's state (saved to B's state file when B stops), although B
    served no stream and got no feedback."""
    state = tmp_path / "b.sqlite"
    (a,) = _routers(1, adapters, "--redis", redis_server.url, "--learner", "bandit")
    env = clean_env({"ATP_JWT_KEY": SECRET})
    b = RouterProcess(
        "--redis",
        redis_server.url,
        "--learner",
        "bandit",
        "--routing-state",
        str(state),
        adapters=adapters,
        config_toml=QUOTAS,
        env=env,
        cwd=ROOT,
    )
    try:

        async def run() -> None:
            telemetry = await _ask(a, "learner")
            assert isinstance(telemetry, dict), telemetry
            took = await feedback(
                f"http://127.0.0.1:{a.metrics_port}",
                telemetry["decision_id"],
                0.9,
                token=_token("learner"),
            )
            assert took.accepted

        trio.run(run)
        client = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 10
        while not client.xlen("atp:learn:log") and time.monotonic() < deadline:
            time.sleep(0.1)  # A syncs every second
        client.close()
        time.sleep(1.5)  # and so does B
    finally:
        assert b.stop(timeout=10) == 0
        a.stop()
    arms = store.load(state).arms
    assert arms["persona"].feedback_n == 1 and arms["persona"].n == pytest.approx(1.0)
