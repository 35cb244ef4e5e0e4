"""The client testee for this repository's client library (:mod:`atp_proto.client`).

``python -m conformance.testees.python_client URL [--streams N] [--prompt-file F] [--ttl S]
[--ca FILE]``:
open one session, run N tasks one after another on it, print each outcome as one JSON
line, exit 0 when every task ended with a FINAL, 1 otherwise. Run by ``atp conformance
run --role client --exec "python -m conformance.testees.python_client {url} --streams
{streams} --prompt-file {prompt_file} --ttl {ttl} --ca {ca}"`` (``{…}`` are filled in per
case).
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from atp_proto.client import StreamError, connect


async def _main(args: argparse.Namespace) -> int:
    ok = True
    async with connect(args.url, text=args.text, ca_file=args.ca or None) as client:
        for _ in range(args.streams):
            try:
                final = await client.ask(args.prompt, ttl=args.ttl)
                print(json.dumps({"final": True, "content": str(final.content)[:100]}), flush=True)
            except StreamError as exc:
                ok = False
                print(json.dumps({"error": str(exc.code), "message": exc.message}), flush=True)
                if client.closed is not None:
                    break
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(prog="python_client")
    p.add_argument("url")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--prompt", default="hello")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    p.add_argument("--ttl", type=int, default=0)
    p.add_argument("--text", action="store_true")
    p.add_argument("--ca", default="", help="wss://, quic://: trust this certificate (PEM)")
    args = p.parse_args()
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as fh:
            args.prompt = fh.read()
    try:
        return trio.run(_main, args)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)[:300]}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
