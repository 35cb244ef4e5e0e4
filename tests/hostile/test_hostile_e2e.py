"""The hostile peer against real routers: CI-sized, fixed seeds, real processes on loopback.

The peer (atp_proto/testing/hostile_wire.py, hostile_session.py, hostile_cases.py) is
written from the specification alone: its own 24-byte header code, a raw-socket
WebSocket client, aioquic's sans-IO QUIC connection. Each test runs ``atp serve`` (JWT off,
then on; WebSocket and QUIC) with real ``atp adapter serve echo`` processes, runs every case
once with a seed fixed by its name, and judges the run (hostile_run.finish): ERROR codes
and scopes as the spec names them, the session surviving stream errors, no traceback or
ERROR-level line in the router's log, RSS / threads / fds / open sessions bounded, and a
clean client served at the end. ``scripts/hostile_fuzz.py`` runs the same cases for as
long as one likes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atp_proto.testing import hostile_run as hr
from atp_proto.testing.hostile_session import Session, syn
from atp_proto.testing.hostile_wire import (
    BUDGET_UPDATE,
    CAPABILITIES,
    DATA,
    HB,
    Closed,
    WsPeer,
    frame,
)

#: under JWT, the cases that touch the session's first frames and its streams' admission
AUTH_CASES = {
    "caps_broken",
    "caps_repeats_and_bad_limits",
    "heartbeats",
    "syn_ext_malformed",
    "wrong_msg_seq",
    "reset_at_every_state",
    "fragmented_interleaved",
    "coalesced_error_then_valid",
    "slow_reader",
    "json_stream",
    "quic_wrong_stream",
    "random_header_mutation",
}


@pytest.fixture(scope="module")
def open_fleet() -> Iterator[hr.Fleet]:
    with hr.fleet(auth=False, quic=True) as fl:
        yield fl


@pytest.fixture(scope="module")
def auth_fleet() -> Iterator[hr.Fleet]:
    with hr.fleet(auth=True, quic=True) as fl:
        yield fl


def _judge(summ: hr.Summary) -> None:
    assert summ.cases > 0
    assert not summ.violations, "\n".join(summ.lines())


@pytest.mark.parametrize("kind", ["ws", "quic"])
def test_every_case_once(open_fleet: hr.Fleet, kind: str) -> None:
    """[ATP-ERR-001, ATP-ERR-002, ATP-ERR-005, ATP-LIMIT-002] Every hostile case once on
    each transport (no auth): the spec's codes, the session surviving stream errors, the
    run-wide oracles."""
    _judge(hr.run_each(open_fleet, kind, seed=11, workers=3))


@pytest.mark.parametrize("kind", ["ws", "quic"])
def test_found_defects_stay_fixed(open_fleet: hr.Fleet, kind: str) -> None:
    """[ATP-EXT-010] a null session_id is refused (stream error EPROTO, the session goes
    on); [ATP-FRAME-023, ATP-FLAG-004] a client's BUDGET_UPDATE for a completed stream is
    discarded (the router used to answer ERROR EPROTO after the FINAL); [ATP-SEQ-005] a
    SYN two numbers short of 2³²−1 is ended with EPROTO (it was EINTERNAL)."""
    s = Session(open_fleet.target(kind))
    try:
        s.track(1)
        s.link.send([syn(1, ext={"session_id": None})])
        assert s.ended(1) == "EPROTO", s.violations
        assert s.probe() == "fin"
        done = s.max_sid
        s.link.send([frame(BUDGET_UPDATE, 0, done, ext={"usage": {"tokens": 1}})])
        s.pump(0.5)
        assert s.probe() == "fin"
        assert not s.violations and s.closed is None, s.violations
        # [ATP-SEQ-005] one msg_seq left: ERROR EPROTO saying so, not EINTERNAL
        wrap = s.new_sid()
        s.track(wrap, syn_seq=2**32 - 2)
        s.link.send([syn(wrap, "two numbers short", seq=2**32 - 2)])
        assert s.ended(wrap) == "EPROTO", s.streams[wrap].frames
        assert s.probe() == "fin"
        assert not s.violations, s.violations
    finally:
        s.close()


def test_auth_refusals(auth_fleet: hr.Fleet) -> None:
    """[ATP-WS-006, ATP-SEC-001] no token or a bad one: HTTP 401 before the upgrade;
    [ATP-QUIC-008, ATP-QUIC-018] over QUIC a first CAPABILITIES without ``caps.auth``, or
    with a bad token, or another first frame, closes the connection with 0x106 (ESEC)."""
    host, port = auth_fleet.ws.split("://")[1].split("/")[0].rsplit(":", 1)
    for token in (None, "not-a-jwt", hr.mint("another-secret-of-at-least-32-bytes-yes")):
        with pytest.raises(Closed, match="HTTP 401"):
            WsPeer(host, int(port), token=token)
    for first in (
        {"caps": {"versions": [1]}},
        {"caps": {"versions": [1], "auth": "Bearer not-a-jwt"}},
        None,
    ):
        s = Session(auth_fleet.quic, caps=False)
        try:
            if first is None:  # a heartbeat first, on the control stream
                s.link.send([frame(DATA, HB, 0, raw_payload=b"hb")])
            else:
                s.link.send([frame(CAPABILITIES, 0, 0, ext=first)])
            s.wait_closed(6.0)
            assert s.closed is not None and s.closed.code == 0x106, (first, s.closed)
        finally:
            s.close()


@pytest.mark.parametrize("kind", ["ws", "quic"])
def test_cases_with_jwt(auth_fleet: hr.Fleet, kind: str) -> None:
    """The cases of AUTH_CASES with JWT on (the token in the header over WebSocket, in
    ``caps.auth`` over QUIC): the same verdicts as without authentication."""
    _judge(hr.run_each(auth_fleet, kind, seed=12, workers=3, only=AUTH_CASES))
