"""``Estimate.max_age_ms`` (ATP-BUDGET-018, ATP-ADAPT-027) on the adapter side: the SDK's
``estimate_max_age_ms`` default (0) and a vendor's own per-reply value, over the real
grpclib server and client on loopback; the persona / echo ``max_age_ms`` option served by
a real ``atp adapter serve`` process and read by our gRPC client. The router's reuse is in
tests/router/test_estimate_cache.py and tests/conformance/test_router_estimate.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from conftest import serve_adapter
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError

from atp_proto.adapters import CostEstimate, TaskRequest
from atp_proto.adapters.builtin import ASYNCIO, behaviour_adapter
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.grpc.server import RawCodec
from atp_proto.adapters.grpc.status import method_path
from atp_proto.adapters.proto import codec
from atp_proto.adapters.sdk import AdapterServer

REQ = TaskRequest("qa", "how far is the moon?", request_id="r1")
ESTIMATE = method_path("Estimate")


class Vendor:
    """An adapter whose estimate says its own max_age_ms (``age``; None: leaves it 0)."""

    def __init__(self, age: int | None) -> None:
        self.age = age

    async def estimate(self, req: TaskRequest) -> CostEstimate:
        est = CostEstimate(5, 10, 20, 30.0)
        return est if self.age is None else replace(est, max_age_ms=self.age)

    async def stream(self, req: TaskRequest):  # pragma: no cover - not called
        raise NotImplementedError
        yield


def _estimate_via_sdk(vendor: Vendor, **server_kw: int) -> CostEstimate | GRPCError:
    async def main() -> CostEstimate | GRPCError:
        server = AdapterServer(vendor, grace=1.0, **server_kw)
        port = await server.start("127.0.0.1", 0)
        channel = Channel("127.0.0.1", port, codec=RawCodec())
        try:
            async with asyncio.timeout(10):
                try:
                    async with channel.request(
                        ESTIMATE, Cardinality.UNARY_UNARY, bytes, bytes
                    ) as s:
                        await s.send_message(codec.encode_task_request(REQ), end=True)
                        data = await s.recv_message()
                        await s.recv_trailing_metadata()
                except GRPCError as exc:
                    return exc
        finally:
            channel.close()
            await server.drain()
        assert data is not None
        return codec.decode_estimate(data)

    return asyncio.run(main())


def test_sdk_default_is_no_reuse() -> None:
    got = _estimate_via_sdk(Vendor(None))
    assert isinstance(got, CostEstimate) and got.max_age_ms == 0


def test_sdk_estimate_max_age_fills_replies_that_leave_it_zero() -> None:
    got = _estimate_via_sdk(Vendor(None), estimate_max_age_ms=750)
    assert isinstance(got, CostEstimate) and got.max_age_ms == 750
    own = _estimate_via_sdk(Vendor(40), estimate_max_age_ms=750)  # the vendor knows better
    assert isinstance(own, CostEstimate) and own.max_age_ms == 40


def test_sdk_refuses_a_max_age_that_is_not_a_uint32() -> None:
    with pytest.raises(ValueError, match="estimate_max_age_ms"):
        AdapterServer(Vendor(None), estimate_max_age_ms=-1)
    got = _estimate_via_sdk(Vendor(2**32))
    assert isinstance(got, GRPCError) and got.status.name == "INTERNAL"


def test_builtin_option_is_checked() -> None:
    assert behaviour_adapter("persona", {}).config.max_age_ms == 0
    assert behaviour_adapter("persona", {"max_age_ms": "250"}).config.max_age_ms == 250
    for bad in ("-1", str(2**32), "soon"):
        with pytest.raises(ValueError, match=r"max_age_ms|bad adapter option"):
            behaviour_adapter("echo", {"max_age_ms": bad}, waits=ASYNCIO)


async def test_persona_process_sends_its_max_age(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve_adapter(tmp_path, "persona", "--option", "max_age_ms=1500") as proc,
            GrpcAdapter.from_url("p", proc.url) as remote,
        ):
            est = await remote.estimate(REQ)
            local = await behaviour_adapter("persona", {"max_age_ms": "1500"}).estimate(REQ)
        assert est == local and est.max_age_ms == 1500
        async with (
            serve_adapter(tmp_path, "persona") as proc,
            GrpcAdapter.from_url("p", proc.url) as remote,
        ):
            assert (await remote.estimate(REQ)).max_age_ms == 0
