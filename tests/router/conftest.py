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
from atp_proto.router import Router, RouterConfig

SECRET = secrets.token_hex(32)


@pytest.fixture
def jwt_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATP_JWT_KEY", SECRET)
    return SECRET


RouterFactory = Callable[..., Any]


@pytest.fixture
async def start_router(nursery: trio.Nursery) -> RouterFactory:
    """``await start_router(adapters={...}, **config_fields)`` -> running Router."""

    async def start(adapters: dict[str, str] | None = None, **fields: Any) -> Router:
        cfg = RouterConfig(ws_port=0, metrics_port=0, auth=fields.pop("auth", False))
        cfg = replace(cfg, **fields)
        urls = adapters or {"echo": "builtin:echo", "persona": "builtin:persona?latency_ms=1"}
        router = Router(cfg, {n: connect_adapter(n, u) for n, u in urls.items()})
        await nursery.start(router.serve)
        return router

    return start


def ws_url(router: Router, query: str = "") -> str:
    return f"ws://127.0.0.1:{router.ws_port}/ws{query}"
