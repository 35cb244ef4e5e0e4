"""An :class:`~atp_proto.adapters.grpc._h2.H2Channel` with no socket, for feeding it
recorded or crafted server bytes (``_h2_fastpath.feed`` does no I/O): the differential
tests of the fast paths and ``scripts/grpc_response_bench.py``."""

from __future__ import annotations

from atp_proto.adapters.grpc._h2 import H2Channel


def detached_channel(label: str, authority: bytes = b"a") -> H2Channel:
    """A client channel with the router's windows (64 KiB per stream, 16 MiB for the
    connection, 4 MiB messages) and no stream under it."""
    return H2Channel(
        stream=None,  # type: ignore[arg-type]  # feed() does no I/O
        authority=authority,
        scheme=b"http",
        window=65535,
        connection_window=1 << 24,
        max_message_size=4 << 20,
        label=label,
    )
