"""Test support for ATP, public and documented (the model is :mod:`trio.testing`).

Used by this repository's tests and benchmarks and by the conformance suite; vendors testing
their own router, client or adapter against ATP may use it too. Nothing here is imported by
the runtime package.

* :mod:`atp_proto.testing.frames` — an independent raw frame builder and parser (``struct``
  and ``cbor2`` only, never :mod:`atp_proto.frames`), so checks hold the wire format to the
  specification rather than to our own encoder; and the seed SYN.
* :mod:`atp_proto.testing.processes` — :class:`RouterProcess` (``atp serve``) and
  :class:`AdapterProcess` (``atp adapter serve`` or any gRPC adapter server) as real
  subprocesses on free loopback ports: started, awaited until they listen, stopped with
  SIGTERM then SIGKILL, their logs kept.
* :mod:`atp_proto.testing.pair` — :class:`ConnectionPair`, a client and a router
  :class:`~atp_proto.frames.Connection` wired back to back in memory (h11's model).
* :mod:`atp_proto.testing.transport_checker` — the battery every transport must pass
  (ordering, large units, backpressure, close codes, abrupt peer loss, concurrent senders,
  cancellation safety, unit size limits), run over a :class:`~.transport_checker.Binding`;
  :mod:`~atp_proto.testing.ws_peer` (``ws://`` and ``wss://`` pairs on loopback TCP) and
  :mod:`~atp_proto.testing.quic_peer` (our QUIC server against aioquic's asyncio client)
  make the bindings of this package's transports.
* :mod:`atp_proto.testing.hostile_run` — a hostile peer written from the spec alone
  (:mod:`~.hostile_wire`: its own header code, a raw-socket WebSocket client, aioquic's
  sans-IO QUIC; :mod:`~.hostile_session`: the router-side oracles; :mod:`~.hostile_cases`:
  mutation cases with the spec's verdicts), run against real processes by
  ``tests/hostile/`` and ``scripts/hostile_fuzz.py``.
* :mod:`atp_proto.testing.http` — a minimal HTTP GET for ``/metrics``, ``/healthz`` and
  ``/readyz``, and :func:`metric_value` to read one Prometheus sample.

The names are re-exported here; import the submodules for the frame constants.
"""

from __future__ import annotations

from .frames import RawFrame, build_frame, parse_frames, syn_frame
from .http import http_get, metric_value
from .pair import ConnectionPair
from .processes import AdapterProcess, RouterProcess, clean_env, serve_adapter, spawn

__all__ = [
    "AdapterProcess",
    "ConnectionPair",
    "RawFrame",
    "RouterProcess",
    "build_frame",
    "clean_env",
    "http_get",
    "metric_value",
    "parse_frames",
    "serve_adapter",
    "spawn",
    "syn_frame",
]
