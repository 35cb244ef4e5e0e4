"""Issue 9, items 3, 5, 7, 10, 13 and 16, against ``atp serve`` run as a real process
over real loopback sockets, with clients written from the spec (frames built by hand,
no :class:`~atp_proto.frames.Connection` on the client side):

* a lazy-credit client that returns credit only when half its window is consumed
  (ATP-FLOW-012, the laziest the spec allows) gets every answer at any window size;
* oversized WebSocket messages get ERROR ETOOBIG before any close;
* SIGTERM closes a session with no open stream at once;
* coalesced output never exceeds the client's message limit;
* SYNs pipelined before the router's CAPABILITIES, and FIN / DATA after the SYN.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cbor2
import pytest
import trio
import trio_websocket
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.sync.client import connect as ws_connect

from ._helpers_e2e import (
    F_CONT,
    F_FIN,
    F_SYN,
    META,
    Q_GOLD,
    T_CAPABILITIES,
    T_DATA,
    T_ERROR,
    T_WINDOW_UPDATE,
    RawFrame,
    RouterProcess,
    build_frame,
    parse_frames,
    router_process,
)

ECHO = "echo=builtin:echo?chunks=4"


@contextmanager
def serve(*extra: str, adapter: str = ECHO) -> Iterator[RouterProcess]:
    args = ("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--adapter", adapter)
    with router_process(*args, *extra) as r:
        yield r


def caps(**limits: int) -> bytes:
    return build_frame(T_CAPABILITIES, 0, 0, ext={"caps": {"versions": [1], **limits}})


def syn(sid: int, prompt: str, *, flags: int = 0, adapters: tuple[str, ...] = ("echo",)) -> bytes:
    return build_frame(
        T_DATA,
        F_SYN | flags,
        sid,
        1,
        qos=Q_GOLD,
        ttl=30,
        ext={"meta": dict(META, adapters=list(adapters))},
        payload={"type": "agent.task", "content": {"prompt": prompt}},
    )


def window_update(sid: int, credit: int) -> bytes:
    return build_frame(T_WINDOW_UPDATE, 0, sid, ext={"credit": credit})


class LazyClient:
    """A receiver that obeys ATP-FLOW-001/002/012 and nothing more: it checks every DATA
    frame against the credit it granted, and returns credit only once the bytes consumed
    and not yet returned reach ⌈W/2⌉ (the latest ATP-FLOW-012 allows)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, window: int) -> None:
        self.ws = ws
        self.window = window
        self.credit: dict[int, int] = {}
        self.unreturned: dict[int, int] = {}
        self.frames: list[RawFrame] = []
        self.message_sizes: list[int] = []

    def open(self, sid: int) -> None:
        self.credit[sid] = self.window
        self.unreturned[sid] = 0

    async def run_until_done(self, sids: set[int], timeout: float = 15) -> list[RawFrame]:
        pending = set(sids)
        with trio.fail_after(timeout):
            while pending:
                msg = await self.ws.get_message()
                assert isinstance(msg, bytes), msg[:200]
                self.message_sizes.append(len(msg))
                updates = b""
                for f in parse_frames(msg):
                    self.frames.append(f)
                    if f.type == T_ERROR or (f.type == T_DATA and f.has(F_FIN)):
                        pending.discard(f.stream_id)
                    if f.type != T_DATA or f.stream_id == 0:
                        continue
                    sid = f.stream_id
                    assert f.size <= self.credit[sid], (f, self.credit[sid])  # ATP-FLOW-001
                    self.credit[sid] -= f.size
                    self.unreturned[sid] += f.size  # consumed at once
                    if self.unreturned[sid] >= math.ceil(self.window / 2) and not f.has(F_FIN):
                        updates += window_update(sid, self.unreturned[sid])
                        self.credit[sid] += self.unreturned[sid]
                        self.unreturned[sid] = 0
                if updates:
                    await self.ws.send_message(updates)
        return self.frames


def answer(frames: list[RawFrame], sid: int) -> dict[str, Any]:
    """The FINAL of ``sid``, reassembled from its fragments (ATP-SEQ-012)."""
    parts: list[bytes] = []
    for f in frames:
        if f.stream_id != sid or f.type != T_DATA:
            continue
        if f.type == T_ERROR:
            raise AssertionError(f.ext)
        parts.append(f.payload)
        if not f.has(F_CONT):
            if f.has(F_FIN):
                body = cbor2.loads(b"".join(parts))
                assert isinstance(body, dict)
                return body
            parts = []
    errors = [f.ext for f in frames if f.type == T_ERROR]
    raise AssertionError(f"no FINAL on stream {sid}; errors {errors}")


# ----------------------------------------------------------------- item 3: credit


@pytest.mark.parametrize(
    ("window", "a"), [(256, 12), (1024, 280), (1500, 400), (4096, 1000), (65536, 5000)]
)
async def test_lazy_credit_client_gets_every_answer(window: int, a: int) -> None:
    """[ATP-FLOW-012, ATP-FLOW-013, ATP-SEQ-008] A client returning credit only at half
    its window (W = 256 … 65,536). The answer comes in 8 PARTIALs: the first of ``a``
    ASCII bytes (a frame under W/2: no credit comes back for it), the others of ``a``
    4-byte characters (a frame larger than the credit left, which is still above W/2).
    The router cuts that frame to the credit left, so the stream completes; it used to
    wait for credit the client never had to return (W = 256, 1,024, 1,500)."""
    prompt = "a" * a + "\U0001f600" * (7 * a)
    ECHO8 = "echo=builtin:echo?chunks=8"
    with serve(adapter=ECHO8) as r:
        async with trio_websocket.open_websocket_url(r.ws_url, max_message_size=1 << 22) as ws:
            client = LazyClient(ws, window)
            client.open(1)
            await ws.send_message(caps(initial_window=window) + syn(1, prompt))
            frames = await client.run_until_done({1})
    body = answer(frames, 1)
    assert body["type"] == "agent.result.final"
    assert prompt in body["content"]["answer"]
    data = [f for f in frames if f.stream_id == 1 and f.type == T_DATA]
    assert all(f.size <= window for f in data)


# ------------------------------------------------------ item 5: oversized messages


async def _first_error_then_close(ws: trio_websocket.WebSocketConnection) -> tuple[Any, int]:
    errors: list[RawFrame | dict[str, Any]] = []
    with trio.fail_after(10):
        try:
            while True:
                msg = await ws.get_message()
                if isinstance(msg, str):
                    import json

                    errors.append(json.loads(msg))
                else:
                    errors.extend(f for f in parse_frames(msg) if f.type == T_ERROR)
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            return errors, exc.reason.code
    raise AssertionError("unreachable")


async def test_huge_syn_on_a_stream_is_a_stream_error_etoobig() -> None:
    """[ATP-WS-012, ATP-LIMIT-001] An 8 MiB SYN on stream 1 (one binary message, over the
    1 MiB + 64 KiB message limit): ERROR ETOOBIG on stream 1, its body skipped unbuffered,
    and the session goes on: a SYN on stream 3 is answered (it used to close with 1009
    and no ERROR)."""
    with serve() as r:
        async with trio_websocket.open_websocket_url(r.ws_url, max_message_size=1 << 22) as ws:
            await ws.send_message(syn(1, "z" * (8 << 20)))
            await ws.send_message(syn(3, "after the big one"))
            frames: list[RawFrame] = []
            with trio.fail_after(15):
                while not any(f.stream_id == 3 and f.has(F_FIN) for f in frames):
                    msg = await ws.get_message()
                    assert isinstance(msg, bytes)
                    frames.extend(parse_frames(msg))
    err = [f for f in frames if f.type == T_ERROR]
    assert [(f.stream_id, f.ext["error"]["code"]) for f in err] == [(1, "ETOOBIG")]
    assert "after the big one" in answer(frames, 3)["content"]["answer"]


async def test_huge_fragmented_message_gets_etoobig_then_1009() -> None:
    """[ATP-WS-012, ATP-ERR-002] 3 MiB of binary WebSocket fragments that together pass
    the limit, whose first frame is within max_frame_size: ERROR ETOOBIG on stream 0 as
    soon as the limit is passed, then close 1009 (it used to be 1009 alone)."""
    frames = b"".join(
        build_frame(T_DATA, F_CONT, 1, 1, frag_seq=i, raw_payload=b"q" * 60_000) for i in range(53)
    )
    assert len(frames) > 3 << 20
    step = 256 << 10
    parts = [frames[i : i + step] for i in range(0, len(frames), step)]

    def run(url: str) -> tuple[list[RawFrame], int | None]:
        got: list[RawFrame] = []
        with ws_connect(url, max_size=None) as ws:
            # the router answers once the limit is passed: the send may fail midway
            with contextlib.suppress(WsClosed):
                ws.send(iter(parts))
            try:
                while True:
                    msg = ws.recv(timeout=10)
                    assert isinstance(msg, bytes)
                    got.extend(f for f in parse_frames(msg) if f.type == T_ERROR)
            except WsClosed as exc:
                return got, exc.rcvd.code if exc.rcvd else None

    with serve() as r:
        errors, code = await trio.to_thread.run_sync(run, r.ws_url)
    assert code == 1009
    assert [(e.stream_id, e.ext["error"]["code"]) for e in errors] == [(0, "ETOOBIG")]


async def test_huge_json_text_gets_etoobig_then_1009() -> None:
    """[ATP-WS-012, ATP-JSON] 2 MiB of JSON text: ERROR ETOOBIG on stream 0, as text (the
    encoding of the last message received, ATP-WS-004), then close 1009."""
    import json

    text = json.dumps(
        {
            "v": 1,
            "type": "DATA",
            "flags": ["SYN"],
            "stream_id": "s1",
            "msg_seq": 1,
            "payload": {"type": "agent.task", "content": {"prompt": "p" * (2 << 20)}},
        }
    )
    with serve() as r:
        async with trio_websocket.open_websocket_url(r.ws_url) as ws:
            await ws.send_message(text)
            errors, code = await _first_error_then_close(ws)
    assert code == 1009
    assert len(errors) == 1 and isinstance(errors[0], dict), errors
    assert errors[0]["type"] == "ERROR" and errors[0]["error"]["code"] == "ETOOBIG"


# ------------------------------------------------------------------ item 7: drain


async def test_sigterm_closes_an_idle_session_at_once() -> None:
    """[ATP-SESS-013] SIGTERM while one session has a slow stream and another has none:
    the idle session gets EDRAINING and is closed with 1001 at once (it used to wait for
    the other session's stream, or the grace period); the busy one still finishes."""
    adapter = "slow=builtin:persona?latency_ms=400&chunks=8"
    with serve("--grace", "10", adapter=adapter) as r:
        async with (
            trio_websocket.open_websocket_url(r.ws_url) as busy,
            trio_websocket.open_websocket_url(r.ws_url) as idle,
        ):
            await idle.send_message(caps())
            await idle.get_message()  # the router's CAPABILITIES: the session is up
            await busy.send_message(syn(1, "slow one", adapters=("slow",)))
            first = parse_frames(await busy.get_message())
            assert first and first[0].stream_id == 1
            r.terminate()
            start = time.monotonic()
            errors, code = await _first_error_then_close(idle)
            idle_closed = time.monotonic() - start
            frames: list[RawFrame] = list(first)
            with trio.fail_after(10):
                while not any(f.stream_id == 1 and f.has(F_FIN) for f in frames):
                    frames.extend(parse_frames(await busy.get_message()))
            busy_done = time.monotonic() - start
        await trio.to_thread.run_sync(lambda: r.proc.wait(timeout=10))
    assert code == 1001
    assert {e.ext["error"]["code"] for e in errors} == {"EDRAINING"}
    assert idle_closed < 1.0, idle_closed
    assert busy_done > 1.0  # the busy stream really outlived the idle session
    assert answer(frames, 1)["content"]["ok"]


# ------------------------------------------------------------- item 10: coalescing


async def test_credit_burst_stays_within_the_clients_message_limit() -> None:
    """[ATP-WS-011, ATP-WS-005] 60 streams blocked on a 4 KiB window, then credit for all
    of them in one message: the router coalesces what becomes ready, but never into a
    message over the client's max_frame_size + 64 KiB (it used to send one ~1.8 MB
    message, which the client refused with 1009)."""
    limit = 1024 + 65536  # the client advertises max_frame_size 1024
    n = 60
    with serve() as r:
        async with trio_websocket.open_websocket_url(r.ws_url, max_message_size=limit) as ws:
            await ws.send_message(caps(initial_window=4096, max_frame_size=1024))
            for i in range(n):
                await ws.send_message(syn(2 * i + 1, "w" * 30_000))
            frames: list[RawFrame] = []
            sizes: list[int] = []
            blocked = {2 * i + 1 for i in range(n)}
            with trio.fail_after(20):
                # each stream stops once its 4 KiB credit is spent
                while blocked:
                    msg = await ws.get_message()
                    sizes.append(len(msg))
                    frames.extend(parse_frames(msg))
                    spent = {
                        sid: sum(f.size for f in frames if f.stream_id == sid and f.type == T_DATA)
                        for sid in blocked
                    }
                    blocked = {sid for sid, s in spent.items() if 4096 - s >= 1100}
                await trio.sleep(0.3)  # the rest of what fits is out
                await ws.send_message(b"".join(window_update(2 * i + 1, 1 << 20) for i in range(n)))
                done: set[int] = set()
                while len(done) < n:
                    msg = await ws.get_message()
                    sizes.append(len(msg))
                    for f in parse_frames(msg):
                        frames.append(f)
                        if f.has(F_FIN) or f.type == T_ERROR:
                            done.add(f.stream_id)
    assert max(sizes) <= limit
    assert not [f for f in frames if f.type == T_ERROR]
    for i in range(n):
        assert "w" * 30_000 in answer(frames, 2 * i + 1)["content"]["answer"]


# ------------------------------------------------- items 13 and 16: spec gaps


async def test_pipelined_large_syn_with_a_large_router_window() -> None:
    """[ATP-SESS-014, ATP-SESS-015, ATP-SESS-016] A client sends CAPABILITIES and, in
    the same message, a 1.5 MiB SYN in fragments, before the router's CAPABILITIES
    (initial_window 4 MiB) can arrive: it uses the default 262,144 as its credit. The
    router returns credit at half the *default* window, so the SYN completes (it used to
    wait for 2 MiB consumed, more than the client could send)."""
    cfg_window = 4 << 20
    prompt = "k" * (1536 << 10)
    body = cbor2.dumps({"type": "agent.task", "content": {"prompt": prompt}})
    ext = {"meta": dict(META, adapters=["echo"])}
    frag = 60_000
    chunks = [body[i : i + frag] for i in range(0, len(body), frag)]
    frames = []
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        flags = (F_SYN if i == 0 else 0) | (0 if last else F_CONT)
        frames.append(
            build_frame(
                T_DATA,
                flags,
                1,
                1,
                frag_seq=i,
                qos=Q_GOLD if i == 0 else 0,
                ext=ext if i == 0 else None,
                raw_payload=chunk,
            )
        )
    credit = 262_144
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "router.toml")
        with open(cfg, "w") as fh:
            fh.write(f"[limits]\ninitial_window = {cfg_window}\nmax_message_size = {8 << 20}\n")
        with serve("--config", cfg) as r:
            async with trio_websocket.open_websocket_url(r.ws_url, max_message_size=16 << 20) as ws:
                client = LazyClient(ws, 262_144)  # the default: no initial_window in caps()
                client.open(1)
                await ws.send_message(caps())
                queue = list(frames)
                got: list[RawFrame] = []
                with trio.fail_after(15):
                    while queue:
                        while queue and len(queue[0]) <= credit:
                            credit -= len(queue[0])
                            await ws.send_message(queue.pop(0))
                        if not queue:
                            break
                        for f in parse_frames(await ws.get_message()):
                            got.append(f)
                            if f.type == T_WINDOW_UPDATE and f.stream_id == 1:
                                credit += f.ext["credit"]
                            assert f.type != T_ERROR, f.ext
                got += await client.run_until_done({1}, timeout=15)
    assert prompt in answer(got, 1)["content"]["answer"]


async def test_router_answers_without_the_clients_fin_and_ignores_later_data() -> None:
    """[ATP-STREAM-014, ATP-STREAM-015] The router sends the FINAL without waiting for the
    client's FIN; a client DATA message after the SYN (here 140,000 bytes, then a FIN)
    is consumed, its credit returned, and changes nothing: no ERROR, one FINAL each."""
    adapter = "slow=builtin:persona?latency_ms=150&chunks=3"
    with serve(adapter=adapter) as r:
        async with trio_websocket.open_websocket_url(r.ws_url) as ws:
            await ws.send_message(caps(initial_window=65536) + syn(1, "no fin", adapters=("slow",)))
            # a first stream: never half-closed, answered anyway
            frames: list[RawFrame] = []
            with trio.fail_after(10):
                while not any(f.stream_id == 1 and f.has(F_FIN) for f in frames):
                    frames.extend(parse_frames(await ws.get_message()))
            assert answer(frames, 1)["content"]["ok"]
            # a second stream: extra DATA and a FIN after the SYN
            extra = build_frame(T_DATA, 0, 3, 2, raw_payload=b"e" * 140_000)
            fin = build_frame(T_DATA, F_FIN, 3, 3)
            await ws.send_message(syn(3, "with extra", adapters=("slow",)) + extra)
            await ws.send_message(fin)
            with trio.fail_after(10):
                while not any(f.stream_id == 3 and f.has(F_FIN) for f in frames):
                    frames.extend(parse_frames(await ws.get_message()))
    assert not [f for f in frames if f.type == T_ERROR]
    assert [f.stream_id for f in frames if f.has(F_FIN)] == [1, 3]
    # consumed: more than half the default window came back as credit (ATP-FLOW-012)
    returned = sum(
        f.ext["credit"] for f in frames if f.type == T_WINDOW_UPDATE and f.stream_id == 3
    )
    assert returned >= 140_000


async def test_client_library_pipelines_a_large_syn() -> None:
    """[ATP-SESS-014, ATP-SESS-015, ATP-SESS-016] The client library sends CAPABILITIES
    and its SYN without waiting for the router's answer; a 600 KB prompt (more than the
    default window) to a router whose initial_window is 4 MiB completes, its credit
    coming back at half the default window."""
    import os
    import tempfile

    from atp_proto.client import connect

    prompt = "m" * 600_000
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "router.toml")
        with open(cfg, "w") as fh:
            fh.write(f"[limits]\ninitial_window = {4 << 20}\n")
        with serve("--config", cfg) as r:
            async with connect(r.ws_url) as client:
                with trio.fail_after(15):
                    final = await client.ask(prompt, meta={"adapters": ["echo"]})
    assert prompt in final.content["answer"]


def test_router_refuses_an_initial_window_below_the_default() -> None:
    """[ATP-SESS-016] ``atp serve`` with limits.initial_window below 262,144: a one-line
    configuration error, exit 2."""
    import os
    import tempfile

    from ._helpers_e2e import atp

    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "router.toml")
        with open(cfg, "w") as fh:
            fh.write("[limits]\ninitial_window = 65536\n")
        res = atp("serve", "--no-auth", "--ws", "127.0.0.1:0", "--config", cfg, timeout=30)
    assert res.returncode == 2, res.stderr
    assert "initial_window must be at least 262144" in res.stderr
    assert "Traceback" not in res.stderr


async def test_final_ext_too_large_for_a_tiny_window_is_etoobig() -> None:
    """[ATP-FLOW-014] A client window of 150 bytes leaves room for an ext of at most
    51 bytes in a first fragment; the FINAL's telemetry is larger: the stream ends with
    ERROR ETOOBIG naming the window, instead of waiting forever (or EINTERNAL)."""
    with serve() as r:
        async with trio_websocket.open_websocket_url(r.ws_url) as ws:
            client = LazyClient(ws, 150)
            client.open(1)
            await ws.send_message(caps(initial_window=150) + syn(1, "tiny"))
            frames = await client.run_until_done({1})
    (err,) = [f for f in frames if f.type == T_ERROR]
    assert err.stream_id == 1 and err.ext["error"]["code"] == "ETOOBIG"
    assert "initial_window" in err.ext["error"]["message"]
