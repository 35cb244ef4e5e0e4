"""A deliberately broken codec testee: ``python codec_variant.py NAME`` speaks the JSON-lines
protocol like conformance/testees/python_codec.py, with one fault."""

from __future__ import annotations

import json
import sys
from typing import Any

from conformance.testees import python_codec


def accept_truncated(request: dict[str, Any]) -> dict[str, Any]:
    reply = python_codec.handle(request)
    if not reply.get("ok") and "ends inside" in reply.get("message", ""):
        return {"ok": True, "frames": []}  # a message ending inside a frame: "nothing yet"
    return reply


def accept_reserved_bit(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("op") == "decode":
        data = bytearray.fromhex(request["hex"])
        if len(data) >= 8:
            data[4] &= 0x7F  # the high bit of stream_id, cleared before decoding
        request = dict(request, hex=bytes(data).hex())
    return python_codec.handle(request)


_HEADER = frozenset(
    {"v", "type", "stream_id", "msg_seq", "frag_seq", "flags", "qos", "ttl", "payload"}
)


def _unpad(value: Any) -> Any:
    if isinstance(value, str):
        return value.rstrip("=")
    if isinstance(value, list):
        return [_unpad(v) for v in value]
    if isinstance(value, dict):
        return {k: _unpad(v) for k, v in value.items()}
    return value


def unpadded_base64(request: dict[str, Any]) -> dict[str, Any]:
    """Byte strings in ext written as base64 without its padding (ATP-JSON-011: padded)."""
    reply = python_codec.handle(request)
    if request.get("op") == "decode" and reply.get("ok"):
        reply["frames"] = [
            {k: v if k in _HEADER or k == "payload_b64" else _unpad(v) for k, v in f.items()}
            for f in reply["frames"]
        ]
    return reply


VARIANTS = {
    "accept-truncated": accept_truncated,
    "accept-reserved-bit": accept_reserved_bit,
    "unpadded-base64": unpadded_base64,
}

if __name__ == "__main__":
    handle = VARIANTS[sys.argv[1]]
    for line in sys.stdin:
        sys.stdout.write(json.dumps(handle(json.loads(line))) + "\n")
        sys.stdout.flush()
