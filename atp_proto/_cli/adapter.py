"""``atp adapter``: serve an adapter over gRPC (vendor SDK), list the reference adapters,
check a running adapter.

    atp adapter serve echo --listen 127.0.0.1:7070
    atp adapter serve 'persona?latency_ms=20' --option fail=cut --option fail_after=3
    atp adapter serve mypkg.model:MyAdapter --listen 0.0.0.0:7070 --option size=large
    atp adapter list
    atp adapter check grpc://127.0.0.1:7070 [--stream] [--json]

``check`` is a front for the conformance suite's adapter role
(:mod:`conformance.roles.adapter`): the smoke calls it always printed, then every case of
the role in a compact table; exit 0 all passed, 1 a failure, 2 bad usage, 3 unreachable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
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
    s.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="default info",
    )
    lst = sub.add_parser(
        "list", help="list the reference adapters", description="List the reference adapters."
    )
    lst.add_argument("--json", action="store_true", help="one JSON object: name -> description")
    c = sub.add_parser(
        "check",
        help="check a running adapter against the adapter contract (conformance suite)",
        description="Call Health and Estimate (and with --stream one Stream) on "
        "grpc://HOST:PORT and print the replies, then run the conformance suite's adapter "
        "role (the same cases as 'atp conformance run --role adapter') and print a table. "
        "Exit 0 all passed, 1 a failure, 2 bad usage, 3 adapter unreachable.",
    )
    c.add_argument("url", metavar="URL", help="grpc://HOST:PORT or grpcs://HOST:PORT")
    c.add_argument(
        "--prompt", default="Hello from atp adapter check.", help="prompt for Estimate / Stream"
    )
    c.add_argument(
        "--task-type",
        default="qa",
        help="task_type for Estimate / Stream (default 'qa', what 'atp send' asks for)",
    )
    c.add_argument(
        "--stream", action="store_true", help="also run one Stream call and print the chunks"
    )
    c.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per-call timeout (default 5)"
    )
    c.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply the conformance cases' time bounds by F (slow hosts; default 1)",
    )
    c.add_argument(
        "--json", action="store_true", help="print the case results as JSON (nothing else)"
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
        return _list(args.json)
    if cmd == "serve":
        return _serve(args)
    if cmd == "check":
        return _check(args)
    raise UsageError("give a subcommand: serve, list or check (see 'atp adapter --help')")


def _list(as_json: bool = False) -> int:
    from atp_proto.adapters.sdk import BUILTIN_TARGETS

    if as_json:
        import json

        table = {name: ref.description for name, ref in BUILTIN_TARGETS.items()}
        print(json.dumps(table))
        return 0
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
        # asyncio's strerror repeats the address: "error while attempting to bind on
        # address ('127.0.0.1', 7070): address already in use"; the errno's words suffice
        import os

        why = os.strerror(exc.errno).lower() if exc.errno else (exc.strerror or str(exc))
        print(f"atp adapter serve: error: cannot listen on {host}:{port}: {why}", file=sys.stderr)
        return 2  # the address given cannot be used: bad input, as for atp serve
    return 0


def _check(args: argparse.Namespace) -> int:
    import json

    from conformance.roles import TargetUnreachable
    from conformance.roles.adapter import parse_target

    if not args.url.startswith(("grpc://", "grpcs://")):
        raise UsageError(f"URL must be grpc://HOST:PORT or grpcs://HOST:PORT, not {args.url!r}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout:g}")
    if not args.timeout_scale > 0:
        raise UsageError(f"--timeout-scale must be positive, got {args.timeout_scale:g}")
    plain = args.url.startswith("grpc://")
    if plain:
        try:
            host, port = parse_target(args.url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not _reachable(host, port, args.timeout):
            if not args.json:
                print(f"health    FAIL cannot reach {host}:{port}")
            print(f"atp adapter check: error: cannot reach {host}:{port}", file=sys.stderr)
            return 3
    smoke_ok = True
    if not args.json:
        smoke_ok = _smoke(args) == 0
    if not plain:
        print("conformance cases skipped: they need a grpc:// (plain) target")
        return 0 if smoke_ok else 1
    try:
        results = _conformance(args)
    except TargetUnreachable as exc:
        print(f"atp adapter check: error: {exc}", file=sys.stderr)
        return 3
    failed = [r for r in results if r.verdict in ("FAIL", "ERROR")]
    if args.json:
        print(json.dumps(_results_json(args.url, results), indent=2))
    else:
        _table(results)
    return 0 if smoke_ok and not failed else 1


def _reachable(host: str, port: int, timeout: float) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _conformance(args: argparse.Namespace) -> list[Any]:
    """Every case of the adapter role, in order (an unexpected harness error is ERROR)."""
    import time

    import trio

    from conformance.model import CaseResult, Verdict
    from conformance.roles import RunContext
    from conformance.roles import adapter as role

    ctx = RunContext(
        target=args.url,
        timeout_scale=args.timeout_scale,
        options={"prompt": args.prompt, "task_type": args.task_type},
    )

    async def main() -> list[CaseResult]:
        out: list[CaseResult] = []
        for spec in role.cases(ctx.options):
            t0 = time.perf_counter()
            try:
                out.append(await role.run(spec, ctx))
            except Exception as exc:  # a bug of the harness, not the adapter's fault
                if type(exc).__name__ == "TargetUnreachable":
                    raise
                ms = (time.perf_counter() - t0) * 1000
                msg = f"harness error: {type(exc).__name__}: {exc}"
                out.append(CaseResult(spec, Verdict.ERROR, msg, duration_ms=ms))
        return out

    return trio.run(main)


def _table(results: list[Any]) -> None:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    colour = {"PASS": "green", "FAIL": "red", "ERROR": "red", "NON_STRICT": "yellow"}
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for col in ("verdict", "case", "requirements", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        detail = r.message + (f" (expected: {r.expected})" if r.expected else "")
        verdict = f"[{colour.get(r.verdict, 'cyan')}]{r.verdict}[/]"
        table.add_row(verdict, r.case.id, " ".join(r.case.requirements), detail)
    console = Console(width=160 if not sys.stdout.isatty() else None, highlight=False)
    console.print(table)
    counts = Counter(str(r.verdict) for r in results)
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    console.print(f"conformance (adapter role): {len(results)} cases: {summary}")


def _results_json(url: str, results: list[Any]) -> dict[str, Any]:
    from collections import Counter

    return {
        "role": "adapter",
        "target": url,
        "results": [
            {
                "case": r.case.id,
                "requirements": list(r.case.requirements),
                "violated": list(getattr(r, "violated", ())),
                "verdict": str(r.verdict),
                "message": r.message,
                "expected": r.expected,
                "duration_ms": round(r.duration_ms, 3),
            }
            for r in results
        ],
        "summary": dict(Counter(str(r.verdict) for r in results)),
    }


def _smoke(args: argparse.Namespace) -> int:
    """The replies of Health, Estimate (and with --stream one Stream), as printed since
    ``atp adapter check`` began; exit status 0 or 1."""
    import trio

    from atp_proto.adapters import AdapterError, TaskRequest
    from atp_proto.adapters.grpc import GrpcAdapter

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
