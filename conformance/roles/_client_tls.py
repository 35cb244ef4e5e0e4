"""The client role's TLS case (ATP-WS-013): the scripted router serves ``wss://`` with a
certificate the client has no reason to trust (self-signed, made for this run, valid for
``localhost``), and the client under test must refuse the connection: the TLS handshake
must not complete and no WebSocket upgrade may follow. A client that verifies nothing
unless asked (the reference: ``--insecure``) passes; one that connects anyway fails.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from typing import Any

import trio

from atp_proto.transports.tls import generate_dev_cert
from conformance._record import Recorder
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext, TargetUnreachable
from conformance.roles._testee import run_testee

__all__ = ["CASE", "run"]

CASE = CaseSpec(
    "client.tls.untrusted-cert",
    Role.CLIENT,
    "the client refuses a wss:// router whose certificate it does not trust",
    ("ATP-WS-013",),
    level=Level.L2,
    description="serves wss://localhost:PORT/ws with a fresh self-signed certificate and "
    "launches the client on that URL: the TLS handshake must fail on the client's side "
    "(no upgrade request arrives), and the client must exit within 10 s",
)


async def run(case: CaseSpec, ctx: RunContext, argv_for: Any) -> CaseResult:
    """``argv_for(url)``: the client's command for a URL (None: a placeholder is missing)."""
    rec = Recorder(case)
    with tempfile.TemporaryDirectory(prefix="atp-conf-tls-") as tmp:
        cert, key, fp = generate_dev_cert(Path(tmp))
        sslctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sslctx.load_cert_chain(str(cert), str(key))
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        url = f"wss://localhost:{port}/ws"
        argv = argv_for(url)
        if argv is None:
            for ln in listeners:
                await ln.aclose()
            return rec.result(
                Verdict.UNSUPPORTED, "the --exec command lacks a placeholder this case needs"
            )
        rec.note("serving a self-signed certificate", {"url": url, "sha256": fp})
        seen: dict[str, Any] = {"connections": 0, "tls": [], "request": b""}
        outcome: dict[str, Any] = {}
        done = trio.Event()

        async def serve() -> None:
            while True:
                stream = await listeners[0].accept()
                seen["connections"] += 1
                tls = trio.SSLStream(stream, sslctx, server_side=True)
                try:
                    with trio.fail_after(ctx.timeout(5)):
                        await tls.do_handshake()
                        seen["tls"].append("completed")
                        seen["request"] += bytes(await tls.receive_some(4096))
                except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                    seen["tls"].append(f"failed: {exc!r}"[:200])
                finally:
                    await trio.aclose_forcefully(tls)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(run_testee, argv, outcome, done, 1000)
            with trio.move_on_after(ctx.timeout(10)) as scope:
                await done.wait()
            nursery.cancel_scope.cancel()
        for ln in listeners:
            await ln.aclose()
    if "error" in outcome:
        raise TargetUnreachable(outcome["error"])
    rec.note("client exit", outcome)
    rec.note("what the router saw", {k: str(v)[:300] for k, v in seen.items()})
    if "completed" in seen["tls"]:
        got = seen["request"][:80]
        return rec.failed(
            f"the client completed TLS with an untrusted certificate (then sent {got!r})",
            "the client refuses the certificate",
            ("ATP-WS-013",),
        )
    if scope.cancelled_caught:
        return rec.failed(
            "the client did not exit within 10 s of an untrusted certificate",
            "the client refuses the connection and ends",
            ("ATP-WS-013",),
        )
    if seen["connections"] == 0:
        return rec.result(Verdict.ERROR, "the client never connected to the wss:// URL")
    return rec.result(Verdict.PASS, f"refused (exit {outcome.get('rc')})")
