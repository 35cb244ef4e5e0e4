"""Sans-IO, the reference bugs the independent client found (tests/indie/test_node_client.py,
examples/node-client/README.md), each failing before its fix.

1. Probe ``json_refused_alias_id_stays_used``: a SYN refused under an alias is named its
   numeric id in ``stream_num`` (ATP-JSON-016), so that id is used. A numeric SYN on it
   must be refused (ATP-STREAM-002), and a later frame on the alias must not reach the
   numeric stream (ATP-JSON-014: aliases and numeric ids never collide). Before the fix
   the id was not marked used: the numeric SYN was served, and an RST on the alias reset it.
2. Probe ``client_max_message_size``: the peer's ``caps.max_message_size`` was not read,
   so a router sent messages larger than its client accepts (ATP-LIMIT-004).
"""

from __future__ import annotations

import json
from typing import Any

import cbor2

from atp_proto.frames import (
    Connection,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    Role,
    StreamOpened,
    StreamReset,
    encode_frame,
)

TASK = {"type": "agent.task", "content": {"prompt": "hi"}}


def _texts(conn: Connection) -> list[dict[str, Any]]:
    return [json.loads(m) for m in conn.data_to_send() if isinstance(m, str)]


def _refused_alias(router: Connection) -> int:
    bad = {"stream_id": "bad", "msg_seq": 1, "flags": ["SYN"], "qos": "platinum", "payload": TASK}
    events = router.receive_text(json.dumps(bad), 0.0)
    (reset,) = [e for e in events if isinstance(e, StreamReset)]
    assert reset.code == ErrorCode.EPROTO
    (err,) = _texts(router)
    assert err["stream_id"] == "bad" and isinstance(err["stream_num"], int)
    return int(err["stream_num"])


def _binary_syn(sid: int) -> bytes:
    syn = Frame(FrameType.DATA, Flags.SYN, sid, 1, 0, 2, 0, None, cbor2.dumps(TASK), 1)
    return encode_frame(syn)


def test_numeric_syn_on_a_refused_alias_id_is_refused() -> None:
    """[ATP-STREAM-002, ATP-JSON-016] the id stream_num named is used."""
    router = Connection(Role.ROUTER, now=0.0)
    n = _refused_alias(router)
    events = router.receive_data(_binary_syn(n), 1.0)
    assert not [e for e in events if isinstance(e, StreamOpened)]
    (reset,) = [e for e in events if isinstance(e, StreamReset)]
    assert reset.stream_id == n and reset.code == ErrorCode.EPROTO
    # the next id is free
    opened = [
        e for e in router.receive_data(_binary_syn(n + 1), 1.0) if isinstance(e, StreamOpened)
    ]
    assert [e.stream_id for e in opened] == [n + 1]


def test_an_alias_syn_after_a_refused_one_opens_a_stream() -> None:
    """[ATP-JSON-003] the refused alias may be used again by a new SYN, on a new id."""
    router = Connection(Role.ROUTER, now=0.0)
    n = _refused_alias(router)
    good = {"stream_id": "bad", "msg_seq": 1, "flags": ["SYN"], "payload": TASK}
    opened = [e for e in router.receive_text(json.dumps(good), 1.0) if isinstance(e, StreamOpened)]
    assert [e.stream_id for e in opened] == [n + 1]


def test_no_message_over_the_peer_max_message_size() -> None:
    """[ATP-LIMIT-004] the second bug the independent client found (probe
    ``client_max_message_size``): a router whose client advertised max_message_size 2048
    sent it messages of 6 KB. Now the message is refused locally with ETOOBIG (the
    router's session turns that into a stream error ETOOBIG, as for ATP-FLOW-014)."""
    from atp_proto.frames import LocalProtocolError

    router = Connection(Role.ROUTER, now=0.0)
    caps = Frame(
        FrameType.CAPABILITIES,
        0,
        0,
        0,
        0,
        0,
        0,
        {"caps": {"versions": [1], "max_message_size": 2048}},
        b"",
        1,
    )
    router.receive_data(encode_frame(caps) + _binary_syn(1), 0.0)
    router.data_to_send()
    router.send_message(1, b"a" * 2048, more=True)  # exactly the limit: sent
    assert router.data_to_send()
    for payload, more in ((b"b" * 2049, True), (b"c" * 6000, False)):
        try:
            router.send_message(1, payload, more=more, end_stream=not more)
        except LocalProtocolError as exc:
            assert exc.code == ErrorCode.ETOOBIG and exc.stream_id == 1
        else:
            raise AssertionError(f"a message of {len(payload)} bytes was queued")
    assert not router.data_to_send()


def test_a_client_task_over_the_router_max_message_size_opens_no_stream() -> None:
    """[ATP-LIMIT-004] the same rule on the client's side: a SYN larger than the router's
    max_message_size is refused locally (ETOOBIG) without leaving a stream behind."""
    from atp_proto.frames import LocalProtocolError

    client = Connection(Role.CLIENT, now=0.0)
    caps = {"caps": {"versions": [1], "max_message_size": 1000}}
    client.receive_data(
        encode_frame(Frame(FrameType.CAPABILITIES, 0, 0, 0, 0, 0, 0, caps, b"", 1)), 0.0
    )
    try:
        client.open_stream(b"t" * 1001, now=None)
    except LocalProtocolError as exc:
        assert exc.code == ErrorCode.ETOOBIG
    else:
        raise AssertionError("a task over max_message_size was sent")
    assert client.open_streams == 0
    assert client.open_stream(b"t" * 1000, now=None) == 1  # the id was not used up
