"""``atp frames encode | decode | seeds`` (atp_proto/_cli/frames.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from atp_proto.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _feed(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def _run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    stdin: bytes | None = None,
) -> tuple[int, str, str]:
    if stdin is not None:
        _feed(monkeypatch, stdin)
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _expected(seed_text: str) -> dict[str, object]:
    """A seed frame as it comes back from binary: numeric stream id, defaults filled in;
    session_id survives as an informational ext entry."""
    obj = json.loads(seed_text)
    obj["stream_id"] = 1
    obj.setdefault("frag_seq", 0)
    return obj


@pytest.mark.parametrize("name", ["syn", "partial", "final"])
def test_seed_encodes_and_decodes_back(capsys, monkeypatch, name):
    rc, seed, _ = _run(capsys, monkeypatch, ["frames", "seeds", "--name", name])
    assert rc == 0
    json.loads(seed)  # verbatim JSON
    rc, hex_out, _ = _run(capsys, monkeypatch, ["frames", "encode"], seed.encode())
    assert rc == 0
    bytes.fromhex(hex_out.strip())  # one line of hex
    rc, out, _ = _run(capsys, monkeypatch, ["frames", "decode", "--json"], hex_out.encode())
    assert rc == 0
    assert json.loads(out) == [_expected(seed)]


def test_all_seeds_are_one_message_back_to_back(capsys, monkeypatch):
    from atp_proto.frames import decode_frames

    _, seeds, _ = _run(capsys, monkeypatch, ["frames", "seeds"])
    rc, hex_out, _ = _run(capsys, monkeypatch, ["frames", "encode"], seeds.encode())
    assert rc == 0
    frames = decode_frames(bytes.fromhex(hex_out))
    assert [f.msg_seq for f in frames] == [1, 2, 3]
    assert {f.stream_id for f in frames} == {1}  # "st1" -> 1, one JsonMapping
    rc, out, _ = _run(capsys, monkeypatch, ["frames", "decode", "--json"], hex_out.encode())
    assert rc == 0
    from atp_proto._cli.frames import SEEDS

    assert json.loads(out) == [_expected(s) for s in SEEDS.values()]


def test_decode_pretty_names_every_field(capsys, monkeypatch):
    _, seed, _ = _run(capsys, monkeypatch, ["frames", "seeds", "--name", "syn"])
    rc, out, _ = _run(capsys, monkeypatch, ["frames", "decode"], seed.encode())
    assert rc == 0
    for text in (
        "header 24 B @0, ext 131 B @24, payload 49 B @155",
        "type       DATA (0x00)",
        "flags      SYN (0x01)",
        "qos        gold (1)",
        "ttl        8 s",
        '"max_tokens": 50000',
        '"prompt": "hello"',
    ):
        assert text in out


def test_raw_round_trip_and_json_lines(capsys, monkeypatch, tmp_path):
    lines = (
        b'{"stream_id":"a","msg_seq":1,"flags":["SYN"],"payload":"hi"}\n'
        b'{"stream_id":"b","msg_seq":1,"flags":["SYN"],"payload_b64":"AAEC"}\n'
    )
    out_file = tmp_path / "msg.bin"
    rc, _, _ = _run(
        capsys, monkeypatch, ["frames", "encode", "--raw", "--out", str(out_file)], lines
    )
    assert rc == 0
    rc, out, _ = _run(capsys, monkeypatch, ["frames", "decode", str(out_file), "--json"])
    assert rc == 0
    frames = json.loads(out)
    assert [f["stream_id"] for f in frames] == [1, 2]  # aliases in order of appearance
    assert frames[0]["payload"] == "hi"
    assert frames[1]["payload_b64"] == "AAEC"  # not CBOR: carried as base64
    rc, out, _ = _run(capsys, monkeypatch, ["frames", "decode", str(out_file)])
    assert rc == 0
    assert "payload    3 B, not CBOR" in out
    assert "00 01 02" in out


def test_hex_with_whitespace(capsys, monkeypatch):
    rc, hex_out, _ = _run(
        capsys, monkeypatch, ["frames", "encode", "--hex"], b'{"stream_id":3,"msg_seq":7}'
    )
    assert rc == 0
    spaced = " ".join(hex_out[i : i + 2] for i in range(0, len(hex_out.strip()), 2))
    spaced = spaced[:30] + "\n" + spaced[30:]
    rc, out, _ = _run(capsys, monkeypatch, ["frames", "decode", "--hex", "--json"], spaced.encode())
    assert rc == 0
    assert json.loads(out) == [{"v": 1, "stream_id": 3, "msg_seq": 7, "frag_seq": 0, "flags": []}]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not frames at all", "not a hex digit"),
        (b"abc", "odd number of hex digits"),
        (b"\x07" * 40, "frame 1 at byte offset 0: EPROTO: unsupported version 7"),
        (b"", "no input bytes"),
        (b'{"stream_id": 1,', "not valid JSON"),
        (b'[{"stream_id": 1}, {"qos": "platinum"}]', "frame 2 (line 1)"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, monkeypatch, data, message):
    rc, _, err = _run(capsys, monkeypatch, ["frames", "decode"], data)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("atp frames decode: error: ")


def test_truncated_last_frame_is_reported(capsys, monkeypatch):
    from atp_proto._cli.frames import SEEDS

    _, hex_out, _ = _run(
        capsys, monkeypatch, ["frames", "encode"], "".join(SEEDS.values()).encode()
    )
    data = bytes.fromhex(hex_out)[:-10]
    rc, out, err = _run(capsys, monkeypatch, ["frames", "decode", "--raw"], data)
    assert rc == 2
    assert "frame 1" in out and "frame 2" in out  # the whole frames are still shown
    assert "frame 3 at byte offset 330 is truncated: 122 of 132 bytes present" in err


def test_bad_second_frame_names_its_offset(capsys, monkeypatch):
    from atp_proto.frames import Frame, encode_frame

    good = encode_frame(Frame.data(1, 1, "x"))
    bad = bytearray(encode_frame(Frame.data(1, 2, "y")))
    bad[3] = 9  # qos 9 does not exist
    rc, out, err = _run(
        capsys, monkeypatch, ["frames", "decode", "--json"], (good + bad).hex().encode()
    )
    assert rc == 2
    assert out == ""  # --json prints nothing rather than half an answer
    assert f"frame 2 at byte offset {len(good)}: EPROTO: unknown qos value 9" in err


def test_missing_file_is_usage_error(capsys, monkeypatch, tmp_path):
    rc, _, err = _run(capsys, monkeypatch, ["frames", "decode", str(tmp_path / "nope")])
    assert rc == 2
    assert "cannot read" in err


def test_pipeline_through_real_processes():
    """`atp frames seeds --name syn | atp frames encode | atp frames decode` shows the SYN."""
    cmd = [sys.executable, "-m", "atp_proto.cli", "frames"]

    def step(args: list[str], data: bytes | None = None) -> bytes:
        done = subprocess.run(
            [*cmd, *args], input=data, capture_output=True, check=True, timeout=60, cwd=ROOT
        )
        return done.stdout

    seed = step(["seeds", "--name", "syn"])
    raw = step(["encode", "--raw"], seed)
    assert raw[:4] == bytes([1, 0, 1, 1])  # version 1, DATA, SYN, gold
    out = step(["decode"], raw).decode()
    assert "flags      SYN (0x01)" in out
    assert '"task_type": "qa"' in out
    out = step(["decode", "--json"], step(["encode"], seed))
    assert json.loads(out) == [_expected(seed.decode())]


def _frame_hex(
    ftype: int, flags: int, sid: int, ext: dict | None = None, payload: bytes = b""
) -> bytes:
    """A frame built by hand (struct + cbor2), as hex input."""
    import struct

    import cbor2

    body = cbor2.dumps(ext) if ext else b""
    head = struct.pack("!BBBBIIHHII", 1, ftype, flags, 0, sid, 0, 0, 0, len(body), len(payload))
    return (head + body + payload).hex().encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            _frame_hex(0, 0, 1, {"type": "x", "payload": 1, "v": 9}),
            'EPROTO: bad ext: key "type" is reserved for the JSON header',
            id="ext-shadows-header",
        ),
        pytest.param(
            _frame_hex(0, 0, 0), "EPROTO: DATA on stream 0 without HB", id="data-stream-0"
        ),
        pytest.param(
            _frame_hex(1, 0, 0, {"credit": 5}),
            "EPROTO: WINDOW_UPDATE on stream 0",
            id="wu-stream-0",
        ),
        pytest.param(
            _frame_hex(0, 0x20, 0, payload=b"x" * 65),
            "ETOOBIG: heartbeat payload over 64 bytes",
            id="heartbeat-65",
        ),
        pytest.param(_frame_hex(1, 0, 1, {"credit": 0}), "EPROTO: credit must be", id="credit-0"),
        pytest.param(
            _frame_hex(4, 0x10, 1, {"error": {"code": "EX"}}),
            'holding a text "code" and "message"',
            id="error-without-message",
        ),
        pytest.param(
            _frame_hex(2, 0, 0, {"caps": {"max_streams": 4}}),
            '"caps" must carry "versions"',
            id="caps-without-versions",
        ),
        pytest.param(
            _frame_hex(0, 0, 1, {"x": float("nan")}), "not a finite number", id="nan-in-ext"
        ),
        pytest.param(
            _frame_hex(0, 0, 1, {"session_id": 42}), '"session_id" must be text', id="session-id"
        ),
        pytest.param(
            b'{"stream_id": 1, "credit": 0, "type": "WINDOW_UPDATE"}',
            "frame 1 (line 1): EPROTO: credit must be",
            id="json-credit-0",
        ),
        pytest.param(
            b'{"stream_id": 1, "msg_seq": 1, "msg_seq": 2}',
            'duplicate key "msg_seq"',
            id="json-duplicate-key",
        ),
        pytest.param(b'{"stream_id": 1, "x": NaN}', "NaN is not a JSON number", id="json-nan"),
    ],
)
def test_decode_refuses_what_a_peer_refuses(capsys, monkeypatch, data, message):
    """[ATP-FRAME-023, ATP-JSON-015] Issue 9 items 11 and 12: ``atp frames decode`` applies
    the validator a Connection applies: one line, exit 2, and ``--json`` cannot print a
    frame whose ext shadows the header."""
    for argv in (["frames", "decode"], ["frames", "decode", "--json"]):
        rc, out, err = _run(capsys, monkeypatch, argv, data)
        assert rc == 2, out
        assert message in err, err
        assert len(err.strip().splitlines()) == 1
        if "--json" in argv:
            assert out == ""


def test_decode_skips_an_unknown_type_unread(capsys, monkeypatch):
    """[ATP-FRAME-010] Type 0x42 on stream 0 with an ext that is not CBOR is shown, not
    refused: its body is not read."""
    import struct

    data = struct.pack("!BBBBIIHHII", 1, 0x42, 0, 9, 0, 0, 0, 0, 3, 1) + b"\xff\xfe\xfd" + b"z"
    rc, out, err = _run(capsys, monkeypatch, ["frames", "decode", "--raw"], data)
    assert rc == 0, err
    assert "type       unknown (0x42)" in out
