"""End to end: the policy engine in a real router process, with real gRPC adapter
processes (ATP-SEC-011, ATP-SEC-013, ATP-SEC-016..018).

``atp serve --policy examples/policy/policy.rego --routing-table ...`` in front of two
``atp adapter serve`` processes (``cheap``: echo, ``strong``: persona): denials name
their rule in the ESEC message; the example policy's tool_permissions / data_scope
rules hold; the policy file is swapped (non-atomically, half a file first) while
streams keep running, and every stream sees the old policy or the new one, never a
half-loaded one; a broken policy keeps the last good one; SIGHUP reloads.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from atp_proto.adapters.process import spawn_adapter
from atp_proto.client import StreamError, connect

from ._helpers_e2e import ROOT, RouterProcess, clean_env, http_get, metric_value

EXAMPLE = ROOT / "examples" / "policy" / "policy.rego"
TABLE = ROOT / "examples" / "policy" / "routing.toml"


@asynccontextmanager
async def _stack(*args: str, config_toml: str | None = None) -> AsyncIterator[RouterProcess]:
    """Two real adapter processes and a real router process in front of them."""
    async with (
        spawn_adapter("echo") as cheap,
        spawn_adapter("persona", options={"latency_ms": "2"}) as strong,
    ):
        adapters = {"cheap": cheap.url, "strong": strong.url}

        def start() -> RouterProcess:
            return RouterProcess(
                "--no-auth",
                *args,
                adapters=adapters,
                config_toml=config_toml,
                env=clean_env(),
                cwd=ROOT,
            )

        router = await trio.to_thread.run_sync(start)
        try:
            yield router
        finally:
            await trio.to_thread.run_sync(router.stop)


async def _outcome(client: Any, **kw: Any) -> tuple[str, str, Any]:
    """(code or "ok", message, final)"""
    try:
        final = await client.ask("what is 2+2?", **kw)
    except StreamError as exc:
        return str(exc.code), exc.message, None
    return "ok", "", final


async def _metrics(router: RouterProcess) -> str:
    assert router.metrics_port is not None
    status, body = await http_get(router.metrics_port, "/metrics")
    assert status == 200
    return body


async def test_denials_name_the_rule_through_real_processes() -> None:
    """[ATP-SEC-013, ATP-SEC-016, ATP-SEC-011] The example policy in a real router: a
    secret-reading tool under no_secrets, a tool not permitted and an unknown scope end
    ESEC with ``(rule: RULE)``; internal data never reaches the external adapter even
    when the client asks for both; the seed's own meta is served; /metrics names the
    loaded version."""
    async with _stack("--policy", str(EXAMPLE), "--routing-table", str(TABLE)) as router:
        async with connect(router.url) as client:
            code, msg, _ = await _outcome(
                client, meta={"tool_permissions": ["secrets.read"], "data_scope": ["no_secrets"]}
            )
            assert code == "ESEC" and msg.endswith("(rule: no_secrets)") and "reads secrets" in msg
            code, msg, _ = await _outcome(client, meta={"tool_permissions": ["shell"]})
            assert code == "ESEC" and msg.endswith("(rule: tool_permissions)")
            code, msg, _ = await _outcome(client, meta={"data_scope": ["classified"]})
            assert code == "ESEC" and msg.endswith("(rule: data_scope)")
            # denied before any adapter was called
            assert "atp_adapter_calls_total{" not in await _metrics(router)
            seed_meta = {"tool_permissions": [], "data_scope": ["no_secrets"]}
            code, _, final = await _outcome(client, meta=seed_meta)
            assert code == "ok" and final.content["answer"]
            assert "atp_adapter_calls_total{" in await _metrics(router)
            code, _, final = await _outcome(
                client,
                meta={"data_scope": ["internal"], "fanout": 2, "adapters": ["strong", "cheap"]},
            )
            assert code == "ok" and final.telemetry["adapters"] == ["cheap"]
            code, _, both = await _outcome(client, meta={"fanout": 2})
            assert code == "ok" and sorted(both.telemetry["adapters"]) == ["cheap", "strong"]
        body = await _metrics(router)
    assert re.search(r'atp_policy_info\{version="[0-9a-f]{12}@[0-9a-f]{12}"\} 1', body), body


POLICY_A = "package atp.policy\nimport rego.v1\n# phase A: everything is allowed\n"
POLICY_B = (
    "package atp.policy\nimport rego.v1\n"
    'deny contains {"rule": "phase_b", "reason": "probes are closed"} if {\n'
    '\t"probe" in input.tool_permissions\n}\n'
)
BROKEN = "package atp.policy\nimport rego.v1\ndeny contains {\n"
POLL = "[policy]\npoll_s = 0.05\n"


async def _wait_for(router: RouterProcess, pattern: str, count: int = 1) -> None:
    with trio.fail_after(10):
        while len(re.findall(pattern, router.log())) < count:
            await trio.sleep(0.02)


async def test_policy_reload_under_load(tmp_path: Path) -> None:
    """[ATP-SEC-018] Streams keep completing while the policy file is rewritten under
    them; a half-written file never takes effect (every stream is served or denied by
    phase_b, nothing else: no policy_error, no failure); a broken policy keeps the
    last good one and says why in one line; SIGHUP reloads; /metrics counts reloads."""
    policy = tmp_path / "policy.rego"
    policy.write_text(POLICY_A)
    async with _stack("--policy", str(policy), config_toml=POLL) as router:
        outcomes: list[tuple[str, str]] = []
        stop = trio.Event()

        async def worker() -> None:
            async with connect(router.url) as client:
                while not stop.is_set():
                    code, msg, _ = await _outcome(client, meta={"tool_permissions": ["probe"]})
                    outcomes.append((code, msg))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(worker)
            await trio.sleep(0.5)
            served_a = len(outcomes)
            # B, written the way a careless editor does: half a file, then the rest
            half = len(POLICY_B) // 2
            with policy.open("w") as fh:
                fh.write(POLICY_B[:half])
                fh.flush()
                # the router sees the half-written file, and keeps A
                await _wait_for(router, r"policy reload \(file changed\) failed, keeping")
                fh.write(POLICY_B[half:])
            await _wait_for(router, r"policy reloaded \(file changed\)")
            await trio.sleep(0.5)
            # back to A, atomically (write aside, rename over)
            aside = tmp_path / "policy.rego.new"
            aside.write_text(POLICY_A)
            os.replace(aside, policy)
            await _wait_for(router, r"policy reloaded \(file changed\)", 2)
            await trio.sleep(0.3)
            mark = len(outcomes)
            policy.write_text(BROKEN)
            await _wait_for(router, r"policy reload \(file changed\) failed, keeping", 2)
            await trio.sleep(0.3)
            router.proc.send_signal(signal.SIGHUP)  # the broken file again: still A
            await _wait_for(router, r"policy reload \(SIGHUP\) failed, keeping")
            await trio.sleep(0.2)
            stop.set()
        body = await _metrics(router)

    kinds = {(code, msg.rsplit("(rule: ", 1)[-1]) for code, msg in outcomes}
    assert kinds == {("ok", ""), ("ESEC", "phase_b)")}, kinds
    assert served_a > 0 and all(code == "ok" for code, _ in outcomes[:served_a])
    assert all(code == "ok" for code, _ in outcomes[mark:])  # the broken file kept A
    assert len(outcomes) > 50
    failed = [ln for ln in router.log().splitlines() if "failed, keeping" in ln]
    assert len(failed) >= 3 and all("unclosed" in ln for ln in failed)
    assert (metric_value(body, "atp_policy_reloads_total", result="ok") or 0) >= 2
    assert (metric_value(body, "atp_policy_reloads_total", result="failed") or 0) >= 3


async def test_sighup_reloads_without_waiting_for_the_poll(tmp_path: Path) -> None:
    """[ATP-SEC-018] With the file poll an hour away, SIGHUP alone loads the new policy
    (and does not stop the router, as SIGHUP's default action would)."""
    policy = tmp_path / "policy.rego"
    policy.write_text(POLICY_A)
    async with _stack("--policy", str(policy), config_toml="[policy]\npoll_s = 3600\n") as router:
        async with connect(router.url) as client:
            assert (await _outcome(client, meta={"tool_permissions": ["probe"]}))[0] == "ok"
            policy.write_text(POLICY_B)
            router.proc.send_signal(signal.SIGHUP)
            await _wait_for(router, r"policy reloaded \(SIGHUP\)")
            code, msg, _ = await _outcome(client, meta={"tool_permissions": ["probe"]})
            assert code == "ESEC" and msg == "probes are closed (rule: phase_b)"
        assert router.proc.poll() is None


async def test_demo_shows_a_stream_denied_by_policy_with_its_rule() -> None:
    """[ATP-SEC-016] `atp demo` runs the example policy: its refusals include a stream
    asking for a secret-reading tool under data scope no_secrets, ESEC with the rule."""
    import json

    from ._helpers_e2e import atp

    result = await trio.to_thread.run_sync(lambda: atp("demo", "--json", timeout=60))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    summary = json.loads(out if out.startswith("{") else out[out.rindex("\n{") + 1 :])
    assert summary["policy_error"] == "ESEC"
    assert summary["policy_message"].endswith("(rule: no_secrets)")
