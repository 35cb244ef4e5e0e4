"""``atp conformance``: run the conformance suite against a router, client, adapter or
codec, list its cases, explain a case or a requirement (``conformance/README.md``).

::

    atp conformance run --role router --target ws://127.0.0.1:7443/ws [--token T]
    atp conformance run --role client --exec "my-client {url}"
    atp conformance run --role adapter --target grpc://127.0.0.1:50051
    atp conformance run --role codec --exec "node examples/node-codec/codec.js"
    atp conformance list [--role R] [--json]
    atp conformance explain ATP-FLOW-002 | router.flow.credit-respected

Exit status of ``run``: 0 every case passed, 1 a failure, 2 bad usage, 3 target unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from atp_proto.cli import UsageError, prog_of

ROLE_NAMES = ("router", "client", "adapter", "codec")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="conf_cmd", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run",
        help="run the suite against a target",
        description="Run the conformance cases of one role against a target.",
    )
    run.add_argument("--role", choices=ROLE_NAMES, required=True, help="what is tested")
    run.add_argument(
        "--target",
        default="",
        help="ws://HOST:PORT/PATH, wss://..., quic://... (router); grpc://HOST:PORT (adapter)",
    )
    run.add_argument(
        "--exec",
        dest="exec_cmd",
        default="",
        metavar="CMD",
        help='the client ("CMD {url}") or codec testee to launch',
    )
    run.add_argument(
        "--token", default=None, help="router role: bearer token for the router's L2 cases"
    )
    run.add_argument(
        "--expired-token",
        default=None,
        metavar="TOKEN",
        help="router role: an expired token of the router's issuer (L2 exp check)",
    )
    run.add_argument(
        "--limited-token",
        default=None,
        metavar="TOKEN",
        help="router role: a token whose task_types is [qa] and max_qos bronze (L2 policy cases)",
    )
    run.add_argument(
        "--http-url",
        default=None,
        metavar="URL",
        help="router role: the router's HTTP base URL, for the feedback cases (POST /v1/feedback)",
    )
    run.add_argument(
        "--denied-meta",
        default=None,
        metavar="JSON",
        help="router role: a SYN meta (JSON object) the router's policy denies (ESEC rule cases)",
    )
    run.add_argument(
        "--policy-unreachable",
        action="store_true",
        help="router role: the router's policy service does not answer (fail-closed case)",
    )
    run.add_argument(
        "--insecure", action="store_true", help="wss://, quic://: do not verify the certificate"
    )
    run.add_argument(
        "--ca",
        default=None,
        metavar="FILE",
        help="wss://, quic://: trust this CA or certificate (PEM), e.g. atp serve --dev-cert's",
    )
    run.add_argument(
        "--encoding",
        choices=("binary", "text", "both"),
        default="both",
        help="router role: which WebSocket encodings to test (default both)",
    )
    run.add_argument(
        "--adapter-listen",
        default=None,
        metavar="HOST:PORT",
        help="router role: serve the scripted gRPC adapter here (the router under "
        "test must be configured with --adapter conf=grpc://HOST:PORT); HOST:PORT,HOST:PORT "
        "serves a second one, the router's adapter conf2; fd:N serves on the listening "
        "socket N this process inherited (fd:N,fd:M for two)",
    )
    run.add_argument(
        "--pressure",
        type=_positive_int,
        default=None,
        metavar="N",
        help="router role: streams at once that take the router past its concurrency limit "
        "and queue (at most 100), for the shedding case",
    )
    run.add_argument(
        "--session-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="router role: the router's configured session limit (at most 200), for the 503 case",
    )
    run.add_argument(
        "--handshake-timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="router role: the router's configured handshake timeout in seconds (at most "
        "30): router.tls.handshake-timeout then waits that long plus a margin, not 30 s",
    )
    run.add_argument(
        "--quota-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="router role: the tokens per period the router's tenant quota gives the run's "
        "tenant (at least 100, a fresh quota), for the quota cases",
    )
    run.add_argument(
        "--quota-concurrent",
        type=_positive_int,
        default=None,
        metavar="N",
        help="router role: the streams at once the tenant quota allows the run's tenant "
        "(at most 50), for router.quota.concurrent",
    )
    run.add_argument(
        "--level",
        choices=("L1", "L2", "L3"),
        default="L1",
        help="run the cases at or below this level (default L1)",
    )
    run.add_argument("--run", action="append", default=[], metavar="GLOB", help="case ids to run")
    run.add_argument("--skip", action="append", default=[], metavar="GLOB", help="case ids to skip")
    run.add_argument(
        "--requirement",
        action="append",
        default=[],
        metavar="ID",
        help="only cases citing this requirement ID (repeatable)",
    )
    run.add_argument(
        "--timeout-scale",
        type=_positive_float,
        default=1.0,
        metavar="F",
        help="multiply every time bound (slow hosts, CI)",
    )
    run.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run every case N times (one failing run fails it)",
    )
    run.add_argument("--seed", type=int, default=0, metavar="N", help="fuzz cases' seed")
    run.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="write report.json, junit.xml and report.html here",
    )
    run.add_argument(
        "--known-failures",
        type=Path,
        default=None,
        metavar="FILE",
        help="case ids (or globs) a line whose failure does not fail the run",
    )
    run.add_argument("--json", action="store_true", help="print report.json on stdout")
    lst = sub.add_parser(
        "list",
        help="every case with its requirement IDs",
        description="Every case (of --role, default all) with its level, strength and the "
        "requirement IDs it checks.",
    )
    lst.add_argument("--role", choices=ROLE_NAMES, default=None, help="one role (default all)")
    lst.add_argument("--json", action="store_true", help="print the cases as JSON")
    exp = sub.add_parser(
        "explain",
        help="a case or a requirement: text, what is sent, coverage",
        description="A case (router.seq.too-many-fragments) or a requirement "
        "(ATP-SEQ-013): its text, what is sent, and which cases cover it.",
    )
    exp.add_argument("id", metavar="ID", help="a case ID or a requirement ID")
    exp.add_argument("--json", action="store_true", help="print it as JSON")


def run(args: argparse.Namespace) -> int:
    if args.conf_cmd == "list":
        return _list(args)
    if args.conf_cmd == "explain":
        return _explain(args)
    return _run(args)


def _cases(role: str | None) -> list[Any]:
    from conformance.runner import UsageProblem, all_cases

    out = []
    for name in [role] if role else list(ROLE_NAMES):
        try:
            out += all_cases(name)
        except UsageProblem as exc:
            if role:
                raise UsageError(str(exc)) from None
    return out


def _list(args: argparse.Namespace) -> int:
    cases = _cases(args.role)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "role": c.role.value,
                        "level": c.level.value,
                        "strength": c.strength.value,
                        "title": c.title,
                        "requirements": list(c.requirements),
                    }
                    for c in cases
                ],
                indent=1,
            )
        )
        return 0
    for c in cases:
        print(f"{c.id:<58} {c.level} {c.strength:<6} {' '.join(c.requirements)}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from conformance.coverage import requirements

    reqs = requirements()
    cases = _cases(None)
    key = args.id
    if key.upper() in reqs:
        r = reqs[key.upper()]
        covering = [c.id for c in cases if r["id"] in c.requirements]
        doc: dict[str, Any] = {"requirement": r, "cases": covering}
        if args.json:
            print(json.dumps(doc, indent=1))
            return 0
        print(f"{r['id']} ({r['level']}; {', '.join(r['roles'])}) {r['keyword']}")
        print(f"section {r['section']}")
        print(r["text"])
        print(
            "cases: "
            + (", ".join(covering) if covering else "none (see conformance/UNTESTABLE.md)")
        )
        return 0
    match = [c for c in cases if c.id == key]
    if not match:
        raise UsageError(f"no case or requirement named {key!r} (see 'atp conformance list')")
    c = match[0]
    if args.json:
        print(
            json.dumps(
                {
                    "id": c.id,
                    "role": c.role.value,
                    "level": c.level.value,
                    "strength": c.strength.value,
                    "title": c.title,
                    "description": c.description,
                    "requirements": list(c.requirements),
                },
                indent=1,
            )
        )
        return 0
    print(f"{c.id} — {c.title} ({c.role}, {c.level}, {c.strength})")
    print(c.description or "(no description)")
    for rid in c.requirements:
        entry = reqs.get(rid)
        print(f"  {rid}: {entry['text'] if entry else '(unknown requirement)'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import trio

    from conformance.model import Level
    from conformance.report import Progress, summary_dict, write_reports
    from conformance.runner import RunOptions, UsageProblem, run_suite

    target = args.target
    if args.role in ("client", "codec"):
        if not args.exec_cmd:
            raise UsageError(f"--role {args.role} needs --exec CMD")
        if args.role == "client" and "{url}" not in args.exec_cmd:
            raise UsageError(
                '--exec for the client role must contain {url}, e.g. "my-client {url}"'
            )
        target = target or args.exec_cmd
    elif not target:
        raise UsageError(f"--role {args.role} needs --target URL")
    else:
        _check_target(args.role, target)
    _check_role_options(args)
    _check_globs(args.role, args.run, args.requirement)
    from atp_proto._cli._files import input_file, output_dir

    if args.report_dir:  # say so now, not after the whole run
        output_dir(args.report_dir, "--report-dir")
    if args.known_failures:
        input_file(args.known_failures, "--known-failures")
    if args.ca:
        input_file(args.ca, "--ca")
    opts = RunOptions(
        role=args.role,
        target=target,
        token=args.token,
        level=Level(args.level),
        run=args.run,
        skip=args.skip,
        requirements=[r.upper() for r in args.requirement],
        timeout_scale=args.timeout_scale,
        repeat=args.repeat,
        seed=args.seed,
        report_dir=args.report_dir,
        known_failures=args.known_failures,
        adapter_listen=args.adapter_listen,
        extra={
            "exec": args.exec_cmd,
            "insecure": args.insecure,
            "ca": args.ca,
            "encoding": args.encoding,
            "expired_token": args.expired_token,
            "limited_token": args.limited_token,
            "http_url": args.http_url,
            "denied_meta": args.denied_meta,
            "policy_unreachable": args.policy_unreachable,
            "session_limit": args.session_limit,
            "handshake_timeout": args.handshake_timeout,
            "pressure": args.pressure,
            "quota_tokens": args.quota_tokens,
            "quota_concurrent": args.quota_concurrent,
        },
    )
    progress = Progress(sys.stderr, quiet=False)
    try:
        with progress.live():
            summary = trio.run(run_suite, opts, progress.result, progress.start)
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None
    if args.report_dir:
        paths = write_reports(summary, args.report_dir)
        print(f"reports: {paths['html']} {paths['json']} {paths['junit']}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary_dict(summary), default=str))
    counts = summary.counts()
    line = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    # the last line: the verdict; "error:" when the run failed (exit 1) or found no
    # target (exit 3), as every failure line of atp says
    if summary.unreachable:
        print(f"{prog_of(args)}: error: target unreachable: {summary.unreachable}", file=sys.stderr)
    else:
        stale = f"; stale known failures: {', '.join(summary.stale)}" if summary.stale else ""
        failed = "error: " if summary.exit_code else ""
        print(f"{prog_of(args)}: {failed}{args.role}: {line or 'no cases'}{stale}", file=sys.stderr)
    return summary.exit_code


#: options only the router role reads (their help says "router role:"): (dest, flag)
ROUTER_ONLY = (
    ("token", "--token"),
    ("expired_token", "--expired-token"),
    ("limited_token", "--limited-token"),
    ("http_url", "--http-url"),
    ("denied_meta", "--denied-meta"),
    ("policy_unreachable", "--policy-unreachable"),
    ("adapter_listen", "--adapter-listen"),
    ("pressure", "--pressure"),
    ("session_limit", "--session-limit"),
    ("handshake_timeout", "--handshake-timeout"),
    ("quota_tokens", "--quota-tokens"),
    ("quota_concurrent", "--quota-concurrent"),
)


def _check_role_options(args: argparse.Namespace) -> None:
    """An option the role given does not read is bad usage, not ignored: a run that
    passes without the case its operator asked for would look like a pass.

    Raises:
        UsageError: ``--pressure is for --role router, not --role adapter`` and the like.
    """
    if args.role != "router":
        given = [flag for dest, flag in ROUTER_ONLY if getattr(args, dest)]
        if args.encoding != "both":
            given.append("--encoding")
        if given:
            raise UsageError(f"{given[0]} is for --role router, not --role {args.role}")
    if args.exec_cmd and args.role in ("router", "adapter"):
        raise UsageError(
            f"--exec is for --role client and codec; --role {args.role} takes --target"
        )
    if (args.ca or args.insecure) and not args.target.startswith(("wss://", "quic://")):
        flag = "--ca" if args.ca else "--insecure"
        raise UsageError(f"{flag} is for a wss:// or quic:// --target")


def _check_target(role: str, target: str) -> None:
    """A ``--target`` the role's drivers can reach, checked before any case runs (else
    every case would fail with the same connection error).

    Raises:
        UsageError: a URL of the wrong kind for the role.
    """
    from urllib.parse import urlsplit

    if role == "adapter":
        from conformance.roles.adapter import parse_target

        try:
            parse_target(target)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return
    if role != "router":
        return
    if not target.startswith(("ws://", "wss://", "quic://")):
        raise UsageError(
            "the router role needs --target ws://HOST:PORT/PATH, wss://... or "
            f"quic://HOST:PORT, not {target!r}"
        )
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad --target {target!r}: {str(exc).lower()}") from None
    if not parts.hostname or (port is None and target.startswith("quic://")):
        raise UsageError(f"bad --target {target!r}: it needs a host (and a port for quic://)")


def _check_globs(role: str, run: list[str], requirement: list[str]) -> None:
    """A ``--run`` glob or ``--requirement`` ID that selects no case of the role is a
    typo: say so (a run of nothing but SKIPPED would exit 0, as if it had passed).

    Raises:
        UsageError: naming the glob or ID.
    """
    import fnmatch

    if not run and not requirement:
        return
    cases = _cases(role)
    for glob in run:
        if not any(fnmatch.fnmatchcase(c.id, glob) for c in cases):
            raise UsageError(
                f"--run {glob!r} matches no {role} case (see atp conformance list --role {role})"
            )
    cited = {rid for c in cases for rid in c.requirements}
    for rid in requirement:
        if rid.upper() not in cited:
            raise UsageError(f"--requirement {rid} is cited by no {role} case")
