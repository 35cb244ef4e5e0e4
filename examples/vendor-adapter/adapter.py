"""A vendor's ATP adapter in plain Python gRPC (grpcio), without the atp_proto SDK.

Written from conformance/ADAPTERS.md and the service's .proto alone: it implements
`atp.adapter.v1.AdapterService` (Estimate, Stream, Health) with grpcio's asyncio server,
loading `adapter.proto` at start with `grpc.protos_and_services` (grpcio-tools), so no
generated code is kept. It answers with the prompt's words, one chunk each.

How it meets each rule of the adapter contract (spec/atp-v1.md §15):

- one final chunk, the last; cumulative tokens and usd_micros; confidence in [0, 1]
  (ATP-ADAPT-007, ATP-ADAPT-018..020): `stream()`;
- bad tasks refused with INVALID_ARGUMENT before any chunk (ATP-ADAPT-010, ATP-ADAPT-021):
  `task_of()`; requests arrive as raw bytes and are parsed in the handler, because
  grpcio answers a request its deserializer cannot parse (bytes that are not protobuf, a
  string that is not UTF-8) with UNKNOWN, not INVALID_ARGUMENT; JSON nested too deep
  (RecursionError in `json.loads`) is a bad task too (ATP-SEC-012);
- work stops on cancellation and at the deadline (ATP-ADAPT-008): grpcio cancels the
  handler's task; `_in_flight` counts calls whose work has not stopped, and Health sends
  it as the `atp-calls-in-flight` response header (ATP-ADAPT-022, ATP-ADAPT-024).

`--misbehave RULE` breaks one rule on purpose, to see the suite name it (a demonstration,
not something an adapter would ship): `usage` (tokens per chunk instead of cumulative),
`cancel` (the model goes on after a cancellation), `final` (no final chunk), `invalid`
(grpcio's own deserializer: a request that does not decode gets UNKNOWN).

    python examples/vendor-adapter/adapter.py --listen 127.0.0.1:7070
    atp conformance run --role adapter --target grpc://127.0.0.1:7070
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

_PROTO_ROOT = Path(__file__).resolve().parents[2] / "atp_proto" / "adapters" / "proto"
_PROTO = "atp/adapter/v1/adapter.proto"
_SERVICE = "atp.adapter.v1.AdapterService"
_MAX_PROMPT = 1 << 20  # bytes: a bigger prompt is a bad task here
_CHUNK_DELAY_S = 0.002  # a pretend model: one word every 2 ms
_PRICE = 2  # usd_micros per token


def load_messages(root: Path) -> Any:
    """The .proto's message classes, compiled at start (ATP_ADAPTER_PROTO_ROOT: a copy)."""
    sys.path.insert(0, str(root))
    protos, _services = grpc.protos_and_services(_PROTO)  # type: ignore[attr-defined]
    return protos


class Adapter:
    """The three calls of the service, on raw request bytes."""

    def __init__(self, pb: Any, misbehave: str = "") -> None:
        self.pb = pb
        self.misbehave = misbehave
        self._in_flight = 0
        self._leaked: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------- validation

    async def task_of(self, raw: Any, request_type: Any, context: Any) -> Any:
        """The request's task, or the call aborted with INVALID_ARGUMENT."""
        if self.misbehave == "invalid":
            request = raw  # already parsed by grpcio (see serve())
        else:
            try:
                request = request_type.FromString(raw)
            except (DecodeError, UnicodeDecodeError) as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {exc}")
        task = request.task
        problem = self._problem(task)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return task

    @staticmethod
    def _problem(task: Any) -> str:
        if not task.prompt:
            return "task.prompt is empty"
        if len(task.prompt.encode()) > _MAX_PROMPT:
            return f"task.prompt is over {_MAX_PROMPT} bytes"
        if task.HasField("max_tokens") and task.max_tokens < 0:
            return f"task.max_tokens is negative ({task.max_tokens})"
        for name in ("content_json", "meta_json"):
            text = getattr(task, name)
            if not text:
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                return f"task.{name} is not JSON: {type(exc).__name__}"
            if not isinstance(value, dict):
                return f"task.{name} is not a JSON object"
        return ""

    # ------------------------------------------------------------------- calls

    async def estimate(self, raw: Any, context: Any) -> Any:
        task = await self.task_of(raw, self.pb.EstimateRequest, context)
        words = len(task.prompt.split())
        out = min(words, task.max_tokens) if task.HasField("max_tokens") else words
        return self.pb.Estimate(
            in_tokens=words,
            out_tokens=out,
            usd_micros=(words + out) * _PRICE,
            latency_p95_ms=out * _CHUNK_DELAY_S * 1000 * 1.5 + 5,
            variance=1.0,
            confidence=0.7,
        )

    async def stream(self, raw: Any, context: Any) -> AsyncIterator[Any]:
        task = await self.task_of(raw, self.pb.StreamRequest, context)
        words = task.prompt.split()
        if task.HasField("max_tokens"):
            words = words[: task.max_tokens]
        # The "model" runs in its own task, as a call to an upstream model would, and hands
        # its words over a queue of one: it produces no faster than gRPC sends.
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
        model = asyncio.create_task(self._model(words, queue))
        try:
            tokens = len(task.prompt.split())  # cumulative: input + output so far
            while (word := await queue.get()) is not None:
                tokens = tokens + 1 if self.misbehave != "usage" else 1  # usage: per chunk
                yield self.pb.StreamChunk(
                    content=word, confidence=0.7, tokens=tokens, usd_micros=tokens * _PRICE
                )
            if self.misbehave != "final":
                final = tokens if self.misbehave != "usage" else 0  # usage: nothing new
                yield self.pb.StreamChunk(
                    confidence=0.7,
                    tokens=final,
                    usd_micros=final * _PRICE,
                    final=True,
                    finish_reason="length" if len(words) < len(task.prompt.split()) else "stop",
                )
        finally:
            # Cancelled (RST_STREAM) or past its deadline, grpcio cancels this generator:
            # stop the model too (ATP-ADAPT-008). --misbehave cancel forgets to.
            if self.misbehave != "cancel":
                model.cancel()
            else:
                self._leaked.add(model)

    async def _model(self, words: list[str], queue: asyncio.Queue[str | None]) -> None:
        self._in_flight += 1
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(_CHUNK_DELAY_S)
                await queue.put(word[:65536] + ("" if i == len(words) - 1 else " "))
            await queue.put(None)
        finally:
            self._in_flight -= 1

    async def health(self, raw: Any, context: Any) -> Any:
        await context.send_initial_metadata((("atp-calls-in-flight", str(self._in_flight)),))
        return self.pb.HealthReply(status=self.pb.STATUS_READY, p95_ms=50.0, error_rate=0.0)


def handlers(adapter: Adapter) -> grpc.GenericRpcHandler:
    """The service's methods; requests stay bytes unless --misbehave invalid."""
    pb = adapter.pb

    def parse(message_type: Any) -> Callable[[bytes], Any] | None:
        return message_type.FromString if adapter.misbehave == "invalid" else None

    return grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Estimate": grpc.unary_unary_rpc_method_handler(
                adapter.estimate,
                request_deserializer=parse(pb.EstimateRequest),
                response_serializer=pb.Estimate.SerializeToString,
            ),
            "Stream": grpc.unary_stream_rpc_method_handler(
                adapter.stream,
                request_deserializer=parse(pb.StreamRequest),
                response_serializer=pb.StreamChunk.SerializeToString,
            ),
            "Health": grpc.unary_unary_rpc_method_handler(
                adapter.health,
                request_deserializer=pb.HealthRequest.FromString,
                response_serializer=pb.HealthReply.SerializeToString,
            ),
        },
    )


async def serve(listen: str, misbehave: str) -> None:
    root = Path(os.environ.get("ATP_ADAPTER_PROTO_ROOT", _PROTO_ROOT))
    adapter = Adapter(load_messages(root), misbehave)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(adapter),))
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"adapter.py: error: cannot listen on {listen}")
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"vendor adapter listening on {host}:{port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="A vendor's ATP adapter in plain grpcio.")
    parser.add_argument("--listen", default="127.0.0.1:7070", help="HOST:PORT (port 0: any)")
    parser.add_argument(
        "--misbehave",
        choices=["", "usage", "cancel", "invalid", "final"],
        default="",
        help="break one rule of the contract on purpose, to see the suite name it",
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a quiet stop
        asyncio.run(serve(args.listen, args.misbehave))


if __name__ == "__main__":
    main()
