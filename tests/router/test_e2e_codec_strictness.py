"""Issue 9, items 1, 6, 11, 12, 14 and 15, through a real router process (``atp serve``)
and raw WebSocket messages built by hand (the ``websockets`` sync client; binary frames
from struct + cbor2, text frames as literal JSON), never through atp_proto.frames.

Each test reproduces what an outside client did to the router before the fix: a lone
surrogate that ended the session without an ERROR, unknown frame types that closed it,
ext keys that shadowed the JSON header, frames the spec forbids that were accepted,
JSON errors of the wrong scope, a credit cost a browser cannot compute, and alias ids a
client could not learn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ._helpers_e2e import (
    F_FIN,
    F_HB,
    F_RST,
    F_SYN,
    HEADER,
    T_CAPABILITIES,
    T_DATA,
    T_ERROR,
    RawFrame,
    RouterProcess,
    build_frame,
    frames_until_end,
    parse_frames,
    router_process,
    syn_frame,
)


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
        "slow=builtin:persona?latency_ms=60&chunks=12",
        "--adapter",
        "echo=builtin:echo?chunks=40",
    ) as r:
        yield r


def _ws(router: RouterProcess) -> ClientConnection:
    return connect(router.ws_url, proxy=None, open_timeout=10, max_size=None)


def _text_syn(alias: str, prompt: str = "hello", adapters: str = "persona", **extra: Any) -> str:
    obj: dict[str, Any] = {
        "v": 1,
        "stream_id": alias,
        "msg_seq": 1,
        "flags": ["SYN"],
        "ttl": 20,
        "meta": {"task_type": "qa", "adapters": [adapters]},
        "payload": {"type": "agent.task", "content": {"prompt": prompt}},
    }
    obj.update(extra)
    return json.dumps(obj)


def _texts_until(ws: ClientConnection, done: set[str | int], timeout: float = 15) -> list[dict]:
    """Text frames until every stream in ``done`` has ended (FIN or ERROR)."""
    out: list[dict] = []
    left = set(done)
    deadline = time.monotonic() + timeout
    while left:
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert isinstance(msg, str), msg
        obj = json.loads(msg)
        out.append(obj)
        if "FIN" in obj.get("flags", []) or obj.get("type") == "ERROR":
            left.discard(obj.get("stream_id"))
    return out


def _error(frames: list[dict], alias: str | int) -> dict:
    (err,) = [f for f in frames if f.get("stream_id") == alias and f.get("type") == "ERROR"]
    return err["error"]


def _ends_with_fin(frames: list[dict], alias: str) -> bool:
    mine = [f for f in frames if f.get("stream_id") == alias]
    return bool(mine) and "FIN" in mine[-1]["flags"] and all(f.get("type") != "ERROR" for f in mine)


# -- item 1: a lone surrogate ---------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(
            {"payload": {"type": "agent.task", "content": {"prompt": "\ud800"}}}, id="prompt"
        ),
        pytest.param(
            {"meta": {"task_type": "qa", "adapters": ["persona"], "x": "\udfff"}}, id="meta"
        ),
        pytest.param({"session_id": "s\ud800"}, id="session_id"),
    ],
)
def test_lone_surrogate_is_a_stream_error_and_spares_the_stream_in_flight(
    router: RouterProcess, where: dict[str, Any]
) -> None:
    """[ATP-JSON-017, ATP-JSON-006, ATP-ERR-001, ATP-ERR-005] A text SYN holding the escape
    ``\\ud800`` (valid JSON, as ``JSON.stringify`` writes a lone surrogate) gets ERROR
    EPROTO on its stream; the stream already in flight ends with its FIN, and the session
    serves a new stream afterwards."""
    with _ws(router) as ws:
        ws.send(_text_syn("busy", adapters="slow"))
        first = json.loads(ws.recv(timeout=10))  # "busy" is streaming
        assert first["stream_id"] == "busy" and first.get("type") != "ERROR"
        bad = json.loads(_text_syn("bad"))
        bad.update(where)
        text = json.dumps(bad)  # ensure_ascii: the surrogate travels as the escape \ud800
        assert "\\ud800" in text or "\\udfff" in text
        ws.send(text)
        frames = [first, *_texts_until(ws, {"busy", "bad"})]
        assert _error(frames, "bad")["code"] == "EPROTO"
        assert _ends_with_fin(frames, "busy")
        ws.send(_text_syn("after"))
        assert _ends_with_fin(_texts_until(ws, {"after"}), "after")


def test_lone_surrogate_in_an_alias_is_a_connection_error_with_an_error(
    router: RouterProcess,
) -> None:
    """[ATP-JSON-017, ATP-ERR-002] No reply could name the alias ``"st\\ud800"``: ERROR
    EPROTO on stream 0, then close code 1002 (before the fix: a bare close 1000)."""
    with _ws(router) as ws:
        ws.send(_text_syn("st\ud800"))
        got: list[dict] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(json.loads(ws.recv(timeout=10)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    assert got and got[-1]["stream_id"] == 0 and got[-1]["error"]["code"] == "EPROTO"


# -- item 6: unknown frame types -------------------------------------------------------------


@pytest.mark.parametrize("stream_id", [0, 1])
def test_unknown_frame_type_with_non_cbor_ext_is_skipped(
    router: RouterProcess, stream_id: int
) -> None:
    """[ATP-FRAME-010, ATP-FRAME-005] Type 0x42 whose ext is not CBOR, on stream 0 or on a
    stream in flight, is skipped unread: no ERROR, the session and the stream go on."""
    junk = HEADER.pack(1, 0x42, 0xFF, 9, stream_id, 7, 3, 0, 4, 2) + b"\xff\xfe\xfd\xfc" + b"zz"
    with _ws(router) as ws:
        ws.send(syn_frame(1, adapters=["slow"]))
        ws.send(junk)
        ws.send(junk + syn_frame(3))  # and back to back with a frame that counts
        frames = frames_until_end(ws, {1, 3})
    assert not [f for f in frames if f.type == T_ERROR], frames
    assert {f.stream_id for f in frames if f.has(F_FIN)} == {1, 3}


# -- item 11: ext keys named like header fields ------------------------------------------------


def test_ext_key_named_like_a_header_field_is_refused(router: RouterProcess) -> None:
    """[ATP-JSON-015] A binary SYN whose ext holds ``type``, ``payload`` and ``v`` would,
    in JSON, overwrite the header: it is a stream error EPROTO; stream 3 is served."""
    bad = build_frame(
        T_DATA,
        F_SYN,
        1,
        1,
        ext={"meta": {"adapters": ["persona"]}, "type": "x", "payload": 1, "v": 9},
        payload={"type": "agent.task", "content": {"prompt": "hi"}},
    )
    with _ws(router) as ws:
        ws.send(bad + syn_frame(3))
        frames = frames_until_end(ws, {1, 3})
    errors = [f for f in frames if f.type == T_ERROR]
    assert [(f.stream_id, f.ext["error"]["code"]) for f in errors] == [(1, "EPROTO")]
    assert "reserved" in errors[0].ext["error"]["message"]
    assert [f.stream_id for f in frames if f.has(F_FIN)] == [3]


# -- item 12: what the spec forbids is refused --------------------------------------------------


def _closes_with_eproto(ws: ClientConnection) -> list[RawFrame]:
    frames: list[RawFrame] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            msg = ws.recv(timeout=10)
            frames.extend(parse_frames(msg) if isinstance(msg, bytes) else [])
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    assert frames and frames[-1].stream_id == 0 and frames[-1].type == T_ERROR
    assert frames[-1].ext["error"]["code"] == "EPROTO"
    return frames


def test_capabilities_without_versions_is_a_connection_error(router: RouterProcess) -> None:
    """[ATP-SESS-017] ``versions`` is REQUIRED: no CAPABILITIES answer, ERROR EPROTO, 1002."""
    with _ws(router) as ws:
        ws.send(build_frame(T_CAPABILITIES, 0, 0, ext={"caps": {"initial_window": 4096}}))
        frames = _closes_with_eproto(ws)
    assert not [f for f in frames if f.type == T_CAPABILITIES]


def test_error_without_message_is_refused_on_its_stream(router: RouterProcess) -> None:
    """[ATP-FRAME-015] A client's ERROR whose ``error`` has no ``message`` is malformed: the
    router answers EPROTO on that stream (a well-formed one would get no answer)."""
    with _ws(router) as ws:
        ws.send(syn_frame(1, adapters=["slow"]))
        ws.send(build_frame(T_ERROR, F_RST, 1, ext={"error": {"code": "EX_GONE"}}))
        frames = frames_until_end(ws, {1})
    errors = [f for f in frames if f.type == T_ERROR]
    assert errors and errors[-1].stream_id == 1 and errors[-1].ext["error"]["code"] == "EPROTO"


@pytest.mark.parametrize(
    "ext",
    [
        pytest.param({"x-score": float("nan")}, id="nan"),
        pytest.param({"x-score": float("-inf")}, id="infinity"),
        pytest.param({"session_id": 42}, id="session_id-not-text"),
        pytest.param({"session_id": "s" * 129}, id="session_id-too-long"),
    ],
)
def test_binary_ext_the_spec_forbids_is_a_stream_error(
    router: RouterProcess, ext: dict[str, Any]
) -> None:
    """[ATP-FRAME-006, ATP-EXT-010] NaN / infinities in ext, and a binary ``session_id``
    that is not text of at most 128 characters (refused in JSON already), are EPROTO on the
    stream; the session goes on (stream 3 is served)."""
    bad = build_frame(
        T_DATA,
        F_SYN,
        1,
        1,
        ext={"meta": {"adapters": ["persona"]}, **ext},
        payload={"type": "agent.task", "content": {"prompt": "hi"}},
    )
    with _ws(router) as ws:
        ws.send(bad + syn_frame(3))
        frames = frames_until_end(ws, {1, 3})
    errors = [(f.stream_id, f.ext["error"]["code"]) for f in frames if f.type == T_ERROR]
    assert errors == [(1, "EPROTO")]
    assert [f.stream_id for f in frames if f.has(F_FIN)] == [3]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param('"qos": "platinum"', id="qos"),
        pytest.param('"msg_seq": -1', id="msg_seq"),
        pytest.param('"flags": "MORE"', id="flags"),
        pytest.param('"flags": [7]', id="flags-item"),
        pytest.param('"type": 1.5', id="type"),
        pytest.param('"meta": {"a": 1, "a": 2}', id="duplicate-key"),
        pytest.param('"x": 1e999', id="overflowing-number"),
    ],
)
def test_bad_json_field_on_an_identified_stream_is_a_stream_error(
    router: RouterProcess, fields: str
) -> None:
    """[ATP-JSON-006, ATP-JSON-017] On a stream in flight, a text frame with a bad
    ``qos``, ``msg_seq``, ``flags``, ``type`` (the last two closed the session before), a
    duplicate key (last won) or a number beyond binary64 is a stream error EPROTO on that
    stream; the session and its other stream go on."""
    with _ws(router) as ws:
        ws.send(_text_syn("victim", adapters="slow"))
        ws.send(_text_syn("other", adapters="slow"))
        ws.send('{"stream_id": "victim", "msg_seq": 2, ' + fields + ', "payload": "more"}')
        frames = _texts_until(ws, {"victim", "other"})
        assert _error(frames, "victim")["code"] == "EPROTO"
        assert _ends_with_fin(frames, "other")
        assert not [f for f in frames if f.get("stream_id") == 0]


# -- item 14: the credit cost of a text frame ---------------------------------------------------


@pytest.mark.parametrize("window", [1024, 4096])
def test_text_credit_is_the_utf8_length_of_each_message(router: RouterProcess, window: int) -> None:
    """[ATP-FLOW-008, ATP-FLOW-001, ATP-FLOW-012] A browser-like client counts each text
    DATA message as its UTF-8 length, the only cost it can compute, and returns credit at
    half its window: the router never sends past that credit, and the stream (whose JSON
    is far longer than its CBOR: escapes, non-ASCII) runs to its FIN."""
    prompt = "é\x01ü\u2028" * 400  # 2 + 6 + 2 + 6 bytes as JSON text; 1 + 1 + 2 + 3 as CBOR text
    caps = json.dumps({"type": "CAPABILITIES", "caps": {"versions": [1], "initial_window": window}})
    with _ws(router) as ws:
        ws.send(caps)
        ws.send(_text_syn("big", prompt=prompt, adapters="echo"))
        granted, spent, unacked = window, 0, 0
        done = False
        deadline = time.monotonic() + 20
        while not done:
            msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            assert isinstance(msg, str)
            obj = json.loads(msg)
            if obj.get("type", "DATA") != "DATA" or obj.get("stream_id") != "big":
                assert obj.get("type") != "ERROR", obj
                continue
            cost = len(msg.encode("utf-8"))
            spent += cost
            assert spent <= granted, f"router sent {spent} bytes of text, credit was {granted}"
            done = "FIN" in obj["flags"]
            unacked += cost
            if unacked >= window // 2 and not done:
                ws.send(
                    json.dumps({"type": "WINDOW_UPDATE", "stream_id": "big", "credit": unacked})
                )
                granted += unacked
                unacked = 0
    assert spent > 4 * window  # it did flow through several windows


# -- item 15: the numeric id of an alias ---------------------------------------------------------


def test_router_names_the_numeric_id_of_an_alias_so_a_numeric_syn_can_follow(
    router: RouterProcess,
) -> None:
    """[ATP-JSON-016, ATP-JSON-014, ATP-STREAM-002] On a session mixing numeric ids and
    aliases, the first reply under an alias carries ``stream_num``; a numeric SYN on
    ``stream_num + 1`` is then legal and served, where guessing too low is refused."""
    with _ws(router) as ws:
        ws.send(syn_frame(5))
        frames_until_end(ws, {5})
        ws.send(_text_syn("a"))
        replies = _texts_until(ws, {"a"})
        first = replies[0]
        assert first["stream_id"] == "a"
        num = first["stream_num"]
        assert num > 5
        assert all("stream_num" not in r for r in replies[1:])  # said once
        ws.send(syn_frame(num))  # the alias's own id: refused (ids must increase)
        refused = frames_until_end(ws, {num})
        assert refused[-1].type == T_ERROR and refused[-1].ext["error"]["code"] == "EPROTO"
        ws.send(syn_frame(num + 1))
        frames = frames_until_end(ws, {num + 1})
    assert frames[-1].has(F_FIN) and frames[-1].type == T_DATA


def test_router_survives_all_of_the_above(router: RouterProcess) -> None:
    """[ATP-ERR-005] The router process is still up, serving, and logged no traceback."""
    assert router.proc.poll() is None
    with _ws(router) as ws:
        ws.send(build_frame(T_DATA, F_HB, 0, raw_payload=b"ping"))
        ws.send(syn_frame(1))
        frames = frames_until_end(ws, {1})
    assert frames[-1].has(F_FIN)
    assert "Traceback" not in router.log()
