"""The transport checker: one battery that every ATP transport must pass.

Modelled on trio's ``testing/_check_streams.py``: the checks are written once against a
:class:`Pair` — the transport under test (:class:`atp_proto.transports.base.Transport`,
or a per-stream :class:`~atp_proto.transports.base.StreamTransport`, with ``closed``) and
a :class:`Peer` on a real loopback socket that records what arrives — and each binding
supplies a :class:`Binding` that makes pairs. This repository runs the battery over
``ws://``, ``wss://`` and QUIC, each at both ends (the router's server transports and
the client's ``connect_ws`` / ``connect_quic``; ``tests/transports/test_transport_checker.py``,
:mod:`.quic_peer`'s ``quic_binding`` and ``quic_client_binding``); a vendor's
transport, or the conformance suite later, runs it the same way::

    for check in CHECKS:
        if check.skip_reason(binding.per_stream) is None:
            await check.run(binding.make)

What every binding must do (a unit is a WebSocket message, or bytes on one QUIC stream):

* ``units_in_order`` / ``received_in_order``: units of many sizes, on several channels,
  arrive whole, byte-identical and in call order in both directions; a per-stream
  transport ends (FIN) exactly the channels whose last item said so, or none where its
  pair says ``fin_on_end=False`` (QUIC's client end follows the router's FIN instead,
  ATP-QUIC-012).
* ``large_units``: a multi-MiB unit crosses intact.
* ``backpressure``: a peer that does not read holds the sender back — a blocked ``send``
  on a message transport, ``pending_bytes`` that stays up until the peer acknowledges on a
  per-stream one (ATP-QUIC-010) — and the data flows again when it reads.
* ``close_code``: ``close_with_error`` reaches the peer as the binding's code for the
  ``ErrorCode`` (ATP-ERR-002, ATP-QUIC-004); afterwards sending raises TransportClosed.
* ``abrupt_peer_loss``: a peer that vanishes without a close (TCP reset; QUIC silence
  until the idle timeout) ends ``receive`` with TransportClosed, and sends raise it too —
  never another exception, never a hang.
* ``concurrent_senders``: tasks sending at once keep call order, every unit intact.
* Message transports only (their ``send`` can block part-way, and units have a size
  limit): a send cancelled while the socket is full or while waiting its turn loses
  nothing and tears no framing; a unit over the receive limit is handed on as
  :class:`~atp_proto.transports.base.Oversized` and the connection stays usable
  (ATP-WS-012). A per-stream transport skips these, saying why: its send never blocks
  (bytes go to the QUIC stack at once) and a byte stream has no unit to bound.

The checks use plain ``assert`` (as trio's checker does) and trio's clock; nothing here
imports pytest.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from ._checker_base import Binding, Check, Pair, PairMaker, Peer, pattern, send_unit
from ._checks_all import (
    check_abrupt_peer_loss,
    check_backpressure,
    check_close_code,
    check_concurrent_senders,
    check_large_units,
    check_received_in_order,
    check_units_in_order,
)
from ._checks_messages import (
    check_cancelled_send_keeps_framing,
    check_cancelled_twice_then_close,
    check_cancelled_waiters_keep_call_order,
    check_send_cancelled_while_waiting_for_its_turn,
    check_unit_size_limit,
)

__all__ = [
    "CHECKS",
    "Binding",
    "Check",
    "Pair",
    "PairMaker",
    "Peer",
    "pattern",
    "send_unit",
]


_NEVER_BLOCKS = (
    "a per-stream send never blocks part-way: it hands the bytes to the QUIC stack at once "
    "(backpressure is pending_bytes, checked by 'backpressure')"
)


def _check(
    fn: Callable[..., Awaitable[None]], name: str, *, messages_only: str = "", **kw: str
) -> Check:
    run = functools.partial(fn, **kw) if kw else fn
    return Check(
        name,
        run,
        messages_only=bool(messages_only),
        why_not_per_stream=messages_only,
        doc=fn.__doc__ or "",
    )


#: the battery, in a stable order (test ids are the names)
CHECKS: tuple[Check, ...] = (
    _check(check_units_in_order, "units_in_order"),
    _check(check_received_in_order, "received_in_order"),
    _check(check_large_units, "large_units"),
    _check(check_backpressure, "backpressure"),
    _check(check_close_code, "close_code"),
    _check(check_abrupt_peer_loss, "abrupt_peer_loss"),
    _check(check_concurrent_senders, "concurrent_senders"),
    *(
        _check(
            check_cancelled_send_keeps_framing,
            f"cancelled_send_keeps_framing[{then}]",
            messages_only=_NEVER_BLOCKS,
            then=then,
        )
        for then in ("send", "flush")
    ),
    _check(
        check_cancelled_twice_then_close,
        "cancelled_twice_then_close",
        messages_only=_NEVER_BLOCKS,
    ),
    _check(
        check_send_cancelled_while_waiting_for_its_turn,
        "send_cancelled_while_waiting_for_its_turn",
        messages_only=_NEVER_BLOCKS,
    ),
    *(
        _check(
            check_cancelled_waiters_keep_call_order,
            f"cancelled_waiters_keep_call_order[{which}]",
            messages_only=_NEVER_BLOCKS,
            cancelled=which,
        )
        for which in ("B", "C", "BC")
    ),
    _check(
        check_unit_size_limit,
        "unit_size_limit",
        messages_only=(
            "a byte-stream binding has no unit to bound: the frame size limit is the "
            "core's (ATP-FRAME), the receive buffer the transport's INBOX_LIMIT"
        ),
    ),
)
