"""Interoperability: the router (``atp serve`` as a real process) spoken to by an
independent stack — the ``websockets`` package's sync client, with binary frames built
and parsed by hand from the DECISIONS header table (struct + cbor2, never
atp_proto.frames), and the seed's SYN as JSON text (ATP-WS, ATP-FRAME, ATP-JSON,
ATP-FLOW, ATP-SEQ).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conformance.vectors import seed_frames

from ._helpers_e2e import (
    F_FIN,
    F_MORE,
    F_SYN,
    HEADER,
    Q_GOLD,
    T_CAPABILITIES,
    T_DATA,
    T_ERROR,
    T_WINDOW_UPDATE,
    RawFrame,
    RouterProcess,
    build_frame,
    frames_until_end,
    parse_frames,
    router_process,
)
from ._helpers_e2e import (
    syn_frame as _syn,
)

#: Section 3 of the seed, verbatim (the SYN example), from the one in-repo copy
#: (conformance/vectors/seed.json; tests/test_vectors.py checks it against the seed).
SEED_SYN_TEXT = seed_frames()["syn"]


@pytest.fixture(scope="module")
def router() -> Iterator[RouterProcess]:
    with router_process(
        "--no-auth",
        "--ws",
        "127.0.0.1:0",
        "--metrics",
        "off",
        "--adapter",
        "persona=builtin:persona?latency_ms=1",
        "--adapter",
        "many=builtin:persona?latency_ms=1&chunks=12",
    ) as r:
        yield r


def _ws(router: RouterProcess, **kwargs) -> ClientConnection:  # type: ignore[no-untyped-def]
    return connect(router.ws_url, proxy=None, open_timeout=10, **kwargs)


def test_seed_syn_json_text(router: RouterProcess) -> None:
    """[ATP-JSON-001, ATP-JSON-007, ATP-SEQ-003, ATP-WS-002, ATP-BUDGET-006] ATP-JSON: the seed's SYN text, sent by an independent client, gets PARTIALs
    (MORE, msg_seq 2, 3, ...) and a FINAL (FIN) with telemetry, as text, echoing the
    session and stream ids; the subprotocol ``atp.v1`` is selected when offered."""
    with _ws(router, subprotocols=["atp.v1"]) as ws:
        assert ws.subprotocol == "atp.v1"
        ws.send(SEED_SYN_TEXT)
        replies = []
        while not replies or "FIN" not in replies[-1]["flags"]:
            msg = ws.recv(timeout=10)
            assert isinstance(msg, str)
            replies.append(json.loads(msg))
    *partials, final = replies
    assert partials and all(p["flags"] == ["MORE"] for p in partials)
    assert [r["msg_seq"] for r in replies] == list(range(2, 2 + len(replies)))
    assert {r["stream_id"] for r in replies} == {"st1"}
    assert {r["session_id"] for r in replies} == {"s1"}
    assert all(p["payload"]["type"] == "agent.result.partial" for p in partials)
    assert final["payload"]["type"] == "agent.result.final"
    assert final["payload"]["content"]["ok"] is True
    assert set(final["telemetry"]) >= {"tokens", "usd_micros", "latency_ms"}


def test_hand_built_binary_syn(router: RouterProcess) -> None:
    """[ATP-FRAME-001, ATP-FRAME-002, ATP-SEQ-001, ATP-SEQ-003] ATP-FRAME: a SYN built with struct "!BBBBIIHHII" + CBOR ext/payload is answered
    with binary frames that parse with the same table: version 1, DATA, MORE then FIN,
    msg_seq from SYN+1, lengths consistent, telemetry in the FIN's ext."""
    with _ws(router) as ws:
        ws.send(_syn(1))
        frames = frames_until_end(ws, {1})
    assert all(f.version == 1 and f.stream_id == 1 and f.frag_seq == 0 for f in frames)
    assert all(f.type == T_DATA for f in frames)
    *partials, fin = frames
    assert partials and all(f.has(F_MORE) and not f.has(F_FIN) for f in partials)
    assert fin.has(F_FIN)
    assert [f.msg_seq for f in frames] == list(range(2, 2 + len(frames)))
    body = fin.body()
    assert body["type"] == "agent.result.final" and body["content"]["adapter"] == "persona"
    tel = fin.ext["telemetry"]
    assert tel["tokens"] > 0 and tel["adapters"] == ["persona"]
    answer = "".join(f.body()["content"]["text"] for f in partials)
    assert answer == body["content"]["answer"]


def test_two_frames_in_one_message(router: RouterProcess) -> None:
    """[ATP-FRAME-009, ATP-WS-001, ATP-SESS-002] ATP-WS: one binary message may carry several whole frames: CAPABILITIES and two
    SYNs back to back are all processed; the router answers with its CAPABILITIES."""
    caps = build_frame(T_CAPABILITIES, 0, 0, ext={"caps": {"versions": [1]}})
    with _ws(router) as ws:
        ws.send(caps + _syn(1, "first") + _syn(3, "second", adapters=["many"]))
        frames = frames_until_end(ws, {1, 3})
    router_caps = [f for f in frames if f.type == T_CAPABILITIES]
    assert len(router_caps) == 1 and router_caps[0].stream_id == 0
    assert 1 in router_caps[0].ext["caps"]["versions"]
    fins = {f.stream_id: f.body() for f in frames if f.has(F_FIN)}
    assert set(fins) == {1, 3}
    assert "first" in fins[1]["content"]["answer"]
    assert "second" in fins[3]["content"]["answer"]


def test_text_and_binary_on_one_connection(router: RouterProcess) -> None:
    """[ATP-WS-004] ATP-WS: the router answers each stream in the encoding of its SYN."""
    with _ws(router) as ws:
        ws.send(SEED_SYN_TEXT)
        ws.send(_syn(7))
        texts, binaries = [], []
        while not (texts and "FIN" in texts[-1]["flags"] and binaries and binaries[-1].has(F_FIN)):
            msg = ws.recv(timeout=10)
            if isinstance(msg, str):
                texts.append(json.loads(msg))
            else:
                binaries.extend(parse_frames(msg))
    assert {t["stream_id"] for t in texts} == {"st1"}
    assert {f.stream_id for f in binaries} == {7}


def test_credit_window_by_hand(router: RouterProcess) -> None:
    """[ATP-FLOW-001, ATP-FLOW-003, ATP-FLOW-004, ATP-FLOW-006] ATP-FLOW: a client advertising initial_window 1024 receives at most 1024 bytes of
    DATA frames (cost = 24 + ext + payload) before it grants credit; a hand-built
    WINDOW_UPDATE resumes the stream to its FIN."""
    caps = build_frame(
        T_CAPABILITIES, 0, 0, ext={"caps": {"versions": [1], "initial_window": 1024}}
    )
    with _ws(router) as ws:
        ws.send(caps + _syn(1, adapters=["many"]))
        got: list[RawFrame] = []
        try:
            while True:  # read until the router stops sending
                got.extend(parse_frames(ws.recv(timeout=1.0)))
        except TimeoutError:
            pass
        data = [f for f in got if f.type == T_DATA and f.stream_id == 1]
        cost = sum(f.size for f in data)
        assert data and not any(f.has(F_FIN) for f in data), "12 chunks cannot fit 1 KiB"
        assert cost <= 1024
        ws.send(build_frame(T_WINDOW_UPDATE, 0, 1, ext={"credit": 1 << 20}))
        rest = frames_until_end(ws, {1})
    assert rest[-1].has(F_FIN)
    seqs = [f.msg_seq for f in data + [f for f in rest if f.stream_id == 1]]
    assert seqs == list(range(2, 2 + len(seqs)))  # nothing lost or repeated


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"\x01\x00\x01", id="shorter-than-header"),
        pytest.param(
            HEADER.pack(1, T_DATA, F_SYN, Q_GOLD, 1, 1, 0, 0, 0, 500) + b"{}", id="payload-cut"
        ),
        pytest.param(
            HEADER.pack(1, T_CAPABILITIES, 0, 0, 0, 0, 0, 0, 3, 0) + b"\xff\xff\xff",
            id="garbage-ext-on-stream-0",
        ),
        pytest.param(_syn(1) + b"\x01\x00", id="trailing-garbage"),
    ],
)
def test_malformed_binary_closes_1002(router: RouterProcess, message: bytes) -> None:
    """[ATP-WS-001, ATP-ERR-002] ATP-FRAME / ATP-WS: broken framing is a connection error: an ERROR EPROTO on
    stream 0 (when it can be sent), then close code 1002."""
    with _ws(router) as ws:
        ws.send(message)
        frames: list[RawFrame] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                msg = ws.recv(timeout=10)
                if isinstance(msg, bytes):
                    frames.extend(parse_frames(msg))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    errors = [f for f in frames if f.type == T_ERROR and f.stream_id == 0]
    assert errors and errors[-1].ext["error"]["code"] == "EPROTO"


def test_router_survives_independent_clients(router: RouterProcess) -> None:
    """[ATP-ERR-005] After all of the above, the router process is still up and serving."""
    assert router.proc.poll() is None
    with _ws(router) as ws:
        ws.send(_syn(1))
        assert frames_until_end(ws, {1})[-1].has(F_FIN)
    assert "Traceback" not in router.log()
