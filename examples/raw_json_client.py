"""ATP with nothing but the `websockets` package: sends the protocol's SYN example
verbatim, as one JSON text message, and prints every frame the router sends back (one JSON
object a line) until the FINAL or an ERROR.

    pip install websockets
    atp serve --no-auth &
    python examples/raw_json_client.py ws://127.0.0.1:7443/ws
    python examples/raw_json_client.py ws://127.0.0.1:7443/ws --token "$TOKEN"

Exit status: 0 on a FINAL, 1 on an ERROR frame, 2 when the connection or handshake fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import quote

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

# The SYN of the protocol's example (spec §13.4), verbatim.
SYN = {
    "v": 1,
    "session_id": "s1",
    "stream_id": "st1",
    "msg_seq": 1,
    "frag_seq": 0,
    "flags": ["SYN"],
    "qos": "gold",
    "ttl": 8,
    "window": {"max_parallel": 4, "max_tokens": 50000, "max_usd_micros": 1000000},
    "meta": {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]},
    "payload": {"type": "agent.result.partial", "content": {"prompt": "hello"}},
}


def main(url: str, token: str | None) -> int:
    if token:  # the way a browser passes it; a header would do as well here
        url += ("&" if "?" in url else "?") + "access_token=" + quote(token, safe="")
    try:
        ws = connect(url, open_timeout=10)
    except InvalidStatus as exc:
        print(f"handshake refused: HTTP {exc.response.status_code}", file=sys.stderr)
        return 2
    except OSError as exc:  # refused, unreachable, no handshake within open_timeout
        print(f"cannot connect to {url}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with ws:
        ws.send(json.dumps(SYN))
        while True:
            frame = json.loads(ws.recv(timeout=30))
            print(json.dumps(frame))
            if frame.get("type") == "ERROR":
                return 1
            if frame.get("stream_id") == "st1" and "FIN" in frame.get("flags", []):
                return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:7443/ws")
    parser.add_argument("--token", default=None, help="JWT, when the router has auth on")
    args = parser.parse_args()
    sys.exit(main(args.url, args.token))
