"""The codec testee for this repository's codec (``atp_proto.frames``): the JSON-lines
protocol of ``conformance/README.md`` on stdin/stdout.

Run by ``atp conformance run --role codec --exec "python -m conformance.testees.python_codec"``.
One request per line, one reply per line:

* ``{"op":"hello"}`` → ``{"ok":true,"name":"atp_proto","claims":["L1"]}``
* ``{"op":"decode","hex":"…"}`` → ``{"ok":true,"frames":[<JSON mapping>, …]}`` or
  ``{"ok":false,"error":"EPROTO","scope":"connection"|"stream","message":"…"}``: the bytes
  are one WebSocket binary message; the stateless rules (ATP-FRAME-023) apply to each frame.
* ``{"op":"encode","frame":<JSON mapping>}`` → ``{"ok":true,"hex":"…"}`` or an error reply.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from atp_proto.frames import (
    ATPError,
    FrameDecoder,
    JsonMapping,
    encode_frame,
    frame_to_json,
    validate_frame,
)


def _error(exc: ATPError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": str(exc.code),
        "scope": "connection" if exc.connection_level else "stream",
        "message": exc.message,
    }


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """One request to one reply; never raises for bad input."""
    op = request.get("op")
    if op == "hello":
        return {"ok": True, "name": "atp_proto", "claims": ["L1"]}
    if op == "decode":
        try:
            data = bytes.fromhex(str(request.get("hex", "")))
        except ValueError:
            return {"ok": False, "error": "BAD_REQUEST", "message": "hex is not hex"}
        try:
            dec = FrameDecoder()
            dec.feed(data)
            frames = []
            for frame in dec:
                validate_frame(frame)
                frames.append(json.loads(frame_to_json(frame)))
            if dec.buffered:  # ATP-WS-001: a message that ends inside a frame
                return {
                    "ok": False,
                    "error": "EPROTO",
                    "scope": "connection",
                    "message": f"message ends inside a frame ({dec.buffered} bytes left)",
                }
            return {"ok": True, "frames": frames}
        except ATPError as exc:
            return _error(exc)
    if op == "encode":
        try:
            built = JsonMapping().from_obj(request.get("frame") or {})
            if built is None:
                return {"ok": False, "error": "EPROTO", "message": "unknown frame type"}
            return {"ok": True, "hex": encode_frame(built).hex()}
        except ATPError as exc:
            return _error(exc)
        except (TypeError, ValueError) as exc:
            return {"ok": False, "error": "EPROTO", "message": str(exc)}
    return {"ok": False, "error": "BAD_REQUEST", "message": f"unknown op {op!r}"}


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "error": "BAD_REQUEST", "message": "not JSON"}
        else:
            reply = handle(request) if isinstance(request, dict) else {"ok": False}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
