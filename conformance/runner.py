"""The conformance runner: selects a role's cases, runs them against a target, applies
the known-failures list, and decides the exit status (``atp conformance run``).

Selection (h2spec / Autobahn style): ``--level`` keeps cases at or below the level;
``--run`` / ``--skip`` are case-id globs; ``--requirement`` keeps cases citing that ID.
Cases not selected are reported as SKIPPED. ``--repeat N`` runs every case N times
(flakiness: one failing repetition fails the case). ``--seed`` makes the fuzz cases'
mutations reproducible. Exit status: 0 every case passed (NON_STRICT, UNSUPPORTED and
SKIPPED do not fail a run), 1 a failure, an ERROR or a stale known failure, 2 bad usage,
3 the target is unreachable.
"""

from __future__ import annotations

import fnmatch
import math
import platform
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from conformance.model import CaseResult, CaseSpec, Exchange, Level, Verdict
from conformance.roles import RunContext, TargetUnreachable, load_role

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "KnownFailures",
    "RunOptions",
    "RunSummary",
    "all_cases",
    "run_suite",
    "select",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
_LEVELS = {Level.L1: 1, Level.L2: 2, Level.L3: 3}
#: the longest one case may take before the runner calls it ERROR (x --timeout-scale)
CASE_TIMEOUT_S = 20.0


class UsageProblem(Exception):
    """Bad options or input files: one line for the person, exit status 2."""


@dataclass
class RunOptions:
    role: str
    target: str = ""
    token: str | None = None
    level: Level = Level.L1
    run: Sequence[str] = ()
    skip: Sequence[str] = ()
    requirements: Sequence[str] = ()
    timeout_scale: float = 1.0
    repeat: int = 1
    seed: int = 0
    report_dir: Path | None = None
    known_failures: Path | None = None
    adapter_listen: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  #: role options (insecure, encoding)


@dataclass
class KnownFailures:
    """A known-failures file: one case id (or glob) per line, ``#`` starts a comment.
    A listed case that fails does not fail the run; one that passes is *stale* and does."""

    patterns: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None) -> KnownFailures:
        if path is None:
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageProblem(
                f"cannot read the known-failures file {path}: {exc.strerror}"
            ) from None
        pats = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        return cls([p for p in pats if p])

    def matches(self, case_id: str) -> bool:
        return any(fnmatch.fnmatchcase(case_id, p) for p in self.patterns)


@dataclass
class RunSummary:
    role: str
    target: str
    level: str
    started: float
    finished: float = 0.0
    results: list[CaseResult] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  #: known failures that now pass
    unreachable: str = ""  #: why the target could not be reached (exit 3)
    seed: int = 0
    testee: dict[str, Any] = field(default_factory=dict)  #: e.g. the codec's hello reply
    host: str = field(default_factory=platform.node)

    def counts(self) -> dict[str, int]:
        out = {v.value: 0 for v in Verdict}
        for r in self.results:
            out[r.verdict.value] += 1
        return out

    def failed(self) -> list[CaseResult]:
        return [
            r
            for r in self.results
            if r.verdict in (Verdict.FAIL, Verdict.ERROR) and not r.known_failure
        ]

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_FAILED if self.failed() or self.stale else EXIT_OK


def all_cases(role: str, options: Mapping[str, Any] | None = None) -> list[CaseSpec]:
    """Every case of ``role``; raises UsageProblem for an unknown role."""
    from conformance.roles import ROLES

    if role not in ROLES:
        raise UsageProblem(f"unknown role {role!r} (choose from {', '.join(ROLES)})")
    try:
        module = load_role(role)
    except ImportError as exc:
        raise UsageProblem(f"the {role} role is not available in this build ({exc})") from None
    return module.cases(options or {})


def select(cases: Iterable[CaseSpec], opts: RunOptions) -> list[tuple[CaseSpec, str]]:
    """Each case with "" when selected, else why it is skipped."""
    out: list[tuple[CaseSpec, str]] = []
    for case in cases:
        why = ""
        if _LEVELS[case.level] > _LEVELS[opts.level]:
            why = f"level {case.level} is above --level {opts.level}"
        elif opts.run and not any(fnmatch.fnmatchcase(case.id, p) for p in opts.run):
            why = "not matched by --run"
        elif any(fnmatch.fnmatchcase(case.id, p) for p in opts.skip):
            why = "matched by --skip"
        elif opts.requirements and not set(opts.requirements) & set(case.requirements):
            why = "cites none of --requirement"
        out.append((case, why))
    return out


def _context(opts: RunOptions, adapter: object | None) -> RunContext:
    options = dict(opts.extra)
    options["level"] = opts.level
    if adapter is not None:
        options["adapter"] = adapter
    return RunContext(
        target=opts.target,
        token=opts.token,
        timeout_scale=opts.timeout_scale,
        seed=opts.seed,
        adapter_listen=opts.adapter_listen,
        options=options,
    )


async def _run_one(module: Any, case: CaseSpec, ctx: RunContext) -> CaseResult:
    start = time.monotonic()
    try:
        with trio.fail_after(CASE_TIMEOUT_S * ctx.timeout_scale):
            result: CaseResult = await module.run(case, ctx)
    except TargetUnreachable:
        raise
    except trio.TooSlowError:
        result = CaseResult(
            case,
            Verdict.FAIL,
            f"the case did not finish within {CASE_TIMEOUT_S * ctx.timeout_scale:g} s "
            "(the target hangs)",
        )
    except Exception as exc:  # a harness bug, not the target's: ERROR with the traceback
        tb = traceback.format_exc(limit=6)
        result = CaseResult(
            case,
            Verdict.ERROR,
            f"harness error: {type(exc).__name__}: {exc}",
            exchange=[Exchange("note", 0.0, note=tb)],
        )
    if not result.duration_ms:
        result.duration_ms = (time.monotonic() - start) * 1000
    return result


async def run_suite(
    opts: RunOptions,
    on_result: Callable[[CaseResult, int, int], None] | None = None,
    on_start: Callable[[CaseSpec], None] | None = None,
) -> RunSummary:
    """Run the selected cases in order (one at a time: cases share the target) and
    return the summary. ``on_result(result, done, total)`` drives the progress view."""
    if opts.repeat < 1 or not math.isfinite(opts.timeout_scale) or opts.timeout_scale <= 0:
        raise UsageProblem("--repeat must be >= 1 and --timeout-scale > 0")
    known = KnownFailures.load(opts.known_failures)
    cases = all_cases(
        opts.role, {"level": opts.level, "seed": opts.seed, "target": opts.target, **opts.extra}
    )
    chosen = select(cases, opts)
    module = load_role(opts.role)
    summary = RunSummary(opts.role, opts.target, opts.level.value, time.time(), seed=opts.seed)
    total = sum(1 for _, why in chosen if not why) * opts.repeat + sum(1 for _, w in chosen if w)
    done = 0
    async with AsyncExitStack() as stack:
        adapter = await _start_adapter(opts, stack)
        ctx = _context(opts, adapter)
        hello = getattr(module, "prepare", None)
        if hello is not None:
            try:
                summary.testee = dict(await hello(ctx))
            except TargetUnreachable as exc:
                summary.unreachable = str(exc)
                summary.finished = time.time()
                return summary
        for case, why in chosen:
            if why:
                res = CaseResult(case, Verdict.SKIPPED, why)
                summary.results.append(res)
                done += 1
                if on_result:
                    on_result(res, done, total)
                continue
            for rep in range(opts.repeat):
                if on_start:
                    on_start(case)
                try:
                    res = await _run_one(module, case, replace(ctx, seed=opts.seed + rep))
                except TargetUnreachable as exc:
                    summary.unreachable = str(exc)
                    summary.finished = time.time()
                    return summary
                res.repeat = rep
                summary.results.append(res)
                done += 1
                if on_result:
                    on_result(res, done, total)
        closer = getattr(module, "finish", None)
        if closer is not None:
            await closer(ctx)
    _apply_known(summary, known)
    summary.finished = time.time()
    return summary


def _apply_known(summary: RunSummary, known: KnownFailures) -> None:
    by_case: dict[str, list[CaseResult]] = {}
    for r in summary.results:
        by_case.setdefault(r.case.id, []).append(r)
    for cid, results in by_case.items():
        if not known.matches(cid) or results[0].verdict is Verdict.SKIPPED:
            continue
        failing = [r for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
        for r in failing:
            r.known_failure = True
        if not failing and any(r.verdict is Verdict.PASS for r in results):
            summary.stale.append(cid)


async def _start_adapter(opts: RunOptions, stack: AsyncExitStack) -> object | None:
    """Serve the scripted gRPC adapter on --adapter-listen (router role only): ``HOST:PORT``
    (the router's adapter ``conf``), or ``HOST:PORT,HOST:PORT`` (``conf`` and ``conf2``, for
    the cases that need two adapters of different strength)."""
    if not opts.adapter_listen or opts.role != "router":
        return None
    addresses: list[tuple[str, int]] = []
    for item in opts.adapter_listen.split(",")[:2]:
        host, _, digits = item.strip().rpartition(":")
        if not host or not digits.isdigit():
            raise UsageProblem(
                "--adapter-listen wants HOST:PORT[,HOST:PORT] or fd:N[,fd:M], "
                f"got {opts.adapter_listen!r}"
            )
        addresses.append((host, int(digits)))
    try:
        from conformance.scripted_adapter import ScriptedAdapter
    except ImportError as exc:
        raise UsageProblem(f"the scripted adapter is not available in this build ({exc})") from None
    adapter = ScriptedAdapter()
    for (host, number), name in zip(addresses, ("conf", "conf2"), strict=False):
        fd = number if host == "fd" else None  # fd:N, a listening socket passed to us
        try:
            await stack.enter_async_context(adapter.serving(host, number, name, fd=fd))
        except OSError as exc:
            raise UsageProblem(f"--adapter-listen {opts.adapter_listen}: {exc}") from None
    return adapter
