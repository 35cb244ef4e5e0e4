"""Hostile CBOR built item by item, for differential fuzzing of the two CBOR paths.

:func:`hostile_item` writes one CBOR item (bytes) from a grammar of what a peer can send,
not only what an encoder writes: heads in every width (non-minimal ones included), the
64-bit integer edges, text with invalid or surrogate UTF-8, byte strings, arrays and maps
whose counts are off by one (truncated or trailing input), indefinite lengths and breaks,
maps with duplicate keys spelled in different head widths and keys that are not text,
tags around items, half / single / double floats (NaN, the infinities, -0.0,
subnormals), simple values, and huge announced lengths. Most of what it writes is refused;
what matters is that the C decoder (``_ccbor.loads``) and the pure one
(``_cbor._loads_py``) give the same answer, and that neither misbehaves doing so
(scripts/fuzz_ccbor.py runs it under ASAN and the debug allocators, tests/frames/
test_ccbor.py under hypothesis).

:func:`same` compares two decoded values exactly: same types, NaN equal to NaN, and the
sign of a zero kept (``-0.0 == 0.0`` in Python).
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

__all__ = ["hostile_item", "same"]

_WIDTHS = (24, 25, 26, 27)
_INT_EDGES = (0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)
_KEYS = ("a", "type", "content", "x" * 31, "x" * 32, "x" * 33, "é", "")
_FLOATS = (
    0.0,
    -0.0,
    1.5,
    -2.25,
    math.nan,
    math.inf,
    -math.inf,
    5e-324,
    1e300,
    65504.0,
    6.0e-8,
)


def _head(rnd: random.Random, major: int, arg: int) -> bytes:
    """An item head for ``arg``: usually the shortest form, sometimes a wider one (valid
    CBOR, not preferred serialization), never one too narrow for the value."""
    mt = major << 5
    fits = [w for w in _WIDTHS if arg < 1 << (8 << (w - 24))]
    if arg < 24 and rnd.random() < 0.8:
        return bytes([mt | arg])
    shortest = fits[0]
    width = shortest if rnd.random() < 0.7 else rnd.choice(fits)
    n = 1 << (width - 24)
    return bytes([mt | width]) + arg.to_bytes(n, "big")


def _text(rnd: random.Random) -> bytes:
    r = rnd.random()
    if r < 0.5:
        return rnd.choice(_KEYS).encode()
    if r < 0.7:
        return "".join(chr(rnd.randint(0x20, 0x10FFFF)) for _ in range(rnd.randint(0, 6))).encode(
            "utf-8",
            "surrogatepass",  # a drawn surrogate gives ED A0..BF: invalid UTF-8
        )
    if r < 0.85:  # invalid UTF-8: a lone continuation byte, a truncated sequence, overlong
        return rnd.choice([b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xff", b"a\xed\xa0\x80"])
    return bytes(rnd.randint(0x20, 0x7E) for _ in range(rnd.randint(0, 40)))


def _float(rnd: random.Random) -> bytes:
    v = rnd.choice(_FLOATS) if rnd.random() < 0.7 else rnd.uniform(-1e6, 1e6)
    width = rnd.choice("efd")
    try:
        return {"e": b"\xf9", "f": b"\xfa", "d": b"\xfb"}[width] + struct.pack(">" + width, v)
    except (OverflowError, struct.error):
        return b"\xfb" + struct.pack(">d", v)


def hostile_item(rnd: random.Random, depth: int = 0, max_depth: int = 6) -> bytes:
    """One CBOR item (or something that looks like one) of at most ``max_depth`` levels."""
    r = rnd.random()
    leaf = depth >= max_depth or r < 0.45
    if leaf:
        kind = rnd.randrange(10)
        if kind == 0:
            return _head(rnd, rnd.choice((0, 1)), rnd.choice(_INT_EDGES))
        if kind == 1:
            return _head(rnd, rnd.choice((0, 1)), rnd.randint(0, 2**64 - 1))
        if kind == 2:
            t = _text(rnd)
            return _head(rnd, 3, len(t)) + t
        if kind == 3:
            b = rnd.randbytes(rnd.randint(0, 12))
            return _head(rnd, 2, len(b)) + b
        if kind == 4:
            return _float(rnd)
        if kind == 5:
            return rnd.choice([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf8\x20", b"\xe0", b"\xf3"])
        if kind == 6:  # reserved additional information, a stray break
            return bytes([rnd.randrange(8) << 5 | rnd.choice((28, 29, 30))]) + b"\x00"
        if kind == 7:  # a huge announced length with little behind it
            return bytes([rnd.choice((0x5B, 0x7B, 0x9B, 0xBB))]) + rnd.randbytes(8)
        if kind == 8:  # indefinite-length strings
            return rnd.choice([b"\x5f\x41a\xff", b"\x7f\x61a\xff", b"\x5f\xff"])
        return b"\xff"
    kind = rnd.randrange(10)
    n = rnd.randint(0, 4)
    if kind < 4:  # array, its count sometimes off by one
        items = [hostile_item(rnd, depth + 1, max_depth) for _ in range(n)]
        count = n if rnd.random() < 0.85 else max(0, n + rnd.choice((-1, 1)))
        return _head(rnd, 4, count) + b"".join(items)
    if kind < 8:  # map: text keys mostly, sometimes a duplicate or a key of another type
        body = b""
        keys: list[bytes] = []
        for _ in range(n):
            r2 = rnd.random()
            if keys and r2 < 0.1:
                key = rnd.choice(keys)  # a duplicate, maybe spelled in another width
                text = key[1:] if key[0] < 0x78 else key[2:]
                key = _head(rnd, 3, len(text)) + text
            elif r2 < 0.2:
                key = hostile_item(rnd, depth + 1, max_depth)
            else:
                text = rnd.choice(_KEYS).encode() if rnd.random() < 0.7 else _text(rnd)
                key = _head(rnd, 3, len(text)) + text
            keys.append(key)
            body += key + hostile_item(rnd, depth + 1, max_depth)
        count = n if rnd.random() < 0.85 else max(0, n + rnd.choice((-1, 1)))
        return _head(rnd, 5, count) + body
    if kind == 8:  # indefinite-length container
        items = [hostile_item(rnd, depth + 1, max_depth) for _ in range(n * 2)]
        return rnd.choice((b"\x9f", b"\xbf")) + b"".join(items) + b"\xff"
    # a tag around an item (bignums, epoch dates, self-describe, stringref...)
    tag = rnd.choice((0, 1, 2, 3, 4, 24, 28, 29, 256, 55799, 2**32))
    return _head(rnd, 6, tag) + hostile_item(rnd, depth + 1, max_depth)


def same(a: Any, b: Any) -> bool:
    """Two decoded values are the same: types, NaN equal to NaN, the sign of a zero."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)
