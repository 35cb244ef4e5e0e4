"""What ``atp send`` prints for a person (session 9, a new user's walk): the router's notices
are said as what they are, and an empty prompt is bad usage said before connecting.

- With the README's own policy example (a routing table that escalates from a cheap to a
  strong adapter), ``atp send`` printed the escalation notice as
  ``PARTIAL [] {"escalate": {...}}``: an empty adapter and raw JSON. It now prints
  ``PARTIAL escalate cheap -> strong (confidence 0.1)``, as ``atp demo`` does.
- ``atp send --prompt ''`` went to the router and came back EPROTO, exit 1: bad usage, exit 2.
- Under a router's window (a tenant window, a quota's remainder) the client never sent,
  EBUDGET said "no adapter fits the budget window" without saying which: it names it now.

``atp send`` runs in-process (``atp_proto.cli.main``) against a real router on a loopback
port, served by trio in a thread with the built-in reference adapters.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.cli import main
from atp_proto.router.config import RouterConfig
from atp_proto.router.server import Router

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def router_thread(adapters: dict[str, str], **fields: Any) -> Iterator[str]:
    """A real router (no auth, no metrics) on a loopback port, run by trio in a thread;
    yields its ws:// URL and stops it on exit."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def run() -> None:
        cfg = RouterConfig(ws_port=0, metrics_port=None, auth=False, adapters=adapters, **fields)
        router = Router(cfg.validate())
        async with trio.open_nursery() as nursery:
            state["scope"], state["token"] = (
                nursery.cancel_scope,
                trio.lowlevel.current_trio_token(),
            )
            await nursery.start(router.serve)
            state["url"] = f"ws://127.0.0.1:{router.ws_port}/ws"
            ready.set()

    def target() -> None:
        try:
            trio.run(run)
        finally:
            ready.set()  # a router that failed to start does not leave the test waiting

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(30) and "url" in state, "the router did not start"
    try:
        yield state["url"]
    finally:
        trio.from_thread.run_sync(state["scope"].cancel, trio_token=state["token"])
        thread.join(10)


@pytest.fixture(scope="module")
def cascade_url() -> Iterator[str]:
    """The README's routing example: cheap (echo) first, escalating below confidence 0.5."""
    adapters = {"cheap": "builtin:echo", "strong": "builtin:persona?latency_ms=0"}
    with router_thread(adapters, routing_table=str(ROOT / "examples/policy/routing.toml")) as url:
        yield url


def _send(url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["send", url, "--prompt", "what is 2+2", "--timeout", "20", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_an_escalation_is_printed_as_one(
    cascade_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # task type qa: consensus escalates from echo (confidence 0.1) to the more confident
    # persona; the escalation notice is a PARTIAL of its own
    lines = _send(cascade_url, capsys)
    assert lines[1] == "PARTIAL escalate cheap -> strong (confidence 0.1)", lines
    assert not [ln for ln in lines if ln.startswith("PARTIAL [] ")], lines
    assert lines[0].startswith("PARTIAL [cheap] what is 2+2")
    assert lines[-2].startswith("FINAL  ") and lines[-1].strip().endswith("adapters=cheap,strong")
    # --json keeps the notice as it came
    objs = [json.loads(ln) for ln in _send(cascade_url, capsys, "--json")]
    (notice,) = [o for o in objs if o["kind"] == "partial" and "escalate" in o["content"]]
    assert notice["content"]["escalate"]["to"] == "strong"


def test_a_cascade_escalation_says_why(
    cascade_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # task type chat: a cascade, whose notice carries the reason
    lines = _send(cascade_url, capsys, "--task-type", "chat")
    assert "PARTIAL escalate cheap -> strong (confidence 0.1 < 0.5)" in lines, lines


def test_the_other_notices() -> None:
    from atp_proto._cli.send import partial_line

    # a failover before any answer has no champion to name (routing/execute.py)
    assert partial_line({"failover": {"from": "", "to": "strong"}}, 0.0) == (
        "PARTIAL failover to strong"
    )
    hedge = {"hedge": {"from": "cheap", "to": "strong", "after_ms": 7}}
    assert partial_line(hedge, 0.0) == "PARTIAL hedge cheap -> strong after 7 ms"
    assert partial_line({"other": 1}, 0.5) == 'PARTIAL {"other": 1}  (confidence 0.5)'


def test_an_empty_prompt_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    # said before connecting: no router listens at this URL, and the error is not ECONNECT
    assert main(["send", "ws://127.0.0.1:9/ws", "--prompt", ""]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["atp send: error: --prompt must not be empty"]


def test_a_window_too_small_names_the_window_in_effect(capsys: pytest.CaptureFixture[str]) -> None:
    # a tenant window (as a quota's remainder) of 30 tokens, which the client never sent:
    # "no adapter fits the budget window" alone left it wondering which window
    from atp_proto.frames import BudgetWindow

    adapters = {"persona": "builtin:persona?latency_ms=0"}
    with router_thread(adapters, tenant_window=BudgetWindow(max_tokens=30)) as url:
        assert main(["send", url, "--prompt", "hello there", "--timeout", "20"]) == 1
        capped = capsys.readouterr().err
        assert main(["send", url, "--prompt", "hello there", "--max-tokens", "20"]) == 1
        own = capsys.readouterr().err
    assert capped.startswith(
        "atp send: error: EBUDGET: no adapter fits the budget window "
        "(max_tokens 30, capped by the router): cheapest (persona) needs about "
    ), capped
    assert "(max_tokens 20): cheapest (persona)" in own and "capped" not in own, own
