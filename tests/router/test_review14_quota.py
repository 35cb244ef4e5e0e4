"""Review of issue 14's tenant quotas: defects found and fixed (each test failed before).

* Streams of one tenant open at once each got the whole remainder of the period budget
  as their cap, so N streams could spend N x the quota (on one router, or across
  routers sharing Redis): they now share it, checking the tenant's total as they charge
  (ATP-BUDGET-016).
* An adapter's huge usage figure made Redis's HINCRBY overflow: every later write of
  the router failed (its other tenants' charges in the batch were re-applied at each
  retry, counted many times) and every stream was refused EAGENTDOWN. Counters now
  saturate (ATP-BUDGET-012).
* With Redis hanging (no answer), admissions queued behind the link's thread limiter
  each waited for a timeout of their own: they now fail closed at once once one call
  found Redis away (ATP-BUDGET-015).
* The in-process store kept every tenant name ever seen (usage of past periods, full
  buckets, zero counts): it now forgets them.

End-to-end tests run real router processes (``atp serve --redis``) in front of a real
gRPC persona adapter process against a real ``redis-server`` (atp_proto.testing).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis
import trio

from atp_proto.client import StreamError, connect
from atp_proto.frames import BudgetExceeded, BudgetWindow
from atp_proto.router.auth import issue_token
from atp_proto.router.quota import LocalQuotaStore, QuotaGuard, TenantQuota, parse_quota_section
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import SATURATE, RedisQuotaStore
from atp_proto.testing.processes import RouterProcess, adapter_argv, clean_env
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip

from ._helpers_e2e import ROOT

SECRET = "review14-quota-" + "k" * 40


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- shared remainder (unit)


class _Run:
    """What QuotaGuard wraps: a stream run whose ledger is charged chunk by chunk."""

    def __init__(self, chunks: int, tokens: int, started: trio.Event, go: trio.Event) -> None:
        from atp_proto.router.budget import BudgetLedger

        self.ledger = BudgetLedger(BudgetWindow(), BudgetWindow())
        self.output: Any = None
        self.chunks, self.tokens = chunks, tokens
        self.started, self.go = started, go
        self.spent = 0
        self.error: str | None = None

    async def run(self) -> None:
        self.started.set()
        await self.go.wait()
        try:
            for _ in range(self.chunks):
                self.spent += self.tokens  # spent, so charged even when over
                self.ledger.charge(self.tokens, 0)
                await trio.sleep(0)
        except BudgetExceeded as exc:
            self.error = str(exc.code)


class _Out:
    def send_error(self, *a: Any) -> None:
        raise AssertionError(f"refused at admission: {a}")


async def test_local_streams_open_at_once_share_the_remainder() -> None:
    """[ATP-BUDGET-016] Ten streams of a tenant with 100 tokens a period are admitted at
    once (nothing spent yet, each granted 100); each then spends 10 tokens a chunk for 10
    chunks. Together they spend at most the quota plus one chunk per stream, and the
    streams cut short end with EBUDGET (before: 1000 tokens, 10 x the quota)."""
    store = LocalQuotaStore()
    guard = QuotaGuard(parse_quota_section({"tokens": 100}), store)
    go = trio.Event()
    runs: list[_Run] = []
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            started = trio.Event()
            run = _Run(10, 10, started, go)
            runs.append(run)
            nursery.start_soon(guard.run, run, "t", _Out())
            await started.wait()
        go.set()
    spent = sum(r.spent for r in runs)
    assert 100 <= spent <= 100 + 10 * 10
    assert store.used("t", 3600)[0] == spent
    errors = {r.error for r in runs}
    assert "EBUDGET" in errors and errors <= {None, "EBUDGET"}


# ---------------------------------------------------------------- bounded tenant state


async def test_local_store_forgets_tenants_it_no_longer_needs() -> None:
    """20,000 tenant names (tokens from an identity provider name them, not this
    config), each admitted once, charged and released: once their period and bucket are
    over, the store holds a bounded number of entries, not one per name ever seen."""
    clock = Clock()
    store = LocalQuotaStore(clock)
    q = TenantQuota(tokens=1000, streams_per_s=10, concurrent=2)
    for i in range(10_000):
        name = f"tenant-{i}"
        await store.admit(name, q, 60)
        store.charge(name, 5, 0, 60)
        store.release(name, q)
    clock.now += 120  # the period and every bucket's refill are over
    for i in range(10_000, 20_000):
        clock.now += 0.01  # a bucket is full again 0.1 s after its one stream
        await store.admit(f"tenant-{i}", q, 60)
        store.release(f"tenant-{i}", q)
    assert store.tenants <= 2 * 1024 + 2
    # what is still needed is kept: a tenant's spending in the current period
    store.charge("big", 1000, 0, 60)
    for i in range(2048):
        await store.admit(f"x-{i}", q, 60)
    assert store.used("big", 60) == (1000, 0)


# ---------------------------------------------------------------- Redis: saturation


async def test_huge_usage_saturates_instead_of_poisoning_the_writes(
    redis_server: RedisServer,
) -> None:
    """[ATP-BUDGET-012] [ATP-BUDGET-013] An adapter reports 2^64-1 tokens (valid on the
    wire) twice: the tenant's counter saturates, the store stays up (a budget refusal is
    EBUDGET, not EAGENTDOWN), and another tenant's charge in the same batch is counted
    exactly once (before: HINCRBY overflowed, the batch failed and was re-applied at
    every retry, and every stream was refused EAGENTDOWN)."""
    link = RedisLink(redis_server.url, prefix="r14sat:")
    store = RedisQuotaStore(link)
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.admit("huge", q, 3600)
        store.charge("huge", 2**64 - 1, 2**64 - 1, 3600)
        store.charge("ok", 10, 0, 3600)
        await store.settle()
        store.charge("huge", 2**64 - 1, 0, 3600)
        await store.settle()
        await trio.sleep(0.5)  # a failed batch would have been retried by now
        assert store.up
        with pytest.raises(Exception) as exc:
            await store.admit("huge", q, 3600)
        assert str(getattr(exc.value, "code", "")) == "EBUDGET"
        assert (await store.admit("ok", q, 3600)).tokens_left == 90
        nursery.cancel_scope.cancel()
    client = redis.Redis.from_url(redis_server.url)
    try:
        (key,) = list(client.scan_iter("r14sat:q:{huge}:b:*"))
        assert int(client.hget(key, "t") or 0) == SATURATE
        (ok,) = list(client.scan_iter("r14sat:q:{ok}:b:*"))
        assert int(client.hget(ok, "t") or 0) == 10
    finally:
        client.close()
        link.close()


# ---------------------------------------------------------------- Redis hanging


async def test_admissions_queued_while_redis_hangs_fail_at_once() -> None:
    """[ATP-BUDGET-015] A "Redis" that accepts connections and never answers (a hung
    server, a black-holed network): 48 streams arrive at once. The link runs 16 calls at a
    time; the first 16 time out and find Redis away, and the 32 queued behind them are
    refused EAGENTDOWN at once instead of each waiting for a timeout of its own (before:
    three waves of timeouts, 48 connections)."""
    accepted = 0

    async def hang(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, hang, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        link = RedisLink(f"redis://127.0.0.1:{port}", prefix="hang:", timeout_s=0.3)
        store = RedisQuotaStore(link)
        q = TenantQuota(tokens=100)
        codes: list[str] = []

        async def one() -> None:
            try:
                await store.admit("t", q, 3600)
            except Exception as exc:
                codes.append(str(getattr(exc, "code", exc)))

        async with trio.open_nursery() as inner:
            for _ in range(48):
                inner.start_soon(one)
        assert codes == ["EAGENTDOWN"] * 48
        assert accepted <= 16
        link.close()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- e2e: two routers

QUOTAS = """
[quota]
period_s = 3600
[quota.tenants.share]
tokens = 60
"""


@pytest.fixture(scope="module")
def slow_adapter() -> Iterator[str]:
    """A gRPC persona adapter process whose streams last 8 chunks of 150 ms."""
    p = subprocess.Popen(
        adapter_argv("persona", options={"latency_ms": "150", "chunks": "8"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        cwd=ROOT,
    )
    try:
        assert p.stdout is not None
        m = re.search(rb"listening on [^\s]*:(\d+)", p.stdout.readline())
        assert m, "the adapter did not start"
        yield f"grpc://127.0.0.1:{int(m.group(1))}"
    finally:
        p.terminate()
        p.wait(5)


def _used(server: RedisServer, tenant: str) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return sum(
            int(client.hget(key, "t") or 0) for key in client.scan_iter(f"atp:q:{{{tenant}}}:b:*")
        )
    finally:
        client.close()


async def _ask(router: RouterProcess, tenant: str) -> Any:
    async with connect(router.ws_url, token=issue_token(SECRET, tenant=tenant)) as client:
        try:
            final = await client.ask("how many tokens", meta={"adapters": ["slow"]})
        except StreamError as exc:
            return exc
        return final.telemetry


def test_streams_at_once_on_two_routers_share_one_budget(
    redis_server: RedisServer, slow_adapter: str
) -> None:
    """[ATP-BUDGET-016] Eight streams of a tenant with 60 tokens a period, opened together
    through two routers sharing Redis: what Redis counts stays within the quota plus what
    the streams had in flight (a chunk each and one write's lag), and the streams cut
    short end with EBUDGET naming the tenant's quota. Before, every stream was capped at
    the whole 60 and the eight spent several times the quota."""
    env = clean_env({"ATP_JWT_KEY": SECRET})
    routers = [
        RouterProcess(
            "--redis",
            redis_server.url,
            adapters={"slow": slow_adapter},
            config_toml=QUOTAS,
            env=env,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    try:
        results: list[Any] = []

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                for i in range(8):

                    async def one(router: RouterProcess = routers[i % 2]) -> None:
                        results.append(await _ask(router, "share"))

                    nursery.start_soon(one)

        trio.run(run)
    finally:
        for r in routers:
            r.stop()
    done = [r for r in results if isinstance(r, dict)]
    cut = [r for r in results if isinstance(r, StreamError)]
    per_stream = max((r["tokens"] for r in done), default=0)
    used = _used(redis_server, "share")
    assert cut and {r.code for r in cut} == {"EBUDGET"}, results
    assert all("tenant quota exhausted" in r.message for r in cut)
    # each stream's prompt alone is ~27 tokens, a chunk a few more: without sharing the
    # eight would spend 8 x (a whole stream) > 4 x the quota
    assert used <= 60 + 8 * 12, (used, per_stream)


# ---------------------------------------------------------------- --redis validation

SERVE = [sys.executable, "-m", "atp_proto", "serve", "--no-auth", "--metrics", "off"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://u:s3cretpw@[::1:6379", "does not parse"),  # was a traceback, exit 1
        ("redis://:s3cretpw@127.0.0.1:port", "does not parse"),
        ("redis://:s3cretpw@127.0.0.1:6379/abc", "the DB must be a number"),  # was: DB 0
    ],
)
def test_bad_redis_urls_exit_2_in_one_line_without_the_password(url: str, says: str) -> None:
    """A --redis URL the client would misread (or not read) is refused at start: exit 2,
    one line naming the problem, and the password is not repeated (no secrets in logs)."""
    proc = subprocess.run(
        [*SERVE, "--ws", "127.0.0.1:0", "--redis", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("atp serve: error: --redis expects") and says in last, last
    assert "Traceback" not in proc.stderr and "s3cretpw" not in proc.stderr


def test_good_redis_urls_pass() -> None:
    from atp_proto.router.config import build_config

    for url in ("redis://:pw@127.0.0.1:6379/3", "rediss://h:1", "unix:///run/redis.sock"):
        assert build_config(file=None, env={}, flags={"redis_url": url}).redis_url == url


def test_redis_set_but_unused_is_said_at_start(redis_server: RedisServer) -> None:
    """``atp serve --redis URL`` with no ``[quota]`` and the default learner: one warning
    line at start saying nothing uses it; the router serves on (with a quota, none)."""
    unused = RouterProcess("--no-auth", "--redis", redis_server.url, env=clean_env(), cwd=ROOT)
    try:
        lines = [line for line in unused.log().splitlines() if "nothing uses it" in line]
    finally:
        unused.stop()
    assert len(lines) == 1, unused.log()[-2000:]
    used = RouterProcess(
        "--no-auth",
        "--redis",
        redis_server.url,
        config_toml="[quota]\ntokens = 100\n",
        env=clean_env(),
        cwd=ROOT,
    )
    try:
        assert "nothing uses it" not in used.log()
    finally:
        used.stop()
