"""atp_proto.testing: the raw frame codec agrees with the real one, RouterProcess and
serve_adapter start real processes, report failures with the log, and stop them."""

from __future__ import annotations

import signal
import sys

import pytest
import trio

from atp_proto.frames import decode_frames, encode_frame
from atp_proto.testing import RouterProcess, http_get, parse_frames, serve_adapter, syn_frame
from atp_proto.testing.frames import F_SYN, HEADER, Q_GOLD, T_DATA, build_frame


def test_the_raw_syn_decodes_with_the_real_codec_and_back() -> None:
    raw = syn_frame(3, "hi", ["echo"], ttl=5)
    (frame,) = decode_frames(raw)
    assert (frame.type, frame.flags, frame.stream_id, frame.msg_seq) == (T_DATA, F_SYN, 3, 1)
    assert (frame.qos, frame.ttl) == (Q_GOLD, 5)
    assert frame.ext["meta"]["adapters"] == ["echo"]
    (back,) = parse_frames(encode_frame(frame))
    assert back.body() == {"type": "agent.task", "content": {"prompt": "hi"}}
    assert back.size == len(raw) and back.has(F_SYN)


def test_parse_frames_refuses_truncated_input() -> None:
    frame = build_frame(T_DATA, 0, 1, 1, payload={"x": 1})
    with pytest.raises(ValueError, match="truncated header"):
        parse_frames(frame[: HEADER.size - 1])
    with pytest.raises(ValueError, match="truncated body"):
        parse_frames(frame[:-1])


async def test_router_process_listens_answers_and_stops_on_sigterm() -> None:
    with RouterProcess("--no-auth", adapters={"echo": "builtin:echo"}) as router:
        assert router.url.startswith("ws://127.0.0.1:") and router.ws_port > 0
        assert router.metrics_port
        status, body = await http_get(router.metrics_port, "/healthz")
        assert status == 200, body
        assert "router listening" in router.log()
    assert router.proc.returncode == 0  # SIGTERM: a graceful exit, not a kill
    assert router.proc.returncode != -signal.SIGKILL


def test_router_process_that_exits_raises_with_its_log() -> None:
    with pytest.raises(RuntimeError, match="exited") as err:
        RouterProcess("--no-such-flag")
    assert "no-such-flag" in str(err.value)


async def test_serve_adapter_yields_a_listening_process(tmp_path) -> None:
    log = tmp_path / "adapter.log"
    async with serve_adapter("echo", log=log) as proc:
        assert proc.url == f"grpc://127.0.0.1:{proc.port}"
        stream = await trio.open_tcp_stream("127.0.0.1", proc.port)
        await stream.aclose()
    assert proc.process.returncode is not None


async def test_a_process_that_exits_before_listening_raises() -> None:
    from atp_proto.testing import spawn

    with pytest.raises(RuntimeError, match="exited before listening"):
        async with spawn([sys.executable, "-c", "print('bye')"]):
            pass  # pragma: no cover
