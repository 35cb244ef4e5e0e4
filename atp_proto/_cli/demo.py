"""``atp demo``: router + reference adapters + clients, on loopback, nothing else needed.

It starts the router with JWT auth on (an ephemeral secret), mints a token, and runs the
seed's SYN twice: as a browser would (JSON text frame) and as an SDK would (binary
frames), printing every PARTIAL and the FINAL with its telemetry. Then the routing
brain: a cascade that escalates from a weak adapter, a call in an adapter's latency tail
that is hedged (and the slow call cancelled), each FINAL with its telemetry and savings,
all recorded in a hash-chained decision log that is verified at the end. Then the
refusals the spec requires: a bad token, a budget too small, a wrong sequence number, and
(with ``examples/policy/policy.rego`` from the checkout) a stream denied by policy with
its rule (ATP-SEC-016).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from typing import Any

from atp_proto.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompt", default="hello", help="the prompt to send (default: the seed's 'hello')"
    )
    p.add_argument("--port", type=_port, default=0, help="router port (default: a free one)")
    p.add_argument(
        "--json", action="store_true", help="print a JSON summary instead of the walk-through"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port within 0..65535, got {text!r}")
    return port


def example_policy() -> str | None:
    """``examples/policy/policy.rego`` of the checkout, when there is one (a wheel has no
    examples: the demo then skips its policy step)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "policy" / "policy.rego"
    return str(path) if path.is_file() else None


def run(args: argparse.Namespace) -> int:
    import trio
    import trio_websocket
    from rich.console import Console
    from rich.markup import escape

    from atp_proto.adapters.process import spawn_adapter
    from atp_proto.client import Final, HandshakeRefused, StreamError, connect
    from atp_proto.frames import BudgetWindow, frame_from_json
    from atp_proto.router.audit import NotADecisionLog, segments, verify
    from atp_proto.router.auth import issue_token
    from atp_proto.router.config import RouterConfig
    from atp_proto.router.server import Router

    # piped (| tee, CI logs), rich would wrap every line at 80 columns, mid-sentence
    console = Console(quiet=args.json, width=None if sys.stdout.isatty() else 160)
    secret = secrets.token_hex(32)
    summary: dict[str, Any] = {"ok": False}
    policy = example_policy()

    async def main() -> int:
        os.environ["ATP_JWT_KEY"] = secret
        console.print("starting reference adapters as gRPC services on loopback ...")
        # every 10th call of "tail" waits 3 s before its first chunk: a latency tail
        tail_opts = {"latency_ms": "5", "slow_every": "10", "slow_ms": "3000", "usd_per_1k": "500"}
        with tempfile.TemporaryDirectory(prefix="atp-demo-") as tmp:
            audit_log = os.path.join(tmp, "decisions.jsonl")
            async with (
                spawn_adapter("persona", options={"latency_ms": "60"}) as persona,
                spawn_adapter("echo", options={"latency_ms": "20"}) as echo,
                spawn_adapter("persona", options=tail_opts, name="tail") as tail,
            ):
                cfg = RouterConfig(
                    ws_port=args.port,
                    metrics_port=0,
                    adapters={"echo": echo.url, "persona": persona.url, "tail": tail.url},
                    audit_log=audit_log,
                    policy_file=policy,
                )
                rc = await with_router(Router(cfg), persona.url, echo.url)
            try:
                report = verify(segments(audit_log))
                records, intact = report.records, report.problem is None
            except NotADecisionLog:  # the router wrote no record (it failed early)
                records, intact = 0, False
            summary["audit"] = {"records": records, "ok": intact}
            console.print(
                f"\n[bold]5. decision log[/]: {records} records, hash chain "
                + ("[green]intact[/]" if intact else "[red]BROKEN[/]")
                + " (what 'atp serve --audit-log FILE' writes and 'atp audit verify' checks)"
            )
            ok = rc == 0 and intact
            console.rule("[bold green]demo complete" if ok else "[bold red]demo failed")
            return 0 if ok else 1

    def show_final(item: Final, key: str) -> None:
        t = item.telemetry
        console.print(
            f"   [green]FINAL[/] from {item.content.get('adapter')}: "
            f"{escape(str(t.get('why', '')))}"
        )
        console.print(
            f"         telemetry tokens={t['tokens']} usd_micros={t['usd_micros']} "
            f"latency_ms={t['latency_ms']} tried="
            + escape(str([(x["adapter"], x["status"]) for x in t.get("tried", [])]))
        )
        if "savings_usd_micros" in t:
            console.print(
                f"         savings vs always {t['strongest']}: "
                f"{t['savings_usd_micros']} usd_micros ({t.get('savings_pct', 0)} %), "
                f"decision_id={t.get('decision_id')}"
            )
        summary[key] = {"content": item.content, "telemetry": dict(t)}

    async def routing_steps(client: Any) -> None:
        console.print(
            "\n[bold]3. routing[/]: a cheap-first cascade that escalates "
            "(meta.strategy=cascade, min_confidence 0.5)"
        )
        meta = {"strategy": "cascade", "min_confidence": 0.5, "adapters": ["echo", "persona"]}
        async with client.stream(args.prompt, meta=meta) as stream:
            async for item in stream:
                if isinstance(item, Final):
                    show_final(item, "escalated_final")
                elif "escalate" in item.content:
                    e = item.content["escalate"]
                    console.print(
                        f"   PARTIAL escalate {e['from']} -> {e['to']} ({escape(e['reason'])})"
                    )
        console.print(
            "   a hedged request (meta.hedge): 9 quick calls of 'tail' teach the router its "
            "p95 to first chunk; its 10th call is in the tail ..."
        )
        for i in range(9):  # every call is sampled; these may not hedge
            await client.ask(f"{args.prompt} {i}", meta={"adapters": ["tail", "persona"]})
        meta = {"hedge": True, "adapters": ["tail", "persona"]}
        async with client.stream(args.prompt, meta=meta) as stream:
            async for item in stream:
                if isinstance(item, Final):
                    show_final(item, "hedged_final")
                elif "hedge" in item.content:
                    h = item.content["hedge"]
                    console.print(
                        f"   PARTIAL hedge {h['from']} -> {h['to']} after {h['after_ms']} ms"
                    )
        console.print("   a cascade where the cheap adapter is good enough (tail, 0.62 >= 0.5):")
        meta = {"strategy": "cascade", "min_confidence": 0.5, "adapters": ["tail", "persona"]}
        show_final(await client.ask(args.prompt, meta=meta), "saving_final")

    async def with_router(router: Router, persona_url: str, echo_url: str) -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(router.serve)
            url = f"ws://127.0.0.1:{router.ws_port}/ws"
            token = issue_token(secret.encode(), tenant="demo", max_qos="gold")
            console.rule("[bold]ATP demo")
            console.print(
                f"router   {url}  (JWT auth on; metrics http://127.0.0.1:{router.metrics_port}/metrics)"
            )
            console.print(
                f"adapters persona {persona_url} (60 ms/chunk), echo {echo_url} (20 ms/chunk)\n"
            )

            # 1. As a browser: the seed's SYN as a JSON text frame.
            seed_syn = {
                "v": 1,
                "session_id": "s1",
                "stream_id": "st1",
                "msg_seq": 1,
                "frag_seq": 0,
                "flags": ["SYN"],
                "qos": "gold",
                "ttl": 8,
                "window": {"max_parallel": 4, "max_tokens": 50000, "max_usd_micros": 1000000},
                "meta": {
                    "task_type": "qa",
                    "tool_permissions": [],
                    "data_scope": ["no_secrets"],
                    "adapters": ["persona"],
                },
                "payload": {"type": "agent.result.partial", "content": {"prompt": args.prompt}},
            }
            assert frame_from_json(json.dumps(seed_syn)) is not None
            console.print(
                "[bold]1. browser-style client[/]: JSON text frames over ws://, "
                "token in ?access_token="
            )
            console.print(f"   -> {json.dumps(seed_syn)}", style="dim")
            async with trio_websocket.open_websocket_url(f"{url}?access_token={token}") as ws:
                await ws.send_message(json.dumps(seed_syn))
                while True:
                    reply = json.loads(await ws.get_message())
                    console.print(
                        f"   <- {json.dumps(reply)}",
                        style="green" if "FIN" in reply.get("flags", []) else None,
                    )
                    if "FIN" in reply.get("flags", []) or reply.get("type") == "ERROR":
                        summary["browser_final"] = reply
                        break

            # 2. As an SDK: binary frames, fan-out to two adapters.
            console.print(
                "\n[bold]2. SDK client[/]: binary frames, fan-out to both adapters, consensus"
            )
            async with connect(url, token=token) as client:
                async with client.stream(
                    args.prompt,
                    qos="gold",
                    ttl=8,
                    window=BudgetWindow(
                        max_parallel=4, max_tokens=50_000, max_usd_micros=1_000_000
                    ),
                    meta={"fanout": 2, "adapters": ["echo", "persona"]},
                ) as stream:
                    async for item in stream:
                        if isinstance(item, Final):
                            t = item.telemetry
                            console.print(
                                f"   [green]FINAL[/] {escape(repr(item.content.get('answer')))}"
                                f" from {item.content.get('adapter')}"
                            )
                            console.print(
                                f"         telemetry tokens={t['tokens']} "
                                f"usd_micros={t['usd_micros']} "
                                f"latency_ms={t['latency_ms']} "
                                f"adapters={escape(str(t['adapters']))}"
                            )
                            summary["sdk_final"] = {"content": item.content, "telemetry": dict(t)}
                        else:
                            c = item.content
                            console.print(
                                escape(
                                    f"   PARTIAL [{c.get('adapter', '')}] {c.get('text', c)!r} "
                                    f"confidence={item.confidence}"
                                )
                            )

                await routing_steps(client)

                # 4. Refusals.
                console.print("\n[bold]4. what the router refuses[/]")
                try:
                    await client.ask(
                        args.prompt,
                        window=BudgetWindow(max_tokens=3),
                        meta={"adapters": ["persona"]},
                    )
                except StreamError as exc:
                    console.print(
                        f"   budget of 3 tokens   -> [red]{exc.code}[/] {escape(exc.message)}"
                    )
                    summary["budget_error"] = exc.code
                if policy is not None:
                    try:
                        await client.ask(
                            args.prompt,
                            meta={
                                "tool_permissions": ["secrets.read"],
                                "data_scope": ["no_secrets"],
                            },
                        )
                    except StreamError as exc:
                        console.print(
                            f"   secrets.read tool, data_scope no_secrets -> [red]{exc.code}[/] "
                            f"{escape(exc.message)}"
                        )
                        summary["policy_error"] = exc.code
                        summary["policy_message"] = exc.message
            try:
                async with connect(url, token="not-a-token"):
                    pass
            except HandshakeRefused as exc:
                console.print(
                    f"   bad token            -> [red]HTTP {exc.status}[/] "
                    f"{escape((exc.body or b'').decode().strip())}"
                )
                summary["bad_token_status"] = exc.status
            async with trio_websocket.open_websocket_url(f"{url}?access_token={token}") as ws:
                bad = dict(seed_syn, msg_seq=1)
                await ws.send_message(json.dumps(bad))
                await ws.get_message()  # first PARTIAL: the stream is open
                wrong = {"v": 1, "stream_id": "st1", "msg_seq": 7, "flags": ["FIN"], "payload": {}}
                await ws.send_message(json.dumps(wrong))
                while True:
                    reply = json.loads(await ws.get_message())
                    if reply.get("type") == "ERROR":
                        err = reply["error"]
                        console.print(
                            f"   msg_seq 7 instead of 2 -> [red]{err['code']}[/] "
                            f"{escape(err['message'])}"
                        )
                        summary["seq_error"] = err["code"]
                        break
            nursery.cancel_scope.cancel()
        summary["ok"] = (
            "FIN" in summary.get("browser_final", {}).get("flags", [])
            and "sdk_final" in summary
            and summary.get("budget_error") == "EBUDGET"
            and summary.get("bad_token_status") == 401
            and summary.get("seq_error") == "ESEQ_RETRY"
            and (policy is None or summary.get("policy_error") == "ESEC")
            and summary.get("escalated_final", {}).get("content", {}).get("adapter") == "persona"
            and "hedge" in summary.get("hedged_final", {}).get("telemetry", {})
        )
        return 0 if summary["ok"] else 1

    try:
        rc = trio.run(main)
    except (OSError, BaseExceptionGroup) as exc:
        from atp_proto._cli.serve import _listen_error, _strerror

        err = _listen_error(exc)
        if err is None:
            raise
        raise UsageError(f"cannot listen on 127.0.0.1:{args.port}: {_strerror(err)}") from None
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return rc
