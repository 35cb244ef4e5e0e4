"""Bad usage found by argparse is one line for a person, exit status 2, for every command
and nested subcommand (atp_proto/cli.py ``ArgumentParser``).

Each case runs the real ``atp`` in a subprocess. The commands are read from the parser
tree itself, so a command added later is covered without a new test.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from atp_proto.cli import build_parser
from tests.router._helpers_e2e import atp


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser]
]:  # fmt: skip
    """Every (sub)command's words and parser, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


TREE = list(_commands(build_parser()))
#: the commands whose parser has subcommands of its own (atp itself aside)
GROUPS = [(path, p) for path, p in TREE if path and _subcommands(p)]


def _one_line(argv: tuple[str, ...]) -> tuple[int, str, str]:
    proc = atp(*argv)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, (argv, proc.stderr)
    assert "usage:" not in proc.stderr
    return proc.returncode, lines[0], proc.stdout


def _run_all(cases: list[tuple[str, ...]]) -> list[tuple[int, str, str]]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(_one_line, cases))


def test_the_tree_is_found() -> None:
    """The walk sees the nested commands (otherwise the tests below would check little)."""
    names = {" ".join(path) for path, _ in TREE}
    assert {"serve", "routing show", "bench ws", "conformance run", "token issue"} <= names
    assert {"routing", "bench", "frames", "adapter", "token", "audit", "conformance"} <= {
        path[0] for path, _ in GROUPS
    }


def test_an_unknown_option_is_blamed_on_the_innermost_command() -> None:
    """``atp routing show --nope``: one line naming ``atp routing show`` and its help,
    exit 2; before, argparse blamed ``atp`` after printing its usage. (A command with
    required arguments names those first, in the same one line.)"""
    leaves = [(path, p) for path, p in TREE if not _subcommands(p)]
    cases = [(*path, "--no-such-option") for path, _ in leaves] + [("--no-such-option",)]
    needs = [any(a.required for a in p._actions) for _, p in leaves] + [False]
    assert not all(needs)
    for argv, required, (rc, line, out) in zip(cases, needs, _run_all(cases), strict=True):
        prog = " ".join(("atp", *argv[:-1]))
        assert rc == 2, (argv, line)
        what = (
            "the following arguments are required: "
            if required
            else "unrecognized arguments: --no-such-option"
        )
        assert line.startswith(f"{prog}: error: {what}"), line
        assert line.endswith(f" (see {prog} --help)"), line
        assert out == ""


def test_a_missing_subcommand_lists_the_choices() -> None:
    cases = [path for path, _ in GROUPS]
    for (path, parser), (rc, line, _) in zip(GROUPS, _run_all(cases), strict=True):
        prog = " ".join(("atp", *path))
        assert rc == 2, (path, line)
        assert line.startswith(f"{prog}: error: missing "), line
        assert ", ".join(_subcommands(parser)) in line
        assert line.endswith(f"(see {prog} --help)")


def test_an_unknown_subcommand_and_bad_values_are_one_line() -> None:
    cases = [
        ("bench", "nope"),
        ("routing", "nope"),
        ("nope",),
        ("serve", "--workers", "x"),
        ("send", "--qos", "platinum", "ws://127.0.0.1:9/ws", "--prompt", "hi"),
        ("token", "issue", "--ttl", "abc"),
        ("send", "ws://127.0.0.1:9/ws"),  # --prompt is required
        ("adapter", "serve"),  # TARGET is required
    ]
    expected = [
        r"atp bench: error: BENCHMARK nope: one of codec, adapters,",
        r"atp routing: error: ACTION nope: one of ",
        r"atp: error: COMMAND nope: one of demo, serve,",
        r"atp serve: error: --workers x: not an integer \(see atp serve --help\)$",
        r"atp send: error: --qos platinum: one of ",
        r"atp token issue: error: --ttl abc: not an integer",
        r"atp send: error: the following arguments are required: --prompt",
        r"atp adapter serve: error: the following arguments are required: TARGET",
    ]
    for argv, pattern, (rc, line, _) in zip(cases, expected, _run_all(cases), strict=True):
        assert rc == 2, (argv, line)
        assert re.match(pattern, line), (argv, line)


@pytest.mark.parametrize("argv", [("--help",), ("routing", "show", "--help")])
def test_help_is_still_the_whole_usage_and_exit_0(argv: tuple[str, ...]) -> None:
    proc = atp(*argv)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: atp"), proc.stderr
    assert proc.stderr == ""
