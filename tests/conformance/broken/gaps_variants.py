"""Broken-router variants for the cases of conformance/scenarios/router-gaps.yaml and the
handshake cases (loaded into router_variant.VARIANTS): each patches the one place its
fault lives in, so that a REAL ``atp serve`` process is wrong in exactly that way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def text_credit_cbor() -> None:  # text frames priced at their CBOR length (ATP-FLOW-008)
    from atp_proto.frames import _base, encode_frame

    def cost(self: Any, frame: Any) -> int:
        return len(encode_frame(frame))

    _base.ConnectionBase._text_frame_cost = cost  # type: ignore[method-assign]


def no_usage_charge() -> None:  # usage reported by adapters never charged (ATP-BUDGET-003)
    from atp_proto.router import budget

    budget.BudgetLedger.charge = lambda self, tokens, usd_micros: None  # type: ignore[method-assign]


def ignore_max_parallel() -> None:  # fan-out as wide as asked, max_parallel unchecked
    from atp_proto.router import budget
    from atp_proto.router.routing import fanout

    orig = fanout.FanOut.run

    async def run(self: Any, fitting: Any, ranked: Any, width: int) -> Any:
        return await orig(self, fitting, ranked, len(fitting))

    def acquire(self: Any) -> None:
        self.parallel += 1

    fanout.FanOut.run = run  # type: ignore[method-assign]
    budget.BudgetLedger.acquire_parallel = acquire  # type: ignore[method-assign]


def meta_not_passed() -> None:  # the task goes to the adapter without its meta (ATP-SEC-014)
    from atp_proto.adapters.proto import codec

    orig = codec.encode_task_request

    def encode(req: Any) -> bytes:
        return orig(dataclasses.replace(req, meta={}))

    codec.encode_task_request = encode  # type: ignore[assignment]


def hedge_loser_runs() -> None:  # a hedge's loser is not cancelled when the winner claims
    from atp_proto.router.routing import hedging

    def claim(self: Any, slot: int) -> bool:
        if self.winner is None:
            self.winner = slot
            self.progress.set()
        return self.winner == slot

    hedging.Race.claim = claim  # type: ignore[method-assign]


def hedge_unbounded() -> None:  # every hedge-enabled stream may hedge (no rate bound)
    from atp_proto.router.routing import hedging

    def take(self: Any) -> bool:
        self.started += 1
        return True

    hedging.Hedger.take = take  # type: ignore[method-assign]


def weaker_challenger() -> None:  # escalation to any untried adapter, however weak
    from atp_proto.router.routing import escalation

    def next_challenger(champion: Any, remaining: list[Any], ledger: Any, **kw: Any) -> Any:
        return remaining.pop(0) if remaining else None

    escalation.next_challenger = next_challenger  # type: ignore[assignment]


def unoffered_subprotocol() -> None:  # atp.v1 selected when the client offered others
    import wsproto.events as we

    from atp_proto.transports import ws_server

    async def accept(self: Any, subprotocol: str | None) -> None:
        # as WsConnection.accept, but the 101 names atp.v1 when the client offered only
        # other subprotocols (wsproto would refuse to; the bytes are rewritten)
        h11_conn = getattr(self._ws.handshake, "_h11_connection", None)
        early = bytes(h11_conn.trailing_data[0]) if h11_conn is not None else b""
        offered = getattr(self._ws.handshake, "_initiating_request", None)
        data = self._ws.send(we.AcceptConnection(subprotocol=subprotocol))
        if subprotocol is None and offered is not None and offered.subprotocols:
            head, sep, rest = data.partition(b"\r\n\r\n")
            data = head + b"\r\nSec-WebSocket-Protocol: atp.v1" + sep + rest
        if early:
            self._ws.receive_data(early)
        await self._send_bytes(data)

    ws_server.WsConnection.accept = accept  # type: ignore[method-assign]


def no_retry_after() -> None:  # the 503 beyond max_sessions without Retry-After
    from atp_proto.transports import ws_server

    orig = ws_server.WsConnection.reject

    async def reject(self: Any, status: int, *, headers: Any = None, body: bytes = b"") -> None:
        kept = [(k, v) for k, v in headers or [] if k.lower() != b"retry-after"]
        await orig(self, status, headers=kept, body=body)

    ws_server.WsConnection.reject = reject  # type: ignore[method-assign]


def gold_random_first() -> None:  # gold explores as freely as it likes: any adapter first
    import random

    from atp_proto.frames import QoS
    from atp_proto.router.routing.learner import bandit

    orig = bandit.BanditLearner.rank

    def rank(self: Any, query: Any) -> Any:
        ranking = orig(self, query)
        if query.lane is not QoS.GOLD:
            return ranking
        order = list(ranking.order)
        random.shuffle(order)
        return dataclasses.replace(ranking, order=tuple(order))

    bandit.BanditLearner.rank = rank  # type: ignore[method-assign]


def quota_at_admission_only() -> None:  # the tenant quota checked at admission, never after
    from atp_proto.router import quota

    orig = quota.QuotaLedger.__init__

    def init(self: Any, window: Any, cap: Any, sink: Any, **kw: Any) -> None:
        # no tenant window (the remainder) and no check of the tenant's total as it charges:
        # streams open at once each spend what they like (ATP-BUDGET-013/016)
        kw["over"] = None
        orig(self, window, quota.BudgetWindow(), sink, **kw)

    quota.QuotaLedger.__init__ = init  # type: ignore[method-assign]


def quota_no_retry_after() -> None:  # over the concurrent quota: EWINDOW without a hint
    from atp_proto.frames import ATPError, ErrorCode
    from atp_proto.router import quota

    def refuse_concurrent(limit: int) -> ATPError:
        return ATPError(ErrorCode.EWINDOW, f"tenant quota: at most {limit} concurrent streams")

    quota.refuse_concurrent = refuse_concurrent


VARIANTS: dict[str, Callable[[], None]] = {
    "quota-no-retry-after": quota_no_retry_after,
    "quota-at-admission-only": quota_at_admission_only,
    "gold-random-first": gold_random_first,
    "text-credit-cbor": text_credit_cbor,
    "no-usage-charge": no_usage_charge,
    "ignore-max-parallel": ignore_max_parallel,
    "meta-not-passed": meta_not_passed,
    "hedge-loser-runs": hedge_loser_runs,
    "hedge-unbounded": hedge_unbounded,
    "weaker-challenger": weaker_challenger,
    "unoffered-subprotocol": unoffered_subprotocol,
    "no-retry-after": no_retry_after,
}
