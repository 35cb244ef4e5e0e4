"""What real gRPC servers' response header blocks are made of (RFC 7541 §6), captured
from the bytes the client's reader gets: why the client keeps no cache of decoded
blocks keyed by their bytes.

Such a cache is exact only for blocks of static-table and literal-without-indexing
fields (no dynamic-table insert, no size update, no dynamic index). grpclib (the
persona adapter) and grpcio (tests/adapters/grpcio_server.py) insert every response
field into the dynamic table on the first call and send indexes into it from then on,
so no block they send after the first would be cached. Should this change, a cache of
such blocks (benchmarks/RESULTS.md, "The router's own CPU per stream, the next cuts")
would be worth its differential test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from conftest import grpcio_server, serve_adapter
from hpack.hpack import decode_integer
from hyperframe.frame import Frame, HeadersFrame

from atp_proto.adapters import TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter, _h2
from atp_proto.adapters.grpc._h2 import H2Channel

STATIC = 61  #: entries of the static table (RFC 7541 Appendix A)
CALLS = 4


def _fields(block: bytes) -> list[tuple[str, int]]:
    """(kind, index) of each field representation, from its first bytes only."""
    out: list[tuple[str, int]] = []
    i = 0
    while i < len(block):
        c = block[i]
        if c & 0x80:  # indexed field (§6.1)
            idx, n = decode_integer(block[i:], 7)
            out.append(("indexed", idx))
            i += n
            continue
        if c & 0xE0 == 0x20:  # dynamic table size update (§6.3)
            size, n = decode_integer(block[i:], 5)
            out.append(("size", size))
            i += n
            continue
        kind, prefix = ("insert", 6) if c & 0xC0 == 0x40 else ("literal", 4)  # §6.2.1-3
        idx, n = decode_integer(block[i:], prefix)
        i += n
        if idx == 0:  # a literal name
            length, n = decode_integer(block[i:], 7)
            i += n + length
        length, n = decode_integer(block[i:], 7)
        i += n + length
        out.append((kind, idx))
    assert i == len(block)
    return out


def _cacheable(fields: list[tuple[str, int]]) -> bool:
    return all(kind in ("indexed", "literal") and idx <= STATIC for kind, idx in fields)


def _blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(stream id, header block) of each HEADERS frame (none is continued here)."""
    out = []
    i = 0
    while i + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[i : i + 9]))
        frame.parse_body(memoryview(data[i + 9 : i + 9 + length]))
        i += 9 + length
        if isinstance(frame, HeadersFrame):
            assert "END_HEADERS" in frame.flags
            out.append((frame.stream_id, bytes(frame.data)))
    return out


@asynccontextmanager
async def _recorded() -> AsyncIterator[list[bytes]]:
    reads: list[bytes] = []
    feed = _h2.feed

    def rec(ch: H2Channel, data: bytes) -> bytes:
        reads.append(bytes(data))
        return feed(ch, data)

    _h2.feed = rec  # type: ignore[assignment]
    try:
        yield reads
    finally:
        _h2.feed = feed


async def _calls(url: str, prompt: str) -> list[tuple[int, bytes]]:
    async with _recorded() as reads, GrpcAdapter.from_url("g", url) as a:
        for _ in range(CALLS):
            async for _chunk in a.stream(TaskRequest("t", prompt)):
                pass
    return _blocks(b"".join(reads))


def _check(blocks: list[tuple[int, bytes]]) -> None:
    first = min(sid for sid, _ in blocks)
    later = [_fields(b) for sid, b in blocks if sid != first]
    assert len(later) == 2 * (CALLS - 1)  # response headers and trailers of each call
    assert any(kind == "insert" for sid, b in blocks if sid == first for kind, _ in _fields(b))
    # every later block refers to the dynamic table: none is cacheable by its bytes
    assert not any(_cacheable(f) for f in later), later
    assert all(any(k == "indexed" and i > STATIC for k, i in f) for f in later)
    assert len({b for sid, b in blocks if sid != first}) == 2  # though they repeat


async def test_grpclib_blocks_index_the_dynamic_table(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, "persona", "--option", "latency_ms=0") as proc:
            _check(await _calls(proc.url, "The quick brown fox"))


async def test_grpcio_blocks_index_the_dynamic_table(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with grpcio_server(tmp_path) as srv:
            _check(await _calls(srv.url, "flood:4"))


def test_the_field_reader_against_hpack() -> None:
    """_fields reads the representations hpack's encoder makes (an honest reader)."""
    import hpack

    enc = hpack.Encoder()
    headers = [(":status", "200"), ("content-type", "application/grpc"), ("x-a", "b")]
    first = _fields(enc.encode(headers))
    assert first == [("indexed", 8), ("insert", 31), ("insert", 0)]
    again = _fields(enc.encode(headers))
    assert again == [("indexed", 8), ("indexed", 63), ("indexed", 62)]
    assert _fields(enc.encode([("x-a", "b")], huffman=False)) == [("indexed", 62)]
    never = _fields(enc.encode([hpack.NeverIndexedHeaderTuple("x-s", "v")]))
    assert never == [("literal", 0)] and not _cacheable([("indexed", 62)])
    enc.header_table_size = 0
    assert _fields(enc.encode([(":status", "200")]))[0] == ("size", 0)
