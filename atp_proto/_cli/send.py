"""``atp send URL --prompt TEXT``: open one stream and print what comes back."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from atp_proto.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "url",
        nargs="?",
        default="ws://127.0.0.1:7443/ws",
        help="router URL (default ws://127.0.0.1:7443/ws)",
    )
    p.add_argument("--prompt", required=True, help="the task's prompt")
    p.add_argument("--task-type", default="qa")
    p.add_argument("--qos", choices=["gold", "silver", "bronze"], default="silver")
    p.add_argument("--max-tokens", type=int, metavar="N", help="budget window: tokens")
    p.add_argument("--max-usd-micros", type=int, metavar="N", help="budget window: micro-dollars")
    p.add_argument(
        "--max-parallel", type=int, metavar="N", help="budget window: adapter calls at once"
    )
    p.add_argument("--ttl", type=int, default=0, metavar="SECONDS")
    p.add_argument(
        "--adapter", action="append", metavar="NAME", help="restrict to these adapters (repeatable)"
    )
    p.add_argument("--fanout", type=int, metavar="N", help="ask N adapters at once")
    p.add_argument("--token", help="JWT (or env ATP_TOKEN)")
    p.add_argument(
        "--text", action="store_true", help="speak the JSON text mapping (like a browser)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line (PARTIALs, then FINAL or ERROR)",
    )
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")


def run(args: argparse.Namespace) -> int:
    import trio
    import trio_websocket

    from atp_proto.client import Final, StreamError, connect
    from atp_proto.frames import BudgetWindow

    for name in ("max_tokens", "max_usd_micros", "max_parallel", "fanout"):
        v = getattr(args, name)
        if v is not None and v < (1 if name in ("max_parallel", "fanout") else 0):
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if not args.url.startswith(("ws://", "wss://")):
        raise UsageError(f"the URL must start with ws:// or wss://, got {args.url!r}")
    token = args.token or os.environ.get("ATP_TOKEN")
    window = None
    if (
        args.max_tokens is not None
        or args.max_usd_micros is not None
        or args.max_parallel is not None
    ):
        window = BudgetWindow(args.max_parallel, args.max_tokens, args.max_usd_micros)
    meta: dict[str, Any] = {}
    if args.adapter:
        meta["adapters"] = args.adapter
    if args.fanout:
        meta["fanout"] = args.fanout

    def emit(kind: str, obj: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({"kind": kind, **obj}, ensure_ascii=False), flush=True)

    async def main() -> int:
        with trio.fail_after(args.timeout):
            async with connect(args.url, token=token, text=args.text) as client:
                async with client.stream(
                    args.prompt,
                    task_type=args.task_type,
                    qos=args.qos,
                    ttl=args.ttl,
                    window=window,
                    meta=meta,
                ) as stream:
                    async for item in stream:
                        if isinstance(item, Final):
                            emit(
                                "final",
                                {
                                    "content": item.content,
                                    "confidence": item.confidence,
                                    "telemetry": dict(item.telemetry),
                                },
                            )
                            if not args.json:
                                answer = (
                                    item.content.get("answer")
                                    if isinstance(item.content, dict)
                                    else item.content
                                )
                                t = item.telemetry
                                print(f"FINAL  {answer}")
                                print(
                                    f"       tokens={t.get('tokens')} "
                                    f"usd_micros={t.get('usd_micros')} "
                                    f"latency_ms={t.get('latency_ms')} "
                                    f"adapters={','.join(t.get('adapters', []))}"
                                )
                        else:
                            emit(
                                "partial", {"content": item.content, "confidence": item.confidence}
                            )
                            if not args.json:
                                c = item.content
                                text = (
                                    c.get("text")
                                    if isinstance(c, dict) and "text" in c
                                    else json.dumps(c)
                                )
                                who = c.get("adapter", "") if isinstance(c, dict) else ""
                                print(
                                    f"PARTIAL [{who}] {text!s}  (confidence {item.confidence})",
                                    flush=True,
                                )
        return 0

    try:
        try:
            return trio.run(main)
        except BaseExceptionGroup as group:
            # The client's nursery wraps a StreamError in a group: unwrap a lone one.
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]
            if leaf is group:
                raise
            raise leaf from None
    except StreamError as exc:
        emit(
            "error",
            {"code": exc.code, "message": exc.message, "retry_after_ms": exc.retry_after_ms},
        )
        if not args.json:
            hint = f" (retry after {exc.retry_after_ms} ms)" if exc.retry_after_ms else ""
            print(f"ERROR  {exc.code}: {exc.message}{hint}", file=sys.stderr)
        return 1
    except trio_websocket.ConnectionRejected as exc:
        body = (exc.body or b"").decode(errors="replace").strip()
        emit("error", {"code": "EHANDSHAKE", "status": exc.status_code, "message": body})
        if not args.json:
            print(f"ERROR  handshake refused: HTTP {exc.status_code} {body}", file=sys.stderr)
        return 1
    except (trio_websocket.HandshakeError, OSError) as exc:
        emit("error", {"code": "ECONNECT", "message": _reason(exc)})
        if not args.json:
            print(f"ERROR  cannot connect to {args.url}: {_reason(exc)}", file=sys.stderr)
        return 1
    except trio.TooSlowError:
        emit("error", {"code": "ETIMEOUT", "message": f"no FINAL within {args.timeout} s"})
        if not args.json:
            print(f"ERROR  no FINAL within {args.timeout} s", file=sys.stderr)
        return 1


def _reason(exc: BaseException) -> str:
    """The most specific message in an exception chain (trio-websocket wraps the OSError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__
