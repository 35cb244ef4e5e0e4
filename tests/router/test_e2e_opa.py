"""End to end: the policy on an external OPA server over its REST data API (ATP-SEC-017).

The real ``opa`` binary is not packaged for Debian, so the server here is a small
OPA-compatible one on loopback (:mod:`._http_server`): ``POST /v1/data/atp/policy``
with ``{"input": ...}`` answers ``{"result": ...}``, evaluated with regopy from the
example policy, as OPA would. The router is a real ``atp serve --opa-url`` process in
front of a real gRPC adapter process. When OPA is down or too slow, streams are refused
with EAGENTDOWN saying so (fail closed), never served.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from atp_proto.adapters.process import spawn_adapter
from atp_proto.client import StreamError, connect
from atp_proto.router.routing.rego import RegoEngine

from ._helpers_e2e import ROOT, RouterProcess, clean_env
from ._http_server import LoopbackHttp

EXAMPLE = ROOT / "examples" / "policy" / "policy.rego"


class FakeOpa:
    def __init__(self) -> None:
        self.engine = RegoEngine.load(EXAMPLE)
        self.delay_s = 0.0
        self.inputs: list[dict[str, Any]] = []
        self.http = LoopbackHttp(self.handle)

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method != "POST" or path != "/v1/data/atp/policy":
            return 404, {"code": "not_found"}
        await trio.sleep(self.delay_s)
        doc = json.loads(body)["input"]
        self.inputs.append(doc)
        return 200, {"result": self.engine.evaluate(doc)}


async def _ask(client: Any, meta: dict[str, Any]) -> tuple[str, str, int | None]:
    try:
        await client.ask("hello", meta=meta)
    except StreamError as exc:
        return str(exc.code), exc.message, exc.retry_after_ms
    return "ok", "", None


async def test_opa_decides_and_an_unreachable_opa_fails_closed(nursery: trio.Nursery) -> None:
    """[ATP-SEC-017, ATP-SEC-013] Decisions come from OPA's data API (the input document
    as docs/policy.md says); a denial names OPA's rule; a slow OPA times out and a dead
    one is unreachable: both refuse the stream with EAGENTDOWN and a retry hint."""
    opa = FakeOpa()
    opa_scope = trio.CancelScope()

    async def run_opa(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with opa_scope:
            await nursery.start(opa.http.serve)
            task_status.started()
            await trio.sleep_forever()

    await nursery.start(run_opa)
    async with spawn_adapter("echo") as cheap:

        def start() -> RouterProcess:
            return RouterProcess(
                "--no-auth",
                adapters={"cheap": cheap.url},
                config_toml="[policy]\nopa_timeout_s = 0.5\n",
                env=clean_env({"OPA_URL": opa.http.url}),
                cwd=ROOT,
            )

        router = await trio.to_thread.run_sync(start)
        try:
            async with connect(router.url) as client:
                assert (await _ask(client, {"data_scope": ["no_secrets"]}))[0] == "ok"
                code, msg, _ = await _ask(
                    client, {"tool_permissions": ["vault"], "data_scope": ["no_secrets"]}
                )
                assert code == "ESEC" and msg.endswith("(rule: no_secrets)")
                sent = opa.inputs[0]
                assert sent["task_type"] == "qa" and sent["data_scope"] == ["no_secrets"]
                assert sent["tenant"] == "local" and sent["adapters"] == ["cheap"]
                opa.delay_s = 2.0
                code, msg, retry = await _ask(client, {"data_scope": ["public"]})
                assert code == "EAGENTDOWN" and "timed out" in msg and "failing closed" in msg
                assert retry and retry > 0
                opa_scope.cancel()  # OPA is gone
                await trio.sleep(0.1)
                code, msg, retry = await _ask(client, {"tool_permissions": ["calculator"]})
                assert code == "EAGENTDOWN" and "unreachable" in msg and retry
        finally:
            await trio.to_thread.run_sync(router.stop)
