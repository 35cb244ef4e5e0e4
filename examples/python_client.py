"""A minimal ATP client with the Python SDK (binary frames over WebSocket).

python examples/python_client.py --prompt "hello" --qos gold
python examples/python_client.py --url ws://127.0.0.1:7443/ws --token "$TOKEN"
"""

from __future__ import annotations

import argparse
import sys

import trio

from atp_proto.client import Final, StreamError, connect
from atp_proto.frames import BudgetWindow


async def main(args: argparse.Namespace) -> int:
    async with connect(args.url, token=args.token) as client:
        window = BudgetWindow(max_parallel=4, max_tokens=50_000, max_usd_micros=1_000_000)
        async with client.stream(args.prompt, qos=args.qos, window=window) as stream:
            async for item in stream:
                if isinstance(item, Final):
                    print("FINAL  ", item.content.get("answer"))
                    print("telemetry", dict(item.telemetry))
                else:
                    print("PARTIAL", item.content.get("adapter"), repr(item.content.get("text")))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:7443/ws")
    parser.add_argument("--token", default=None)
    parser.add_argument("--prompt", default="hello")
    parser.add_argument("--qos", default="silver", choices=["gold", "silver", "bronze"])
    try:
        sys.exit(trio.run(main, parser.parse_args()))
    except StreamError as exc:
        print(f"ERROR {exc.code}: {exc.message}", file=sys.stderr)
        sys.exit(1)
