"""The scripted adapter behind a real router process (``atp serve --adapter
conf=grpc://HOST:PORT``, as the router role runs it): the behaviours chosen by the prompt
reach the router on the wire, and the adapter's events show what the router did
(ATP-ADAPT-004, -009, -011, -012, -014)."""

from __future__ import annotations

import json
import sys

import pytest
import trio

from atp_proto.client import StreamError, connect
from atp_proto.testing.processes import RouterProcess, clean_env
from conformance.scripted_adapter import ScriptedAdapter

#: the scripted adapter's retry hint: the next ask comes well within it, even on a loaded host
HINT_MS = 3000


async def _send(url: str, prompt: str, *args: str) -> list[dict[str, object]]:
    argv = [sys.executable, "-m", "atp_proto", "send", url, "--prompt", prompt, "--json", *args]
    done = await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, check=False, env=clean_env()
    )
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


async def test_a_real_router_meets_the_scripted_behaviours() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0):
        url = f"grpc://127.0.0.1:{sa.port}"
        router = RouterProcess("--no-auth", adapters={"conf": url}, env=clean_env())
        await trio.to_thread.run_sync(router.__enter__)
        try:
            ok = await _send(router.url, "conformance:e2e-ok:ok")
            died = await _send(router.url, "conformance:e2e-die:die_mid_stream")
            busy = await _send(
                router.url, f"conformance:e2e-busy:status:RESOURCE_EXHAUSTED:{HINT_MS}"
            )
            hinted_until = trio.current_time() + HINT_MS / 1000  # or sooner: it began before
            # within the retry hint the router leaves the adapter alone (ATP-ADAPT-014); asked
            # from this process: a new `atp send` can take seconds to start on a loaded host
            async with connect(router.url) as client:
                with pytest.raises(StreamError) as held:
                    await client.ask("conformance:e2e-held:ok")
            await trio.sleep_until(hinted_until + 0.2)  # the hint is over: the adapter again
            stalled = await _send(router.url, "conformance:e2e-stall:stall", "--ttl", "1")
            stall_cancelled = await sa.wait_event("e2e-stall", "cancelled", 5.0)
        finally:
            await trio.to_thread.run_sync(router.stop)
    assert ok[-1]["kind"] == "final", ok
    assert ok[-1]["content"]["answer"] == "part1 part2 part3 part4 "  # type: ignore[index]
    assert "EAGENTDOWN" in json.dumps(died[-1]), died
    assert "EWINDOW_AGENT" in json.dumps(busy[-1]), busy
    assert held.value.code == "EWINDOW_AGENT" and sa.events("e2e-held") == [], held.value
    assert "ETIMEOUT" in json.dumps(stalled[-1]), stalled
    # the router cancelled the stalled call when the stream's ttl ended it (ATP-ADAPT-009)
    assert stall_cancelled, sa.events("e2e-stall")
    stall = {e["event"]: e for e in sa.events("e2e-stall")}
    assert list(stall) == ["estimate", "finished", "stream_start", "cancelled"]
    # the call was bounded, and its gRPC deadline is later than the ttl (ATP-ADAPT-012)
    assert stall["stream_start"]["deadline_ms"] > 1000
    assert 0.9 < stall["cancelled"]["at"] - stall["stream_start"]["at"] < 5
