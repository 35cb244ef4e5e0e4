"""``atp adapter``: serve an adapter over gRPC (vendor SDK), list the reference adapters,
check a running adapter.

    atp adapter serve echo --listen 127.0.0.1:7070
    atp adapter serve 'persona?latency_ms=20' --option fail=cut --option fail_after=3
    atp adapter serve mypkg.model:MyAdapter --listen 0.0.0.0:7070 --option size=large
    atp adapter list
    atp adapter check grpc://127.0.0.1:7070 [--stream]
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import parse_qsl

from atp_proto.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="adapter_command", metavar="SUBCOMMAND")
    s = sub.add_parser(
        "serve",
        help="serve MODULE:CLASS or a reference adapter (echo, persona, openai) over gRPC",
        description="Serve one adapter class over gRPC (atp.adapter.v1.AdapterService). "
        "Stops gracefully on SIGTERM / SIGINT.",
    )
    s.add_argument(
        "target",
        metavar="TARGET",
        help="MODULE:CLASS, or NAME[?key=value&...] of a reference adapter",
    )
    s.add_argument(
        "--listen",
        default="127.0.0.1:7070",
        metavar="HOST:PORT",
        help="default 127.0.0.1:7070 (port 0: any free port)",
    )
    s.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option (repeatable)",
    )
    s.add_argument("--name", default="", help="adapter name in logs (default: the target's)")
    s.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="drain grace period on SIGTERM (default 10)",
    )
    s.add_argument(
        "--max-concurrency",
        type=int,
        default=0,
        metavar="N",
        help="refuse calls beyond N at once with RESOURCE_EXHAUSTED (default: no cap)",
    )
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    sub.add_parser(
        "list", help="list the reference adapters", description="List the reference adapters."
    )
    c = sub.add_parser(
        "check",
        help="call Health and Estimate on a running adapter and print the results",
        description="Call Health and Estimate (and optionally Stream) on grpc://HOST:PORT. "
        "Exit 1 on failure.",
    )
    c.add_argument("url", metavar="URL", help="grpc://HOST:PORT or grpcs://HOST:PORT")
    c.add_argument(
        "--prompt", default="Hello from atp adapter check.", help="prompt for Estimate / Stream"
    )
    c.add_argument(
        "--task-type", default="check", help="task_type for Estimate / Stream (default 'check')"
    )
    c.add_argument(
        "--stream", action="store_true", help="also run one Stream call and print the chunks"
    )
    c.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per-call timeout (default 5)"
    )


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--listen must be HOST:PORT, not {value!r}")
    try:
        n = int(port)
    except ValueError:
        raise UsageError(f"--listen: bad port {port!r}") from None
    if not 0 <= n <= 65535:
        raise UsageError(f"--listen: port {n} out of range")
    return host.strip("[]"), n


def _options(target: str, pairs: list[str]) -> tuple[str, dict[str, str]]:
    name, _, query = target.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=True))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option must be KEY=VALUE, not {pair!r}")
        opts[key] = value
    return name, opts


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "adapter_command", None)
    if cmd == "list":
        return _list()
    if cmd == "serve":
        return _serve(args)
    if cmd == "check":
        return _check(args)
    raise UsageError("give a subcommand: serve, list or check (see 'atp adapter --help')")


def _list() -> int:
    from atp_proto.adapters.sdk import BUILTIN_TARGETS

    for name, ref in BUILTIN_TARGETS.items():
        print(f"{name:<10} {ref.description}")
    return 0


def _import_from_cwd() -> None:
    """Let ``MODULE:CLASS`` name a module in the working directory, as uvicorn and gunicorn
    do: the ``atp`` console script's own directory is on ``sys.path``, the user's is not."""
    import os

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from atp_proto.adapters.sdk import AdapterServer, load_target, serve

    host, port = _hostport(args.listen)
    if args.grace < 0:
        raise UsageError(f"--grace must not be negative, got {args.grace:g}")
    if args.max_concurrency < 0:
        raise UsageError(
            f"--max-concurrency must be 0 (no cap) or more, got {args.max_concurrency}"
        )
    target, opts = _options(args.target, args.option)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if ":" in target:
        _import_from_cwd()
    try:
        name, adapter = load_target(target, opts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    name = args.name or name

    def listening(server: AdapterServer) -> None:
        print(f"adapter {name} listening on {host}:{server.port}", flush=True)

    try:
        asyncio.run(
            serve(
                adapter,
                host,
                port,
                name=name,
                grace=args.grace,
                max_concurrency=args.max_concurrency,
                on_listening=listening,
            )
        )
    except OSError as exc:
        print(
            f"atp adapter serve: error: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2  # the address given cannot be used: bad input, as for atp serve
    return 0


def _check(args: argparse.Namespace) -> int:
    import trio

    from atp_proto.adapters import AdapterError, TaskRequest
    from atp_proto.adapters.grpc import GrpcAdapter

    if not args.url.startswith(("grpc://", "grpcs://")):
        raise UsageError(f"URL must be grpc://HOST:PORT or grpcs://HOST:PORT, not {args.url!r}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout:g}")
    try:
        adapter = GrpcAdapter.from_url("check", args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    req = TaskRequest(task_type=args.task_type, prompt=args.prompt, request_id="atp-adapter-check")

    async def main() -> int:
        async with adapter:  # owns the connection tasks
            return await checks()

    async def checks() -> int:
        ok = True
        try:
            try:
                with trio.fail_after(args.timeout):
                    h = await adapter.health()
                print(
                    f"health    OK  status={h.status} p95_ms={h.p95_ms:.1f} "
                    f"error_rate={h.error_rate:.3f} capacity={h.capacity}"
                )
                if h.status not in ("READY", "BUSY"):
                    ok = False
            except (AdapterError, trio.TooSlowError) as exc:
                print(f"health    FAIL {_describe(exc)}")
                return 1
            try:
                with trio.fail_after(args.timeout):
                    e = await adapter.estimate(req)
                print(
                    f"estimate  OK  in_tokens={e.in_tokens} out_tokens={e.out_tokens} "
                    f"usd_micros={e.usd_micros} latency_p95_ms={e.latency_p95_ms:.1f} "
                    f"variance={e.variance:.1f} confidence={e.confidence:.2f}"
                )
            except (AdapterError, trio.TooSlowError) as exc:
                print(f"estimate  FAIL {_describe(exc)}")
                ok = False
            if args.stream:
                n = 0
                try:
                    with trio.fail_after(args.timeout):
                        async for chunk in adapter.stream(req):
                            n += 1
                            end = f" final {chunk.finish_reason}" if chunk.final else ""
                            print(
                                f"chunk {n:<4}    {chunk.content!r} tokens={chunk.tokens} "
                                f"usd_micros={chunk.usd_micros} "
                                f"confidence={chunk.confidence:.2f}{end}"
                            )
                    print(f"stream    OK  {n} chunk(s)")
                except (AdapterError, trio.TooSlowError) as exc:
                    print(f"stream    FAIL after {n} chunk(s): {_describe(exc)}")
                    ok = False
        finally:
            await adapter.aclose()
        return 0 if ok else 1

    return trio.run(main)


def _describe(exc: BaseException) -> str:
    from atp_proto.adapters import AdapterError

    if isinstance(exc, AdapterError):
        return f"{exc.code}: {exc.message}"
    return "timed out"
