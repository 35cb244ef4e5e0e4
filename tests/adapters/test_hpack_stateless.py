"""The gRPC client's HPACK encoder (``_h2_fastpath.StatelessEncoder``): header blocks that
never touch the dynamic table. hpack's own decoder (an independent implementation of the
decoding side) must read every block back exactly, with its dynamic table in step with
the encoder's however stateless and table-using blocks mix, and a pending table size
update must still be sent. The gRPC tests (tests/adapters/test_interop.py: grpcio's C
core as the server) decode these blocks on the wire."""

from __future__ import annotations

import h2.config
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_proto.adapters.grpc._h2_fastpath import Connection, StatelessEncoder

GRPC_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/atp.adapter.v1.AdapterService/Stream"),
    (b":authority", b"127.0.0.1:7070"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"atp-proto/0.1"),
    (b"grpc-timeout", b"8250m"),
]

names = st.sampled_from(
    [b":method", b":path", b":authority", b"content-type", b"te", b"grpc-timeout",
     b"user-agent", b"x-custom", b"accept-encoding", b"authorization", b"cookie"]
)  # fmt: skip
values = st.binary(max_size=300) | st.sampled_from([b"POST", b"GET", b"/", b"gzip, deflate"])
header_lists = st.lists(st.tuples(names, values), max_size=12)


def _decoded(blocks: list[bytes]) -> tuple[list[list[tuple[bytes, bytes]]], Decoder]:
    dec = Decoder()
    return [[(bytes(n), bytes(v)) for n, v in dec.decode(b, raw=True)] for b in blocks], dec


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(header_lists, st.booleans()), min_size=1, max_size=8))
def test_blocks_decode_exactly_and_the_tables_stay_in_step(
    script: list[tuple[list[tuple[bytes, bytes]], bool]],
) -> None:
    """Stateless blocks and hpack's own (``resized`` forces the latter) in any order."""
    enc = StatelessEncoder()
    blocks = []
    for headers, use_table in script:
        if use_table:
            blocks.append(Encoder.encode(enc, headers))  # hpack's own, with the table
        else:
            blocks.append(enc.encode(headers))
    got, dec = _decoded(blocks)
    assert got == [h for h, _ in script]
    assert list(dec.header_table.dynamic_entries) == list(enc.header_table.dynamic_entries)


def test_a_stateless_block_adds_nothing_to_the_table() -> None:
    enc = StatelessEncoder()
    block = enc.encode(GRPC_REQUEST)
    got, dec = _decoded([block])
    assert got == [GRPC_REQUEST]
    assert len(dec.header_table.dynamic_entries) == 0 == len(enc.header_table.dynamic_entries)
    # static-table fields are one byte each: :method POST (3), :scheme http (6)
    assert block[:2] == b"\x83\x86"
    assert enc.encode(GRPC_REQUEST) == block  # the same fields, the same bytes


def test_never_indexed_fields_stay_never_indexed() -> None:
    enc = StatelessEncoder()
    block = enc.encode(
        [NeverIndexedHeaderTuple(b"authorization", b"secret"), HeaderTuple(b"a", b"b")]
    )
    dec = Decoder()
    out = dec.decode(block, raw=True)
    assert [type(h) for h in out] == [NeverIndexedHeaderTuple, HeaderTuple]
    assert block[0] & 0xF0 == 0x10  # §6.2.3 never indexed, name by static index 23
    assert enc.encode([(b"authorization", b"secret", True)])[0] & 0xF0 == 0x10
    assert all(b"secret" not in k[1] for k in enc._fields)  # secrets are not remembered


def test_a_pending_table_size_update_is_sent() -> None:
    """The peer lowered SETTINGS_HEADER_TABLE_SIZE: the next block must start with the
    dynamic table size update (RFC 7541 §4.2), so hpack's encoder writes that one."""
    enc = StatelessEncoder()
    enc.header_table_size = 256
    block = enc.encode(GRPC_REQUEST)
    assert block[0] & 0xE0 == 0x20  # §6.3 dynamic table size update
    dec = Decoder()
    assert [(bytes(n), bytes(v)) for n, v in dec.decode(block, raw=True)] == GRPC_REQUEST
    assert dec.header_table.maxsize == 256
    assert enc.encode(GRPC_REQUEST)[:2] == b"\x83\x86"  # stateless again after it


def test_long_names_and_values_and_the_cache_bound() -> None:
    enc = StatelessEncoder()
    big = [(b"x-" + b"n" * 200, b"v" * 20_000)]  # multi-byte integers in both strings
    assert _decoded([enc.encode(big)])[0] == [big]
    for i in range(StatelessEncoder.MAX_CACHED + 10):
        enc.encode([(b"grpc-timeout", f"{i}m".encode())])
    assert len(enc._fields) <= StatelessEncoder.MAX_CACHED


def test_the_grpc_client_connection_uses_it() -> None:
    conn = Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    assert isinstance(conn.encoder, StatelessEncoder)
