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
    assert err.startswith("atp frames: error: ")


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
