"""gRPC for ``atp.adapter.v1``: the router's trio client and the SDK's server internals.

grpclib is asyncio-only and trio-asyncio costs 15-40% (DESIGN.md, "gRPC from trio"), so
the client speaks gRPC directly: HTTP/2 (h2) over trio TCP / TLS streams. Layers, each
module depending only on the ones above it in this list:

* :mod:`.status` — the shared vocabulary: gRPC status codes, ATP <-> gRPC code tables,
  the HTTP fallback, ``grpc-timeout``, retry hints, the service path.
* :mod:`._call` — one call: 5-byte length-prefix framing, the inbox, flow-control credit
  returned when a message is consumed.
* :mod:`._h2_fastpath` — every line that touches h2's private attributes (the DATA fast
  path), in one file, pinned by ``tests/test_pinned_internals.py``.
* :mod:`._h2` — :class:`~._h2.H2Channel`: one HTTP/2 connection, its reader and writer
  tasks, GOAWAY / RST_STREAM handling, opening calls.
* :mod:`.client` — :class:`GrpcAdapter`: URL, ownership, connect + backoff + TLS, unary
  calls, the stream with transparent retries.
* :mod:`.server` — the SDK's grpclib server internals (raw codec, coalesced writes, the
  retry-hint details codec); :mod:`atp_proto.adapters.sdk` is the vendor face over it.

gRPC framing on the client: ``grpc-timeout`` from the request's ``deadline_ms`` (or the
adapter's default timeout), ``grpc-status`` / ``grpc-message`` (percent-decoded) from
trailers or trailers-only responses, HTTP status fallback. Leaving a call early (the
caller's cancel scope, ``break`` out of the stream, a deadline) sends
``RST_STREAM(CANCEL)``.
"""

from .client import GrpcAdapter
from .status import GRPC_TO_ATP, SERVICE, GrpcStatus, grpc_error

__all__ = ["GRPC_TO_ATP", "SERVICE", "GrpcAdapter", "GrpcStatus", "grpc_error"]
