"""Per-tenant quotas: a budget per period, a stream rate and concurrent streams.

The per-stream budget window (:mod:`.budget`) bounds one stream; this module bounds a
tenant across all its streams (ATP-BUDGET-013 / 014 / 015):

* ``tokens`` / ``usd_micros`` per ``period_s``: a stream is refused with EBUDGET once the
  tenant has spent its period's budget, and a stream admitted is capped at what is left
  (the remainder is a tenant window, ATP-BUDGET-001: preflight and the mid-stream
  charges of :class:`.budget.BudgetLedger` enforce it as they enforce the client's).
* ``streams_per_s`` (a token bucket of ``burst`` streams) and ``concurrent`` streams:
  refused with EWINDOW and ``retry_after_ms`` (ATP-ERR-004: a refusal for load).

The state lives in a :class:`QuotaStore`: :class:`LocalQuotaStore` in-process (the
embedded default), or :class:`atp_proto.router.shared.redis_quota.RedisQuotaStore` when
``--redis URL`` is set, so that a tenant's limit is the limit across all routers sharing
that Redis (never limit x routers). A store that cannot answer refuses the stream with
EAGENTDOWN (fail closed, ATP-BUDGET-015).

Usage is charged as it arrives: :class:`QuotaLedger` is the stream's ledger with a sink
that hands every charge to the store (the Redis store queues it and writes it at once,
coalesced, off the stream's path).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from atp_proto.frames import ATPError, BudgetExceeded, BudgetWindow, ErrorCode

from .budget import BudgetLedger

__all__ = [
    "Grant",
    "HoldSizer",
    "LocalQuotaStore",
    "QuotaConfig",
    "QuotaLedger",
    "QuotaStore",
    "TenantQuota",
    "parse_quota_section",
]

log = logging.getLogger("atp.router")

#: retry hint of a refusal because the quota store did not answer (ATP-BUDGET-015)
STORE_DOWN_RETRY_MS = 1000


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """One tenant's limits (None: unlimited)."""

    tokens: int | None = None  #: tokens per period
    usd_micros: int | None = None  #: money per period
    streams_per_s: float | None = None  #: new streams per second (token bucket)
    burst: int | None = None  #: the bucket's size (default: max(1, streams_per_s))
    concurrent: int | None = None  #: streams open at once

    @property
    def limited(self) -> bool:
        return any(
            v is not None
            for v in (self.tokens, self.usd_micros, self.streams_per_s, self.concurrent)
        )

    @property
    def bucket(self) -> float:
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, float(self.streams_per_s or 1.0))


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """The ``[quota]`` section: ``period_s``, the default limits, ``[quota.tenants.NAME]``."""

    period_s: int = 3600
    default: TenantQuota = field(default_factory=TenantQuota)
    tenants: Mapping[str, TenantQuota] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.default.limited or any(q.limited for q in self.tenants.values())

    def for_tenant(self, tenant: str) -> TenantQuota:
        return self.tenants.get(tenant, self.default)


_LIMIT_KEYS = {"tokens": int, "usd_micros": int, "streams_per_s": float, "burst": int}
_LIMIT_KEYS["concurrent"] = int


def _limits(where: str, data: Mapping[str, Any]) -> TenantQuota:
    values: dict[str, Any] = {}
    for key, value in data.items():
        want = _LIMIT_KEYS.get(key)
        if want is None:
            raise ValueError(f"{where}: unknown setting {key!r} (known: {', '.join(_LIMIT_KEYS)})")
        ok = isinstance(value, int | float) if want is float else isinstance(value, int)
        if isinstance(value, bool) or not ok or value < 0 or not math.isfinite(value):
            raise ValueError(f"{where}.{key} must be a non-negative {want.__name__}, got {value!r}")
        values[key] = float(value) if want is float else value
    if values.get("streams_per_s") == 0:
        raise ValueError(f"{where}.streams_per_s must be above 0 (omit it for no rate limit)")
    return TenantQuota(**values)


def parse_quota_section(data: Any) -> QuotaConfig:
    """The TOML ``[quota]`` table.

    Raises:
        ValueError: a wrong key or value (the message names it).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"[quota] must be a table, got {data!r}")
    rest = dict(data)
    period = rest.pop("period_s", 3600)
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"quota.period_s must be a whole number of seconds >= 1, got {period!r}")
    tenants_doc = rest.pop("tenants", {})
    if not isinstance(tenants_doc, Mapping) or not all(
        isinstance(v, Mapping) for v in tenants_doc.values()
    ):
        raise ValueError("[quota.tenants.NAME] must be tables of limits")
    default = _limits("quota", rest)
    tenants = {str(n): _limits(f"quota.tenants.{n}", v) for n, v in tenants_doc.items()}
    return QuotaConfig(period_s=period, default=default, tenants=tenants)


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted stream: what is left of the tenant's period budget (None: unlimited),
    and the id of the stream's hold in a shared store (ATP-BUDGET-017; None: no hold)."""

    tokens_left: int | None = None
    usd_left: int | None = None
    hold: str | None = None

    def window(self) -> BudgetWindow:
        return BudgetWindow(max_tokens=self.tokens_left, max_usd_micros=self.usd_left)


def refuse_budget(tenant_quota: TenantQuota, used_t: int, used_u: int, period_s: int) -> ATPError:
    if tenant_quota.tokens is not None and used_t >= tenant_quota.tokens:
        what = f"{used_t} tokens used of the tenant's {tenant_quota.tokens}"
    else:
        what = f"{used_u} usd_micros spent of the tenant's {tenant_quota.usd_micros}"
    return ATPError(ErrorCode.EBUDGET, f"tenant quota exhausted: {what} per {period_s} s")


def refuse_rate(rate: float, retry_ms: int) -> ATPError:
    return ATPError(
        ErrorCode.EWINDOW,
        f"tenant rate limit: at most {rate:g} new streams per second",
        retry_after_ms=max(1, retry_ms),
    )


def refuse_concurrent(limit: int) -> ATPError:
    return ATPError(
        ErrorCode.EWINDOW,
        f"tenant quota: at most {limit} concurrent streams",
        retry_after_ms=100,
    )


def grant_of(q: TenantQuota, used_t: int, used_u: int) -> Grant:
    return Grant(
        None if q.tokens is None else q.tokens - used_t,
        None if q.usd_micros is None else q.usd_micros - used_u,
    )


class QuotaStore(Protocol):
    """Where the tenants' counters live (in-process, or shared)."""

    async def admit(
        self, tenant: str, q: TenantQuota, period_s: int, cap: BudgetWindow | None = None
    ) -> Grant:
        """Count a new stream of ``tenant``, or refuse it. A shared store also reserves
        the stream's share (at most ``cap``, the client's window) as a hold, charged if the
        router dies before the stream settles it (ATP-BUDGET-017).

        Raises:
            ATPError: EBUDGET (period budget spent), EWINDOW (rate or concurrency, with
                retry_after_ms), EAGENTDOWN (the store did not answer; fail closed).
        """

    def charge(
        self, tenant: str, tokens: int, usd_micros: int, period_s: int, hold: str | None = None
    ) -> None:
        """Usage spent (never blocks, never raises); ``hold``: the stream's, settled by it."""

    def spent(self, tenant: str, period_s: int) -> tuple[int, int]:
        """The tenant's (tokens, usd_micros) in the current period as far as this router
        knows (never blocks): what streams open at once check as they charge, so that
        they share the period's remainder instead of each spending all of it."""

    def release(self, tenant: str, q: TenantQuota, hold: str | None = None) -> None:
        """An admitted stream ended (never blocks, never raises); its hold is dropped."""

    async def settle(self) -> None:
        """Return once the charges made so far are stored (bounded; never raises)."""


class LocalQuotaStore:
    """The in-process store: one router's counters (the default without ``--redis``)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._used: dict[str, tuple[int, int, int]] = {}  #: tenant -> (window, tokens, usd)
        #: tenant -> (tokens, at, full_at: when the bucket is full again and can be forgotten)
        self._buckets: dict[str, tuple[float, float, float]] = {}
        self._open: dict[str, int] = {}  #: tenant -> streams open (no entry: none)
        self._admits = 0

    @property
    def tenants(self) -> int:
        """Entries held (bounded by the tenants active in the period, not by all ever seen)."""
        return len(self._used) + len(self._buckets) + len(self._open)

    def used(self, tenant: str, period_s: int) -> tuple[int, int]:
        win = int(self.clock() // period_s)
        w, t, u = self._used.get(tenant, (win, 0, 0))
        return (t, u) if w == win else (0, 0)

    spent = used

    def _prune(self, period_s: int) -> None:
        """Forget past periods' usage and full buckets: the tenant names come from tokens,
        and every name ever seen must not stay in memory."""
        now = self.clock()
        win = int(now // period_s)
        self._used = {k: v for k, v in self._used.items() if v[0] == win}
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}

    async def admit(
        self, tenant: str, q: TenantQuota, period_s: int, cap: BudgetWindow | None = None
    ) -> Grant:
        """In-process: no hold (the counters die with the process that would settle it)."""
        self._admits += 1
        if self._admits % 1024 == 0:
            self._prune(period_s)
        used_t, used_u = self.used(tenant, period_s)
        if (q.tokens is not None and used_t >= q.tokens) or (
            q.usd_micros is not None and used_u >= q.usd_micros
        ):
            raise refuse_budget(q, used_t, used_u, period_s)
        if q.concurrent is not None and self._open.get(tenant, 0) >= q.concurrent:
            raise refuse_concurrent(q.concurrent)
        if q.streams_per_s is not None:
            now = self.clock()
            size = q.bucket
            tokens, at, _ = self._buckets.get(tenant, (size, now, now))
            tokens = min(size, tokens + (now - at) * q.streams_per_s)
            if tokens < 1.0:
                raise refuse_rate(q.streams_per_s, math.ceil((1 - tokens) / q.streams_per_s * 1e3))
            tokens -= 1.0
            self._buckets[tenant] = (tokens, now, now + (size - tokens) / q.streams_per_s)
        if q.concurrent is not None:
            self._open[tenant] = self._open.get(tenant, 0) + 1
        return grant_of(q, used_t, used_u)

    def charge(
        self, tenant: str, tokens: int, usd_micros: int, period_s: int, hold: str | None = None
    ) -> None:
        win = int(self.clock() // period_s)
        w, t, u = self._used.get(tenant, (win, 0, 0))
        if w != win:
            t = u = 0
        self._used[tenant] = (win, t + tokens, u + usd_micros)

    def release(self, tenant: str, q: TenantQuota, hold: str | None = None) -> None:
        left = self._open.get(tenant, 0) - 1
        if left > 0:
            self._open[tenant] = left
        else:
            self._open.pop(tenant, None)

    async def settle(self) -> None:
        return  # charged in place


class QuotaLedger(BudgetLedger):
    """A stream's ledger that also charges its tenant's quota as usage arrives."""

    __slots__ = ("_over", "_sink", "sizer")

    def __init__(
        self,
        window: BudgetWindow,
        cap: BudgetWindow,
        sink: Callable[[int, int], None],
        *,
        stream_id: int = 0,
        over: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(window, cap, stream_id=stream_id)
        self._sink = sink
        self._over = over
        self.sizer: HoldSizer | None = None  #: the stream's hold in a shared store

    def charge(self, tokens: int, usd_micros: int) -> None:
        """Charge the stream and its tenant; EBUDGET when the stream's window or the
        tenant's period quota (all its streams together, ``over``) is passed
        (ATP-BUDGET-016: the grant is what was left at admission, and streams open at
        once share it)."""
        try:
            self._sink(tokens, usd_micros)
            if self.sizer is not None:
                self.sizer.charged(
                    self.tokens + max(0, tokens), self.usd_micros + max(0, usd_micros)
                )
        except Exception:  # accounting must never fail the stream's own ledger
            log.exception("quota charge failed")
        super().charge(tokens, usd_micros)
        if self._over is not None and (tokens > 0 or usd_micros > 0):
            why = self._over()
            if why is not None:
                raise BudgetExceeded(ErrorCode.EBUDGET, why, stream_id=self.stream_id)


class HoldSizer:
    """Keeps a stream's hold in a shared store near what the stream will spend
    (ATP-BUDGET-017). Admission reserves the admitted share (what is left of the tenant's
    quota, or the client's window); once the preflight has chosen the work,
    :meth:`planned` lowers the hold to its guard-banded estimate (ATP-BUDGET-002), so that
    a router that dies is charged for what its streams were going to spend, not for the
    whole remainder each; :meth:`charged` raises it back to the admitted share, with the
    write of the usage that passes the lowered hold, when the stream outspends its
    estimate (an escalation, a failover, an adapter past its guard band)."""

    __slots__ = ("_low", "full", "hold", "period", "resized", "store", "tenant")

    def __init__(
        self,
        store: Any,
        tenant: str,
        period: int,
        hold: str,
        full: tuple[int | None, int | None],
        resized: Any = None,
    ) -> None:
        self.store = store
        self.tenant = tenant
        self.period = period
        self.hold = hold
        self.full = full  #: the admitted share (tokens, usd; None: no such limit)
        self.resized = resized  #: a metrics Counter labelled by change, or None
        self._low: tuple[int | None, int | None] | None = None  #: the lowered hold

    def planned(self, tokens: float, usd_micros: float) -> None:
        """The preflight chose work estimated (guard-banded) at ``tokens`` and
        ``usd_micros``: lower the hold to it (never raise it here)."""
        full_t, full_u = self.full
        low_t = None if full_t is None else min(full_t, math.ceil(max(0.0, tokens)))
        low_u = None if full_u is None else min(full_u, math.ceil(max(0.0, usd_micros)))
        if low_t == full_t and low_u == full_u:
            return  # the estimate needs the whole share
        self._low = (low_t, low_u)
        self.store.resize_hold(self.tenant, self.period, self.hold, low_t, low_u)
        if self.resized is not None:
            self.resized.inc("lowered")

    def charged(self, tokens: int, usd_micros: int) -> None:
        """The stream's totals so far: past the lowered hold, raise it back."""
        if self._low is None:
            return
        low_t, low_u = self._low
        if (low_t is not None and tokens > low_t) or (low_u is not None and usd_micros > low_u):
            self._low = None
            self.store.resize_hold(self.tenant, self.period, self.hold, *self.full)
            if self.resized is not None:
                self.resized.inc("raised")


def _share(grant: Grant, q: TenantQuota, cap: BudgetWindow) -> tuple[int | None, int | None]:
    """The share a hold reserves at admission: what is left of each limited quota, or the
    client's window when smaller (the store's ADMIT script computes the same)."""

    def one(limit: int | None, left: int | None, want: int | None) -> int | None:
        if limit is None or left is None:
            return None
        return left if want is None else min(left, want)

    return (
        one(q.tokens, grant.tokens_left, cap.max_tokens),
        one(q.usd_micros, grant.usd_left, cap.max_usd_micros),
    )


class QuotaGuard:
    """What the router wraps every stream in when quotas are configured."""

    def __init__(
        self, config: QuotaConfig, store: QuotaStore, refused: Any = None, resized: Any = None
    ) -> None:
        self.config = config
        self.store = store
        self._refused = refused  #: a metrics Counter labelled by code, or None
        self._resized = resized  #: holds lowered / raised (a Counter by change), or None

    async def run(self, stream_run: Any, tenant: str, output: Any) -> None:
        """Admit ``stream_run`` (a :class:`~atp_proto.router.routing.StreamRun`) against the
        tenant's quota, run it charging the quota, count it out at the end."""
        q = self.config.for_tenant(tenant)
        if not q.limited:
            await stream_run.run()
            return
        period = self.config.period_s
        try:
            grant = await self.store.admit(tenant, q, period, stream_run.ledger.window)
        except ATPError as exc:
            if self._refused is not None:
                self._refused.inc(str(exc.code))
            log.info(
                "stream refused by the tenant quota",
                extra={"tenant": tenant, "code": str(exc.code), "reason": exc.message},
            )
            output.send_error(exc.code, exc.message, exc.retry_after_ms)
            return
        store, hold = self.store, grant.hold

        def sink(tokens: int, usd_micros: int) -> None:
            store.charge(tenant, tokens, usd_micros, period, hold)

        def over() -> str | None:
            used_t, used_u = store.spent(tenant, period)
            if (q.tokens is not None and used_t > q.tokens) or (
                q.usd_micros is not None and used_u > q.usd_micros
            ):
                return refuse_budget(q, used_t, used_u, period).message
            return None

        old = stream_run.ledger
        budgeted = q.tokens is not None or q.usd_micros is not None
        stream_run.ledger = QuotaLedger(
            old.window,
            grant.window(),
            sink,
            stream_id=old.stream_id,
            over=over if budgeted else None,
        )
        resize = getattr(store, "resize_hold", None)
        if hold is not None and resize is not None:
            sizer = HoldSizer(
                store, tenant, period, hold, _share(grant, q, old.window), self._resized
            )
            stream_run.ledger.sizer = sizer
            stream_run.on_plan = sizer.planned  # the preflight's hand-off (ATP-BUDGET-017)
        held = None
        if q.tokens is not None or q.usd_micros is not None:
            # the FINAL leaves once its usage is stored: a router killed after a client saw
            # a stream's answer has accounted for it (ATP-BUDGET-013)
            held = stream_run.output = _HoldFinal(output)
        try:
            await stream_run.run()
        finally:
            store.release(tenant, q, hold)
            if held is not None and held.final is not None:
                await store.settle()
                body, ext = held.final
                output.send_final(body, ext=ext)


class _HoldFinal:
    """A stream's output whose FINAL is kept until :meth:`QuotaGuard.run` sends it."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "final", None)

    def send_final(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "final", (body, ext))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)
