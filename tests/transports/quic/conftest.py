"""Fixtures for the QUIC binding's tests: a router serving QUIC on a loopback UDP port
(port 0) with a test certificate, and a seeded lossy UDP relay."""

from __future__ import annotations

import random
import secrets
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import trio

from atp_proto.adapters import connect as connect_adapter
from atp_proto.router import Router, RouterConfig
from atp_proto.testing.certs import CertFiles, make_cert

SECRET = secrets.token_hex(32)


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(tmp_path_factory.mktemp("quic-certs"))


@pytest.fixture
def jwt_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATP_JWT_KEY", SECRET)
    return SECRET


@pytest.fixture
async def quic_router(nursery: trio.Nursery, cert: CertFiles) -> Callable[..., Any]:
    """``await quic_router(adapters={...}, **config_fields)`` -> a running Router."""

    async def start(adapters: dict[str, str] | None = None, **fields: Any) -> Router:
        cfg = RouterConfig(
            ws_port=0,
            metrics_port=None,
            auth=fields.pop("auth", False),
            quic_port=0,
            cert_file=cert.cert,
            key_file=cert.key,
        )
        cfg = replace(cfg, **fields)
        urls = adapters or {"persona": "builtin:persona?latency_ms=1"}
        router = Router(cfg, {n: connect_adapter(n, u) for n, u in urls.items()})
        await nursery.start(router.serve)
        return router

    return start


class LossyRelay:
    """A UDP relay on loopback between one client and the router that drops, duplicates
    and reorders a share of the datagrams in both directions, from a seeded RNG.
    ``blackhole = True`` drops everything (a client that vanished)."""

    def __init__(self, target: int, *, seed: int, drop: float, dup: float, reorder: float) -> None:
        self.target = ("127.0.0.1", target)
        self.rng = random.Random(seed)
        self.drop, self.dup, self.reorder = drop, dup, reorder
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client: tuple[str, int] | None = None
        self.blackhole = False
        self.counts = {"in": 0, "dropped": 0, "duplicated": 0, "reordered": 0, "retry": 0}
        self._held: dict[bool, tuple[bytes, Any] | None] = {True: None, False: None}

    async def bind(self) -> int:
        await self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    async def run(self) -> None:
        while True:
            data, addr = await self.sock.recvfrom(65536)
            self.counts["in"] += 1
            upstream = addr != self.target
            if upstream:
                self.client = addr
                dest: Any = self.target
            else:
                if data and data[0] & 0xF0 == 0xF0:  # a long-header Retry packet (QUIC v1)
                    self.counts["retry"] += 1
                dest = self.client
            if dest is None or self.blackhole:
                continue
            await self._forward(data, dest, upstream)

    async def _forward(self, data: bytes, dest: Any, direction: bool) -> None:
        rng = self.rng
        if rng.random() < self.drop:
            self.counts["dropped"] += 1
            return
        held = self._held[direction]
        if held is None and rng.random() < self.reorder:
            self._held[direction] = (data, dest)  # goes after the next datagram
            self.counts["reordered"] += 1
            return
        await self.sock.sendto(data, dest)
        if rng.random() < self.dup:
            self.counts["duplicated"] += 1
            await self.sock.sendto(data, dest)
        if held is not None:
            self._held[direction] = None
            await self.sock.sendto(*held)


@pytest.fixture
async def lossy_relay(nursery: trio.Nursery) -> Callable[..., Any]:
    async def start(target: int, **kw: Any) -> tuple[LossyRelay, int]:
        relay = LossyRelay(target, **kw)
        port = await relay.bind()
        nursery.start_soon(relay.run)
        return relay, port

    return start


@pytest.fixture
def udp_offload(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Parametrize indirectly with True / False: every QUIC socket this test opens (the
    router's and the client's, both in this process) uses UDP GSO / GRO where the kernel
    has them, or neither (``_quic_udp.OFFLOAD``)."""
    from atp_proto.transports import _quic_udp

    on = bool(getattr(request, "param", True))
    monkeypatch.setattr(_quic_udp, "OFFLOAD", on)
    return on
