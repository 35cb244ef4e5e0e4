"""A minimal ATP client with the Python SDK (binary frames over WebSocket).

    atp serve --no-auth &
    python examples/python_client.py --prompt "hello" --qos gold
    python examples/python_client.py --url ws://127.0.0.1:7443/ws --token "$TOKEN"

Prints each PARTIAL as it arrives, then the FINAL answer and its telemetry. Exit status: 0
on a FINAL, 1 on an ERROR from the router, 2 when the connection cannot be made.
"""

from __future__ import annotations

import argparse
import sys

import trio

from atp_proto.client import Final, HandshakeRefused, StreamError, connect
from atp_proto.frames import BudgetWindow
from atp_proto.transports import TransportClosed


async def run(args: argparse.Namespace) -> None:
    async with connect(args.url, token=args.token) as client:
        window = BudgetWindow(max_parallel=4, max_tokens=50_000, max_usd_micros=1_000_000)
        async with client.stream(
            args.prompt, task_type=args.task_type, qos=args.qos, ttl=args.ttl, window=window
        ) as stream:
            async for item in stream:
                if isinstance(item, Final):
                    print("FINAL  ", item.content.get("answer"))
                    print("telemetry", dict(item.telemetry))
                else:
                    adapter, text = item.content.get("adapter"), item.content.get("text")
                    print("PARTIAL", adapter, repr(text), f"confidence={item.confidence}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:7443/ws", help="router WebSocket URL")
    parser.add_argument("--token", default=None, help="JWT, when the router has auth on")
    parser.add_argument("--prompt", default="hello")
    parser.add_argument("--task-type", default="qa")
    parser.add_argument("--qos", default="silver", choices=["gold", "silver", "bronze"])
    parser.add_argument("--ttl", type=int, default=30, help="stream deadline, seconds (0: none)")
    args = parser.parse_args()
    try:
        trio.run(run, args)
    except StreamError as exc:
        retry = f" (retry after {exc.retry_after_ms} ms)" if exc.retry_after_ms is not None else ""
        print(f"ERROR {exc.code}: {exc.message}{retry}", file=sys.stderr)
        return 1
    except HandshakeRefused as exc:  # e.g. 401: missing or invalid token
        body = (exc.body or b"").decode(errors="replace").strip()
        print(f"handshake refused: HTTP {exc.status} {body}", file=sys.stderr)
        return 2
    except (TransportClosed, OSError) as exc:
        # trio's "all attempts to connect ... failed" holds each attempt's error: say the first
        group = exc.__cause__
        leaf = group.exceptions[0] if isinstance(group, BaseExceptionGroup) else exc
        print(
            f"cannot connect to {args.url}: {getattr(leaf, 'strerror', None) or leaf}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
