"""ATP with nothing but the `websockets` package: the protocol's SYN frame, verbatim, as
JSON text; prints every frame the router sends back until the FINAL.

    pip install websockets
    python examples/raw_json_client.py ws://127.0.0.1:7443/ws
"""

from __future__ import annotations

import json
import sys

from websockets.sync.client import connect

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


def main(url: str) -> int:
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps(SYN))
        while True:
            frame = json.loads(ws.recv(timeout=30))
            print(json.dumps(frame))
            if frame.get("type") == "ERROR":
                return 1
            if "FIN" in frame.get("flags", []):
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:7443/ws"))
