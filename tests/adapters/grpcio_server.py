"""An independent AdapterService implementation on grpcio (the official C-core stack),
for interoperability tests. Messages are the betterproto classes (bytes() / parse()).

Behaviour by prompt:
    "status:N[:msg]"  abort with gRPC status N
    "streamstatus:N"  stream: abort with gRPC status N (Estimate answers)
    "pushback:MS"     stream: RESOURCE_EXHAUSTED with a grpc-retry-pushback-ms MS trailer
    "rawchunk:HEX"    stream: one message of exactly these bytes (a malformed chunk)
    "slow:S"          stream: sleep S seconds, then 2 chunks
    "flood:N"         stream: N chunks of 1 KiB as fast as flow control allows
    "sleep:S"         estimate: sleep S seconds
    "stats"           estimate: in_tokens = chunks produced by floods, out_tokens = max
                      concurrent Stream calls seen, usd_micros = floods stopped by cancel
    anything else     a fixed Estimate / two chunks

Usage: python grpcio_server.py [--max-concurrent-streams N] [--tls CERT KEY]
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

import atp_proto.adapters.proto.atp.adapter.v1 as pb
from atp_proto.adapters.grpc.status import SERVICE

CODES = {c.value[0]: c for c in grpc.StatusCode}
lock = threading.Lock()
stats = {"active": 0, "max_active": 0, "produced": 0, "cancelled": 0}


def _maybe_abort(prompt: str, ctx: grpc.ServicerContext) -> None:
    if prompt.startswith("status:"):
        _, code, *msg = prompt.split(":", 2)
        ctx.abort(CODES[int(code)], msg[0] if msg else "test status")


def estimate(data: bytes, ctx: grpc.ServicerContext) -> bytes:
    req = pb.EstimateRequest().parse(data)
    p = req.task.prompt
    _maybe_abort(p, ctx)
    if p.startswith("sleep:"):
        time.sleep(float(p[6:]))
    if p == "stats":
        with lock:
            return bytes(
                pb.Estimate(
                    in_tokens=stats["produced"],
                    out_tokens=stats["max_active"],
                    usd_micros=stats["cancelled"],
                )
            )
    mt = req.task.max_tokens
    return bytes(
        pb.Estimate(
            in_tokens=len(p),
            out_tokens=7 if mt is None else mt,
            usd_micros=42,
            latency_p95_ms=12.5,
            variance=3.0,
            confidence=0.75,
        )
    )


def stream(data: bytes, ctx: grpc.ServicerContext):  # type: ignore[no-untyped-def]
    req = pb.StreamRequest().parse(data)
    p = req.task.prompt
    with lock:
        stats["active"] += 1
        stats["max_active"] = max(stats["max_active"], stats["active"])
    try:
        _maybe_abort(p, ctx)
        if p.startswith("streamstatus:"):
            _maybe_abort(p[6:], ctx)
        if p.startswith("pushback:"):
            ctx.set_trailing_metadata((("grpc-retry-pushback-ms", p[9:]),))
            ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        if p.startswith("rawchunk:"):
            yield bytes.fromhex(p[9:])
            return
        if p.startswith("flood:"):
            n = int(p[6:])
            done = []

            def on_end() -> None:  # runs when the RPC terminates (e.g. RST_STREAM)
                if not done:
                    with lock:
                        stats["cancelled"] += 1

            ctx.add_callback(on_end)
            for i in range(n):
                with lock:
                    stats["produced"] += 1
                yield bytes(pb.StreamChunk(content="x" * 1024, confidence=0.5, tokens=i + 1))
            done.append(True)
            yield bytes(pb.StreamChunk(final=True, finish_reason="stop", tokens=n))
            return
        if p.startswith("slow:"):
            time.sleep(float(p[5:]))
        yield bytes(pb.StreamChunk(content="hel", confidence=0.5, tokens=3, usd_micros=10))
        yield bytes(
            pb.StreamChunk(
                content="lo",
                confidence=0.6,
                tokens=5,
                usd_micros=20,
                final=True,
                finish_reason="stop",
            )
        )
    finally:
        with lock:
            stats["active"] -= 1


def health(data: bytes, ctx: grpc.ServicerContext) -> bytes:
    return bytes(pb.HealthReply(status=pb.Status.READY, p95_ms=3.5, error_rate=0.25, capacity=9))


def main() -> None:
    args = sys.argv[1:]
    options = []
    if "--max-concurrent-streams" in args:
        options.append(
            ("grpc.max_concurrent_streams", int(args[args.index("--max-concurrent-streams") + 1]))
        )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=options)
    handler = grpc.method_handlers_generic_handler(
        SERVICE.lstrip("/"),  # grpcio names the service without the leading slash
        {
            "Estimate": grpc.unary_unary_rpc_method_handler(estimate),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Health": grpc.unary_unary_rpc_method_handler(health),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if "--tls" in args:
        i = args.index("--tls")
        cert = Path(args[i + 1]).read_bytes()
        key = Path(args[i + 2]).read_bytes()
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"grpcio adapter listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
