"""Every ``atp bench`` subcommand's bad options, walked from its parser (session 8): each
is one line ``atp bench NAME: error: OPTION ...`` naming the option (and, for a choice,
every valid value), exit 2, no usage block, no traceback. ``atp bench e2e --scenario
nope`` said ``argument --scenario: unknown scenario 'nope': use all or load, ...``, and
argparse's own words for a bad choice or number (``argument --transport: invalid choice:
'x' (choose from 'ws', 'quic')``) changed with the Python version."""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

import pytest

from atp_proto.cli import build_parser, main


def _bench_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = top.choices["bench"]
    sub = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    return rc, err.getvalue()


def _cases() -> list[Any]:
    out = []
    for name, p in _bench_parsers().items():
        out.append(pytest.param(name, "--no-such-option", None, id=f"{name}-unknown"))
        for action in p._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            flag = action.option_strings[-1]
            if action.choices is not None:
                out.append(pytest.param(name, flag, list(action.choices), id=f"{name}{flag}"))
            elif action.type is not None:
                out.append(pytest.param(name, flag, None, id=f"{name}{flag}"))
    return out


CASES = _cases()


def test_the_walk_finds_the_options() -> None:
    names = {c.values[0] for c in CASES}
    assert {"codec", "adapters", "ws", "policy", "routing", "quic", "e2e"} <= names
    assert any(c.values[1] == "--scenario" for c in CASES)
    assert any(c.values[2] for c in CASES)  # some option with choices


@pytest.mark.parametrize(("bench", "flag", "choices"), CASES)
def test_a_bad_option_is_one_line_naming_it(
    bench: str, flag: str, choices: list[str] | None
) -> None:
    value = "-1x" if flag != "--no-such-option" else None
    argv = ["bench", bench, f"{flag}={value}"] if value is not None else ["bench", bench, flag]
    rc, err = _run(*argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, (rc, err)
    line = lines[0]
    assert "Traceback" not in err and "usage:" not in line
    prefix = f"atp bench {bench}: error: "
    assert line.startswith(prefix) and line.endswith(f"(see atp bench {bench} --help)"), line
    said = line.removeprefix(prefix)
    if flag == "--no-such-option":
        assert said.startswith("unrecognized arguments: --no-such-option"), said
        return
    assert said.startswith(flag), said
    assert "argument " not in said and "invalid choice" not in said, said
    if choices:
        assert said.startswith(f"{flag} {value}: one of {', '.join(map(str, choices))} "), said


def test_e2e_scenario_names_the_scenarios() -> None:
    rc, err = _run("bench", "e2e", "--scenario", "nope")
    assert rc == 2
    assert err.strip() == (
        "atp bench e2e: error: --scenario: nope is not one of all, load, qos, slow-readers, "
        "capacity, open-streams (see atp bench e2e --help)"
    )
