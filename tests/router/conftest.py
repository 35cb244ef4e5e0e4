"""Fixtures: a real router on a loopback port (port 0), in the test's own nursery.

Rules (as trio-websocket's own tests): port 0, a deadline on every test (tests/conftest.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import trio

from atp_proto.adapters import connect as connect_adapter
from atp_proto.client import connect
from atp_proto.router import Router, RouterConfig
from atp_proto.testing.certs import CertFiles, make_cert

SECRET = secrets.token_hex(32)


@pytest.fixture
def jwt_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATP_JWT_KEY", SECRET)
    return SECRET


RouterFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def quic_cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """The routers' certificate (QUIC needs one); clients trust it as their CA."""
    return make_cert(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def start_router(nursery: trio.Nursery, quic_cert: CertFiles) -> RouterFactory:
    """``await start_router(adapters={...}, **config_fields)`` -> running Router, serving
    WebSocket and QUIC (spec §13.2) on loopback ports."""

    async def start(adapters: dict[str, str] | None = None, **fields: Any) -> Router:
        cfg = RouterConfig(
            ws_port=0,
            metrics_port=0,
            auth=fields.pop("auth", False),
            quic_port=0,
            cert_file=quic_cert.cert,
            key_file=quic_cert.key,
        )
        cfg = replace(cfg, **fields)
        urls = adapters or {"echo": "builtin:echo", "persona": "builtin:persona?latency_ms=1"}
        router = Router(cfg, {n: connect_adapter(n, u) for n, u in urls.items()})
        await nursery.start(router.serve)
        return router

    return start


def ws_url(router: Router, query: str = "") -> str:
    return f"ws://127.0.0.1:{router.ws_port}/ws{query}"


def quic_url(router: Router) -> str:
    return f"quic://127.0.0.1:{router.quic_port}"


@pytest.fixture(params=["ws", "quic"])
def transport(request: pytest.FixtureRequest) -> str:
    """The binding a transport-neutral end-to-end test runs over (spec §13.1, §13.2)."""
    return str(request.param)


@pytest.fixture
def connect_to(transport: str, quic_cert: CertFiles) -> Callable[..., Any]:
    """``connect_to(router, **kwargs)``: :func:`atp_proto.client.connect` over the
    ``transport`` of this test run (the same scenario, both bindings)."""

    def open_client(router: Router, **kwargs: Any) -> Any:
        if transport == "quic":
            return connect(quic_url(router), ca_file=quic_cert.cert, **kwargs)
        return connect(ws_url(router), **kwargs)

    return open_client
