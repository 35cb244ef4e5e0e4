"""A broken adapter server: the SDK's own server with its request validation removed, as
a vendor who wrote their own server might, so an empty prompt is answered (the rule:
ATP-ADAPT-021). Run: ``python -m tests.conformance.broken_adapters.answers_empty_prompt
--listen 127.0.0.1:0``; prints ``adapter ... listening on HOST:PORT``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from atp_proto.adapters import TaskRequest
from atp_proto.adapters.proto import codec
from atp_proto.adapters.sdk import AdapterServer, serve

from .variants import Correct


class LenientServer(AdapterServer):
    def _parse(self, data: bytes | None, stream: Any) -> TaskRequest:
        if data is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "missing request message")
        try:
            return codec.decode_task_request(data)
        except codec.DecodeError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"bad request: {exc}") from None


async def main(host: str, port: int) -> None:
    from atp_proto.adapters import sdk

    sdk.AdapterServer = LenientServer  # type: ignore[misc]  # serve() builds this class
    await serve(
        Correct(),
        host,
        port,
        name="answers-empty-prompt",
        grace=0.5,
        on_listening=lambda s: print(
            f"adapter answers-empty-prompt listening on {host}:{s.port}", flush=True
        ),
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:0")
    a = p.parse_args()
    h, _, prt = a.listen.rpartition(":")
    asyncio.run(main(h, int(prt)))
