"""``atp send URL --prompt TEXT``: open one stream and print what comes back."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from atp_proto._cli._reasons import connect_reason
from atp_proto.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "url",
        nargs="?",
        default="ws://127.0.0.1:7443/ws",
        help="router URL: ws://, wss:// or quic://HOST:PORT (default ws://127.0.0.1:7443/ws)",
    )
    p.add_argument("--prompt", required=True, help="the task's prompt")
    p.add_argument("--task-type", default="qa", help="the task's type (default qa)")
    p.add_argument(
        "--qos",
        choices=["gold", "silver", "bronze"],
        default="silver",
        help="QoS lane (default silver; a token's max_qos caps it)",
    )
    p.add_argument("--max-tokens", type=int, metavar="N", help="budget window: tokens")
    p.add_argument("--max-usd-micros", type=int, metavar="N", help="budget window: micro-dollars")
    p.add_argument(
        "--max-parallel", type=int, metavar="N", help="budget window: adapter calls at once"
    )
    p.add_argument(
        "--ttl", type=int, default=0, metavar="SECONDS", help="the stream's deadline (0: none)"
    )
    p.add_argument(
        "--adapter", action="append", metavar="NAME", help="restrict to these adapters (repeatable)"
    )
    p.add_argument("--fanout", type=int, metavar="N", help="ask N adapters at once")
    p.add_argument("--token", help="JWT (or env ATP_TOKEN)")
    p.add_argument(
        "--text", action="store_true", help="speak the JSON text mapping (like a browser)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line (PARTIALs, then FINAL or ERROR)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up without a FINAL after this long (default 60)",
    )
    p.add_argument(
        "--ca",
        metavar="FILE",
        help="wss:// and quic://: trust this CA or certificate (PEM) instead of the system's "
        "store, e.g. the one `atp serve --dev-cert` printed",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="wss:// and quic://: do not verify the router's certificate (local use only)",
    )


def run(args: argparse.Namespace) -> int:
    import trio

    from atp_proto.client import Final, HandshakeRefused, QuicConnectError, StreamError, connect
    from atp_proto.frames import BudgetWindow
    from atp_proto.transports import TransportClosed

    for name in ("max_tokens", "max_usd_micros", "max_parallel", "fanout"):
        v = getattr(args, name)
        if v is not None and v < (1 if name in ("max_parallel", "fanout") else 0):
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.ttl <= 0xFFFF:  # the SYN's ttl is a u16 (ATP-FRAME-007, ATP-TIME-001)
        raise UsageError(f"--ttl must be within 0..65535 seconds, got {args.ttl}")
    if not args.prompt:  # the router would refuse it (EPROTO); say so before connecting
        raise UsageError("--prompt must not be empty")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    if not args.url.startswith(("ws://", "wss://", "quic://")):
        raise UsageError(f"the URL must start with ws://, wss:// or quic://, got {args.url!r}")
    _check_url(args.url)
    quic_opts: dict[str, Any] = {}
    if args.url.startswith("quic://"):
        if args.text:
            raise UsageError("--text is not available over QUIC (binary frames only)")
        quic_opts = {
            "ca_file": args.ca,
            "insecure": args.insecure,
            # UDP has no refusal to wait for: say "no handshake" before --timeout fires
            "connect_timeout": min(10.0, args.timeout / 2),
        }
    ssl_context = _client_ssl_context(args)
    token = args.token or os.environ.get("ATP_TOKEN")
    window = None
    if (
        args.max_tokens is not None
        or args.max_usd_micros is not None
        or args.max_parallel is not None
    ):
        window = BudgetWindow(args.max_parallel, args.max_tokens, args.max_usd_micros)
    meta: dict[str, Any] = {}
    if args.adapter:
        meta["adapters"] = args.adapter
    if args.fanout:
        meta["fanout"] = args.fanout

    def emit(kind: str, obj: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({"kind": kind, **obj}, ensure_ascii=False), flush=True)

    async def main() -> int:
        with trio.fail_after(args.timeout):
            async with connect(
                args.url, token=token, text=args.text, ssl_context=ssl_context, **quic_opts
            ) as client:
                async with client.stream(
                    args.prompt,
                    task_type=args.task_type,
                    qos=args.qos,
                    ttl=args.ttl,
                    window=window,
                    meta=meta,
                ) as stream:
                    async for item in stream:
                        if isinstance(item, Final):
                            emit(
                                "final",
                                {
                                    "content": item.content,
                                    "confidence": item.confidence,
                                    "telemetry": dict(item.telemetry),
                                },
                            )
                            if not args.json:
                                answer = (
                                    item.content.get("answer")
                                    if isinstance(item.content, dict)
                                    else item.content
                                )
                                t = item.telemetry
                                print(f"FINAL  {answer}")
                                print(
                                    f"       tokens={t.get('tokens')} "
                                    f"usd_micros={t.get('usd_micros')} "
                                    f"latency_ms={t.get('latency_ms')} "
                                    f"adapters={','.join(t.get('adapters', []))}"
                                )
                        else:
                            emit(
                                "partial", {"content": item.content, "confidence": item.confidence}
                            )
                            if not args.json:
                                print(partial_line(item.content, item.confidence), flush=True)
        return 0

    if ssl_context is not None:
        problem = trio.run(_tls_problem, args.url, min(args.timeout, 10.0), ssl_context)
        if problem is not None:
            emit("error", {"code": "ECONNECT", "message": problem})
            if not args.json:
                print(
                    f"atp send: error: cannot connect to {args.url}: "
                    f"{problem}{_ca_hint(args, problem)}",
                    file=sys.stderr,
                )
            return 1
    try:
        try:
            return trio.run(main)
        except BaseExceptionGroup as group:
            # The client's nursery wraps a StreamError in a group: unwrap a lone one.
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]
            if leaf is group:
                raise
            raise leaf from None
    except StreamError as exc:
        emit(
            "error",
            {"code": exc.code, "message": exc.message, "retry_after_ms": exc.retry_after_ms},
        )
        if not args.json:
            hint = f" (retry after {exc.retry_after_ms} ms)" if exc.retry_after_ms else ""
            print(f"atp send: error: {exc.code}: {exc.message}{hint}", file=sys.stderr)
        return 1
    except HandshakeRefused as exc:
        message = _rejection(exc.status, exc.body)
        emit("error", {"code": "EHANDSHAKE", "status": exc.status, "message": message})
        if not args.json:
            hint = ""
            if exc.status == 401 and not (args.token or os.environ.get("ATP_TOKEN")):
                hint = " (pass --token TOKEN or set ATP_TOKEN; 'atp token issue' mints one)"
            print(
                f"atp send: error: handshake refused: HTTP {exc.status} {message}{hint}",
                file=sys.stderr,
            )
        return 1
    except (TransportClosed, OSError, QuicConnectError) as exc:
        reason = connect_reason(exc)
        if args.url.startswith("ws://") and "during the upgrade" in reason:
            reason += " (is it a wss:// port? then use wss://)"
        if not args.json:
            reason += _ca_hint(args, reason)
        emit("error", {"code": "ECONNECT", "message": reason})
        if not args.json:
            print(f"atp send: error: cannot connect to {args.url}: {reason}", file=sys.stderr)
        return 1
    except trio.TooSlowError:
        emit("error", {"code": "ETIMEOUT", "message": f"no FINAL within {args.timeout} s"})
        if not args.json:
            print(f"atp send: error: no FINAL within {args.timeout} s", file=sys.stderr)
        return 1


def partial_line(content: Any, confidence: float | None) -> str:
    """A PARTIAL for a person: an adapter's chunk as ``PARTIAL [ADAPTER] TEXT``, and the
    router's notices (spec §15.2: an escalation, a failover, a hedge) as what they say,
    ``PARTIAL escalate A -> B ...``, not as raw JSON with no adapter. (``--json`` prints
    every PARTIAL as it came.)"""
    if isinstance(content, dict) and "text" in content:
        return (
            f"PARTIAL [{content.get('adapter', '')}] {content['text']!s}  (confidence {confidence})"
        )
    if isinstance(content, dict) and len(content) == 1:
        ((kind, note),) = content.items()
        if kind in ("escalate", "failover", "hedge") and isinstance(note, dict):
            src, dst = note.get("from"), note.get("to", "?")
            line = f"PARTIAL {kind} {src} -> {dst}" if src else f"PARTIAL {kind} to {dst}"
            if kind == "hedge" and "after_ms" in note:
                return f"{line} after {note['after_ms']} ms"
            # a cascade's escalation says why ("confidence 0.1 < 0.5"); consensus's gives
            # the champion's confidence alone
            why = note.get("reason") or (
                f"confidence {note['confidence']}" if "confidence" in note else ""
            )
            return f"{line} ({why})" if why else line
    return f"PARTIAL {json.dumps(content, ensure_ascii=False)}  (confidence {confidence})"


def _check_url(url: str) -> None:
    """A URL the client can connect to: a host, a port in 1..65535 (quic:// needs one).

    Raises:
        UsageError: what is wrong with it, in one line.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL"
        why = "the port must be within 1..65535" if "Port" in str(exc) else str(exc).lower()
        raise UsageError(f"bad URL {url!r}: {why}") from None
    if not parts.hostname:
        raise UsageError(f"bad URL {url!r}: no host")
    if port == 0:
        raise UsageError(f"bad URL {url!r}: the port must be within 1..65535")
    if port is None and url.startswith("quic://"):
        raise UsageError(f"expected {url.split(':', 1)[0]}://HOST:PORT, got {url!r}")


#: The most of a refusal's HTTP body printed: a router's refusal is one short sentence;
#: anything longer is some other server's page, not worth a screenful.
_BODY_SHOWN = 200


def _rejection(status: int, body: bytes | None) -> str:
    """One line for a refused WebSocket handshake: the router's reason (its body's first
    line), or, from a server that answered plain HTTP, that it is not a WebSocket endpoint."""
    text = (body or b"").decode(errors="replace").strip()
    if 200 <= status < 300 or text.startswith("<"):
        return "(the server answered plain HTTP: not a WebSocket endpoint; check the URL and path)"
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= _BODY_SHOWN else line[:_BODY_SHOWN] + "..."


#: URL schemes whose connection is TLS: --ca and --insecure apply (quic:// when it exists)
TLS_SCHEMES = ("wss://", "quic://")


def tls_config_from_args(args: argparse.Namespace) -> Any:
    """``--ca`` / ``--insecure`` as a client TLSConfig for a TLS URL (verifying by default),
    None for a plain one; bad usage for a contradiction or a ``--ca`` file that cannot be
    used. Says once, in one line, that ``--insecure`` verifies nothing. (For every TLS
    transport of ``atp send``: WebSocket builds its ssl context from it, QUIC its own.)"""
    import warnings

    from atp_proto.transports.tls import InsecureTLSWarning, TLSConfig, TLSConfigError

    if not args.url.startswith(TLS_SCHEMES):
        if args.ca or args.insecure:
            raise UsageError("--ca and --insecure are for wss:// and quic:// URLs")
        return None
    if args.ca and args.insecure:
        raise UsageError("--ca and --insecure contradict each other: pick one")
    if args.ca:
        from atp_proto._cli._files import input_file

        input_file(args.ca, "--ca")
    cfg = TLSConfig(ca_file=args.ca, insecure=args.insecure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureTLSWarning)  # said in one line below
        try:
            cfg.client_ssl_context()  # checks --ca
        except TLSConfigError as exc:
            raise UsageError(f"--ca: {exc}") from None
    if args.insecure:
        print(
            "atp send: warning: --insecure: the router's certificate is not verified "
            "(local use only)",
            file=sys.stderr,
        )
    return cfg


def _client_ssl_context(args: argparse.Namespace) -> Any:
    """The ssl context of a ``wss://`` URL (:func:`tls_config_from_args`); None otherwise."""
    import warnings

    from atp_proto.transports.tls import InsecureTLSWarning

    cfg = tls_config_from_args(args)
    if cfg is None or not args.url.startswith("wss://"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureTLSWarning)  # already said
        return cfg.client_ssl_context()


async def _tls_problem(url: str, timeout: float, ssl_context: Any) -> str | None:
    """For a ``wss://`` URL: why TLS cannot work there (a plain ``ws://`` port answers a
    ClientHello with plain text, a certificate is refused), or None to go ahead.

    Checked before connecting, with the context the session will use, so that each of
    these gets its own sentence rather than the connect timeout's."""
    import ssl
    from urllib.parse import urlsplit

    import trio

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ssl_context)
            try:
                await stream.do_handshake()
            finally:
                await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        return (
            f"no TLS handshake from {host}:{port} within {timeout:g} s: "
            "is it a plain ws:// port? then use ws://"
        )
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        cause: BaseException | None = exc  # trio wraps the SSLError
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate refused: {cause.verify_message or cause.reason}"
        detail = (getattr(cause, "reason", None) or "connection closed").lower().replace("_", " ")
        return (
            f"TLS handshake with {host}:{port} failed ({detail}): "
            "is it a plain ws:// port? then use ws://"
        )
    except OSError:
        return None  # not a TLS problem: the connection itself reports it
    return None


def _ca_hint(args: argparse.Namespace, problem: str) -> str:
    """What to do about a certificate the client refused (for the human line only): trust
    it with --ca, or skip the check for local use. Nothing once --ca or --insecure is given."""
    if args.ca or args.insecure:
        return ""
    if "certificate" not in problem or ("refused" not in problem and "failed" not in problem):
        return ""
    return " (trust its certificate with --ca FILE, or --insecure for local use)"
