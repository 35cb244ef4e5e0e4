"""A vendor's ATP adapter on grpcio's *synchronous* server (a thread pool), without the
atp_proto SDK: written from conformance/ADAPTERS.md and the service's .proto alone, as
adapter.py (the asyncio one) beside it, to see what threads change.

The .proto is compiled at start with `grpc.protos` (grpcio-tools); the handlers take and
return raw bytes (no request deserializer: grpcio would answer an undecodable request
with UNKNOWN, ATP-ADAPT-021 wants INVALID_ARGUMENT). What threads change (ATP-ADAPT-008):
a handler thread cannot be cancelled, so the model's work checks `context.is_active()`
and `context.time_remaining()` between pieces (ending with DEADLINE_EXCEEDED, not a bare
`return`, which grpcio sends as OK without a final chunk); `_in_flight` counts
calls whose work has not stopped, sent on Health as `atp-calls-in-flight`
(ATP-ADAPT-024).

`--blocking SECONDS` makes each Stream call first wait that long in one blocking call that
ignores the deadline (a vendor SDK call without a timeout): the suite then reports FAIL
`adapter.deadline.stops-work` (ATP-ADAPT-008), as ADAPTERS.md says.

    python examples/vendor-adapter/sync_adapter.py --listen 127.0.0.1:7070
    atp conformance run --role adapter --target grpc://127.0.0.1:7070 --level L2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

_PROTO_ROOT = Path(__file__).resolve().parents[2] / "atp_proto" / "adapters" / "proto"
_PROTO = "atp/adapter/v1/adapter.proto"
_SERVICE = "atp.adapter.v1.AdapterService"

_lock = threading.Lock()
_in_flight = [0]  # Estimate / Stream calls whose work has not stopped


def _count(delta: int) -> None:
    with _lock:
        _in_flight[0] += delta


class Adapter:
    """The three methods, over raw bytes; ``pb`` is the compiled .proto's module."""

    def __init__(self, pb: Any, blocking_s: float) -> None:
        self.pb = pb
        self.blocking_s = blocking_s

    def task_of(self, raw: bytes, request_cls: Any, context: grpc.ServicerContext) -> Any:
        """The request's task, or the call aborted with INVALID_ARGUMENT (ATP-ADAPT-021)."""
        try:
            task = request_cls.FromString(raw).task
        except Exception as exc:  # DecodeError; a string field that is not UTF-8
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {exc}")
        if not task.prompt:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty prompt")
        if task.HasField("max_tokens") and task.max_tokens < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "negative max_tokens")
        for name in ("content_json", "meta_json"):
            text = getattr(task, name)
            if not text:
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):  # JSON 5,000 deep: RecursionError
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is not JSON")
            if not isinstance(value, dict):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is not an object")
        return task

    def estimate(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        _count(1)
        try:
            task = self.task_of(raw, self.pb.EstimateRequest, context)
            words = len(task.prompt.split())
            return bytes(
                self.pb.Estimate(
                    in_tokens=words,
                    out_tokens=words,
                    usd_micros=2 * words,
                    latency_p95_ms=50.0,
                    variance=float(words),
                    confidence=0.7,
                ).SerializeToString()
            )
        finally:
            _count(-1)

    def stream(self, raw: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        _count(1)
        try:
            task = self.task_of(raw, self.pb.StreamRequest, context)
            if self.blocking_s:
                time.sleep(self.blocking_s)  # the mistake: a call that ignores the deadline
            words = task.prompt.split()
            limit = task.max_tokens if task.HasField("max_tokens") else len(words)
            used = len(words)  # input tokens count from the first chunk on (ATP-ADAPT-019)
            for word in words[:limit]:
                if not context.is_active():
                    return  # cancelled (or grpcio ended the call at its deadline): stop
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    # past the deadline before grpcio noticed: a `return` here would end
                    # the call OK without a final chunk (ATP-ADAPT-008, -018)
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed")
                used += 1
                yield bytes(
                    self.pb.StreamChunk(
                        content=word + " ", confidence=0.7, tokens=used, usd_micros=2 * used
                    ).SerializeToString()
                )
            yield bytes(
                self.pb.StreamChunk(
                    confidence=0.7,
                    tokens=used,
                    usd_micros=2 * used,
                    final=True,
                    finish_reason="stop" if limit >= len(words) else "length",
                ).SerializeToString()
            )
        finally:
            _count(-1)

    def health(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        context.send_initial_metadata((("atp-calls-in-flight", str(_in_flight[0])),))
        reply = self.pb.HealthReply(status=self.pb.STATUS_READY, p95_ms=50.0, error_rate=0.0)
        return bytes(reply.SerializeToString())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:7070", metavar="HOST:PORT")
    ap.add_argument("--threads", type=int, default=16, help="the pool's size (default 16)")
    ap.add_argument("--blocking", type=float, default=0.0, metavar="SECONDS")
    args = ap.parse_args()
    root = Path(os.environ.get("ATP_ADAPTER_PROTO_ROOT", _PROTO_ROOT))
    sys.path.insert(0, str(root))
    pb = grpc.protos(_PROTO)  # type: ignore[attr-defined]
    adapter = Adapter(pb, args.blocking)
    handlers = {
        "Estimate": grpc.unary_unary_rpc_method_handler(adapter.estimate),
        "Stream": grpc.unary_stream_rpc_method_handler(adapter.stream),
        "Health": grpc.unary_unary_rpc_method_handler(adapter.health),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    host = args.listen.rpartition(":")[0]
    bound = server.add_insecure_port(args.listen)
    if not bound:
        print(f"error: cannot listen on {args.listen}", file=sys.stderr)
        return 2
    server.start()
    print(f"sync vendor adapter listening on {host}:{bound}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.wait_for_termination()
    server.stop(grace=5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
