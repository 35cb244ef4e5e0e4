"""Interoperability with the official gRPC stack, over real sockets between real processes:
our trio client against a grpcio server, and a grpcio client against an SDK adapter."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import grpc
import pytest
import trio
from conftest import grpcio_server, serve_adapter

import atp_proto.adapters.proto.atp.adapter.v1 as pb
from atp_proto.adapters import AdapterError, Chunk, CostEstimate, Health, TaskRequest, registry
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.grpc.status import method_path
from atp_proto.frames import ErrorCode


async def test_trio_client_against_grpcio_server(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with grpcio_server(tmp_path) as srv, GrpcAdapter.from_url("g", srv.url) as a:
            req = TaskRequest("t", "hello", {"n": 2**60}, 0, {"lane": "gold"}, "rid-1")
            assert await a.estimate(req) == CostEstimate(5, 0, 42, 12.5, 3.0, 0.75)
            chunks = [c async for c in a.stream(req)]
            assert chunks == [
                Chunk("hel", 0.5, 3, 10),
                Chunk("lo", 0.6, 5, 20, final=True, finish_reason="stop"),
            ]
            assert await a.health() == Health("READY", 3.5, 0.25, 9)
            # many calls multiplexed on one connection
            async with trio.open_nursery() as n:
                for _ in range(40):
                    n.start_soon(a.estimate, req)
            assert a.connects == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (grpc.StatusCode.UNAVAILABLE, ErrorCode.EAGENTDOWN),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ErrorCode.ETIMEOUT),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorCode.EWINDOW_AGENT),
        (grpc.StatusCode.INVALID_ARGUMENT, ErrorCode.EPROTO),
        (grpc.StatusCode.UNAUTHENTICATED, ErrorCode.ESEC),
        (grpc.StatusCode.PERMISSION_DENIED, ErrorCode.ESEC),
        (grpc.StatusCode.INTERNAL, ErrorCode.EAGENTDOWN),
        (grpc.StatusCode.UNIMPLEMENTED, ErrorCode.EAGENTDOWN),
    ],
)
async def test_status_mapping(tmp_path: Path, status: grpc.StatusCode, code: ErrorCode) -> None:
    with trio.fail_after(30):
        async with grpcio_server(tmp_path) as srv, GrpcAdapter.from_url("g", srv.url) as a:
            prompt = f"status:{status.value[0]}:why 100% / é"
            with pytest.raises(AdapterError) as ei:
                await a.estimate(TaskRequest("t", prompt))
            assert ei.value.code == code and "why 100% / é" in ei.value.message
            with pytest.raises(AdapterError) as ei:
                async for _ in a.stream(TaskRequest("t", prompt)):
                    pass
            assert ei.value.code == code and ei.value.streamed is False


async def test_max_concurrent_streams_is_respected(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with grpcio_server(tmp_path, "--max-concurrent-streams", "2") as srv:
            async with GrpcAdapter.from_url("g", srv.url) as a:
                results = []

                async def one() -> None:
                    results.append([c async for c in a.stream(TaskRequest("t", "slow:0.2"))])

                async with trio.open_nursery() as n:
                    for _ in range(6):
                        n.start_soon(one)
                assert len(results) == 6 and all(len(r) == 2 for r in results)
                stats = await a.estimate(TaskRequest("t", "stats"))
                assert stats.out_tokens <= 2  # never more than 2 Stream calls at once


async def test_flow_control_bounds_a_slow_reader_and_cancel_resets(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with grpcio_server(tmp_path) as srv, GrpcAdapter.from_url("g", srv.url) as a:
            n = 0
            async for _ in a.stream(TaskRequest("t", "flood:20000")):
                n += 1
                if n == 3:
                    await trio.sleep(0.5)  # the server runs as far ahead as it can
                    stats = await a.estimate(TaskRequest("t", "stats"))
                    # 20 MB requested; flow control stops it near one 64 KiB window
                    assert stats.in_tokens < 200, stats
                if n == 5:
                    break  # leaves the call: RST_STREAM(CANCEL)
            for _ in range(100):
                stats = await a.estimate(TaskRequest("t", "stats"))
                if stats.usd_micros:
                    break
                await trio.sleep(0.05)
            assert stats.usd_micros == 1  # the server saw the cancellation
            assert stats.in_tokens < 200
            # the connection is still healthy after the reset
            assert len([c async for c in a.stream(TaskRequest("t", "x"))]) == 2


async def test_deadline_is_sent_and_enforced(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with grpcio_server(tmp_path) as srv, GrpcAdapter.from_url("g", srv.url) as a:
            with pytest.raises(AdapterError) as ei:
                await a.estimate(TaskRequest("t", "sleep:2", deadline_ms=200))
            assert ei.value.code == ErrorCode.ETIMEOUT
            with pytest.raises(AdapterError) as ei:
                async for _ in a.stream(TaskRequest("t", "slow:2", deadline_ms=200)):
                    pass
            assert ei.value.code == ErrorCode.ETIMEOUT and not ei.value.streamed


async def test_server_killed_mid_stream_then_reconnect(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(
            tmp_path, "vendor_fixtures:Slow", "--option", "delay=0.05", "--option", "n=100"
        ) as proc:
            port = proc.port
            async with GrpcAdapter.from_url("s", proc.url, backoff_initial=0.05) as a:
                got = 0
                with pytest.raises(AdapterError) as ei:
                    async for _ in a.stream(TaskRequest("t", "x")):
                        got += 1
                        if got == 2:
                            proc.kill()
                assert ei.value.code == ErrorCode.EAGENTDOWN and ei.value.streamed is True
                with pytest.raises(AdapterError) as ei:
                    await a.estimate(TaskRequest("t", "x"))
                assert ei.value.code == ErrorCode.EAGENTDOWN and ei.value.retry_after_ms
                # back on the same port: the client reconnects after its backoff
                async with serve_adapter(tmp_path, "vendor_fixtures:Minimal", port=port):
                    for _ in range(100):
                        try:
                            await a.estimate(TaskRequest("t", "x"))
                            break
                        except AdapterError as exc:
                            assert exc.code == ErrorCode.EAGENTDOWN
                            await trio.sleep((exc.retry_after_ms or 50) / 1000)
                    assert a.connects == 2


async def test_ownership_is_mandatory(tmp_path: Path) -> None:
    """The connection tasks run in an owner's nursery (``run`` / ``async with`` /
    ``registry.start``); without one a call fails at once and starts no task (there is
    no fire-and-forget system-task mode any more)."""
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, "echo") as proc:
            # owned by a nursery via run()
            a = GrpcAdapter.from_url("a", proc.url)
            async with trio.open_nursery() as n:
                await n.start(a.run)
                assert (await a.health()).status == "READY"
                n.cancel_scope.cancel()
            with pytest.raises(AdapterError):
                await a.health()  # closed with its owner
            # no owner: a clear error, and nothing runs
            b = GrpcAdapter.from_url("b", proc.url)
            with pytest.raises(RuntimeError, match="no owner"):
                await b.health()
            assert not any("grpc b " in t.name for t in _all_tasks())
            await b.aclose()
            # the router's path: registry.start puts the tasks in the router's nursery
            c = registry.make_adapter("c", proc.url)
            async with trio.open_nursery() as n:
                await registry.start(n, c, health_interval_s=3600)
                assert (await c.health()).status == "READY"
                assert any("grpc c " in t.name for t in _all_tasks())
                n.cancel_scope.cancel()
            assert not any("grpc c " in t.name for t in _all_tasks())  # its tasks are gone
            # two owners at once are refused
            d = GrpcAdapter.from_url("d", proc.url)
            async with d:
                with pytest.raises(RuntimeError, match="already has an owner"):
                    await d.__aenter__()


def _all_tasks() -> list[trio.lowlevel.Task]:
    out, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        out.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return out


def _grpcio_calls(
    port: int,
) -> tuple[pb.Estimate, list[pb.StreamChunk], pb.HealthReply, grpc.StatusCode]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        est = ch.unary_unary(
            method_path("Estimate"),
            request_serializer=bytes,
            response_deserializer=pb.Estimate().parse,
        )
        st = ch.unary_stream(
            method_path("Stream"),
            request_serializer=bytes,
            response_deserializer=lambda b: pb.StreamChunk().parse(b),
        )
        he = ch.unary_unary(
            method_path("Health"),
            request_serializer=bytes,
            response_deserializer=pb.HealthReply().parse,
        )
        task = pb.Task(task_type="t", prompt="abcdefgh", content_json='{"a":1}', max_tokens=5)
        e = est(pb.EstimateRequest(task), timeout=10)
        chunks = list(st(pb.StreamRequest(task), timeout=10))
        h = he(pb.HealthRequest(), timeout=10)
        try:
            est(pb.EstimateRequest(pb.Task(prompt="")), timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        return e, chunks, h, code


async def test_grpcio_client_against_sdk_adapter(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, "echo?chunks=4&usd_per_1k=1000") as proc:
            e, chunks, h, code = await trio.to_thread.run_sync(_grpcio_calls, proc.port)
    assert (e.in_tokens, e.out_tokens, e.usd_micros, e.confidence) == (2, 2, 4, 0.1)
    assert "".join(c.content for c in chunks) == "abcdefgh" and chunks[-1].final
    assert [c.tokens for c in chunks] == [3, 4, 5, 6]
    assert h.status == pb.Status.READY
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    c, k = tmp_path / "cert.pem", tmp_path / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


async def test_tls_with_alpn_h2(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with trio.fail_after(30):
        async with grpcio_server(tmp_path, "--tls", str(cert), str(key)) as srv:
            url = f"grpcs://127.0.0.1:{srv.port}?ca={cert}&server_hostname=localhost"
            async with GrpcAdapter.from_url("tls", url) as a:
                assert (await a.estimate(TaskRequest("t", "hello"))).usd_micros == 42
                assert len([c async for c in a.stream(TaskRequest("t", "x"))]) == 2
            # an untrusted certificate is refused
            async with GrpcAdapter.from_url("tls", f"grpcs://127.0.0.1:{srv.port}") as b:
                with pytest.raises(AdapterError) as ei:
                    await b.health()
                assert ei.value.code == ErrorCode.EAGENTDOWN and "TLS" in ei.value.message


def test_from_url_validation() -> None:
    for bad in (
        "grpc://host",
        "http://h:1",
        "grpc://h:1/path",
        "grpc://h:1?x=1",
        "grpc://h:1?insecure=1",
        "grpc://h:99999",
    ):
        with pytest.raises(ValueError):
            GrpcAdapter.from_url("x", bad)
    assert GrpcAdapter.from_url("x", "grpc://[::1]:7070").host == "::1"
    assert math.isclose(
        GrpcAdapter.from_url("x", "grpc://h:1?timeout_s=2.5").estimate_timeout or 0, 2.5
    )
