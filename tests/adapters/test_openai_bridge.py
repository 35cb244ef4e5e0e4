"""The `openai` reference adapter against a local OpenAI-compatible HTTP server (a tiny
http.server in a thread), served by a real `atp adapter serve openai` process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio
from conftest import serve_adapter

from atp_proto.adapters import AdapterError, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.openai_bridge import OpenAIBridge
from atp_proto.frames import ErrorCode

SECRET = "sk-test-SECRET-0123456789"


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        prompt = body["messages"][0]["content"]
        if prompt in ("429", "401"):
            self.send_response(int(prompt))
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "2")
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"message": f"nope {prompt}"}}).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ["Hello", " there", ", friend"]:
            event = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
        self.wfile.write(b": a comment line\n\n")
        usage = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 4}}
        self.wfile.write(f"data: {json.dumps(usage)}\r\n\r\ndata: [DONE]\n\n".encode())


@pytest.fixture
def upstream() -> Iterator[str]:
    _Handler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


async def test_openai_bridge_streams_and_maps_errors(tmp_path: Path, upstream: str) -> None:
    env = {"OPENAI_API_KEY": SECRET, "ATP_OPENAI_MODEL": "test-model"}
    with trio.fail_after(30):
        async with serve_adapter(
            tmp_path,
            "openai",
            "--option",
            f"base_url={upstream}",
            "--option",
            "usd_per_1k_out=1000",
            "--log-level",
            "debug",
            env=env,
        ) as proc:
            async with GrpcAdapter.from_url("oa", proc.url) as a:
                chunks = [
                    c async for c in a.stream(TaskRequest("chat", "Say hello", max_tokens=20))
                ]
                assert "".join(c.content for c in chunks) == "Hello there, friend"
                assert chunks[-1].final and chunks[-1].finish_reason == "stop"
                assert chunks[-1].tokens == 15 and chunks[-1].usd_micros == 4  # from usage
                assert [c.final for c in chunks] == [False, False, False, True]
                est = await a.estimate(TaskRequest("chat", "Say hello", max_tokens=20))
                assert est.out_tokens == 20
                with pytest.raises(AdapterError) as ei:
                    async for _ in a.stream(TaskRequest("chat", "429")):
                        pass
                assert ei.value.code == ErrorCode.EWINDOW_AGENT and "nope 429" in ei.value.message
                with pytest.raises(AdapterError) as ei:
                    async for _ in a.stream(TaskRequest("chat", "401")):
                        pass
                assert ei.value.code == ErrorCode.ESEC
        assert SECRET not in proc.log_text()
    seen = _Handler.seen[0]
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == f"Bearer {SECRET}"
    assert seen["body"]["model"] == "test-model" and seen["body"]["stream"] is True
    assert seen["body"]["max_tokens"] == 20


def test_openai_bridge_upstream_down() -> None:
    import asyncio  # the bridge runs in the SDK's asyncio server

    bridge = OpenAIBridge.from_options(
        {"base_url": "http://127.0.0.1:1/v1", "api_key": SECRET}, env={}
    )
    assert SECRET not in repr(bridge)

    async def main() -> None:
        async for _ in bridge.stream(TaskRequest("chat", "x")):
            pass

    with pytest.raises(AdapterError) as ei:
        asyncio.run(asyncio.wait_for(main(), 10))
    assert ei.value.code == ErrorCode.EAGENTDOWN


def test_a_large_task_max_tokens_is_capped_by_the_option(upstream: str) -> None:
    """The router passes the stream's token budget as the task's max_tokens (`atp send
    --max-tokens 50000`): the estimate and the upstream request use the bridge's own cap
    (512 by default), not the whole budget; a smaller task max_tokens still wins."""
    import asyncio

    bridge = OpenAIBridge.from_options({"base_url": upstream}, env={})

    async def main() -> tuple[int, int]:
        big = await bridge.estimate(TaskRequest("chat", "Say hello", max_tokens=50_000))
        small = await bridge.estimate(TaskRequest("chat", "Say hello", max_tokens=20))
        async for _ in bridge.stream(TaskRequest("chat", "Say hello", max_tokens=50_000)):
            pass
        return big.out_tokens, small.out_tokens

    assert asyncio.run(asyncio.wait_for(main(), 10)) == (512, 20)
    assert _Handler.seen[0]["body"]["max_tokens"] == 512


def test_openai_options() -> None:
    with pytest.raises(ValueError, match="unknown"):
        OpenAIBridge.from_options({"bogus": "1"}, env={})
    b = OpenAIBridge.from_options(
        {}, env={"OPENAI_BASE_URL": "http://h:9/x/", "ATP_OPENAI_MODEL": "m"}
    )
    assert (b.base_url, b.model) == ("http://h:9/x", "m")


async def test_openai_bridge_through_the_router(
    nursery: trio.Nursery, tmp_path: Path, upstream: str
) -> None:
    """[ATP-ADAPT-011, ATP-ADAPT-015] Through a router, from a client: the upstream's 429
    with Retry-After 2 becomes EWINDOW_AGENT with retry_after_ms 2000 (the SDK sends the
    hint as a google.rpc.RetryInfo), 401 becomes ESEC without a hint; an answer is three
    PARTIALs with text and a FINAL — no empty PARTIAL for the bridge's usage-only chunk."""
    from atp_proto.client import Partial, StreamError, connect
    from atp_proto.router import Router, RouterConfig

    with trio.fail_after(30):
        async with serve_adapter(
            tmp_path, "openai", "--option", f"base_url={upstream}", env={}
        ) as proc:
            cfg = RouterConfig(ws_port=0, metrics_port=None, auth=False, adapters={"oa": proc.url})
            router = Router(cfg.validate())
            await nursery.start(router.serve)
            async with connect(f"ws://127.0.0.1:{router.ws_port}/ws") as client:
                with pytest.raises(StreamError) as busy:
                    await client.ask("429")
                with pytest.raises(StreamError) as paused:
                    await client.ask("Say hello")  # the router honours the pause (ATP-ADAPT-014)
                await trio.sleep(2.05)
                with pytest.raises(StreamError) as denied:
                    await client.ask("401")
                partials = []
                async with client.stream("Say hello") as st:
                    async for item in st:
                        if isinstance(item, Partial):
                            partials.append(item)
                        else:
                            final = item
    assert busy.value.code == "EWINDOW_AGENT" and busy.value.retry_after_ms == 2000
    assert paused.value.code == "EWINDOW_AGENT" and 0 < (paused.value.retry_after_ms or 0) <= 2000
    assert denied.value.code == "ESEC" and denied.value.retry_after_ms is None
    assert [p.content["text"] for p in partials] == ["Hello", " there", ", friend"]
    assert final.content["answer"] == "Hello there, friend"
    assert final.telemetry["tokens"] == 15  # the usage-only chunk was still charged
