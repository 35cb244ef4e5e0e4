"""One prefix per command, whoever finds the fault: an error a command finds itself
(a ``UsageError``, a failed file, a refused input) starts with the same innermost
subcommand that argparse names for a bad option of that command (atp_proto/cli.py
``prog_of``). Before, ``atp token issue`` said ``atp token:`` for its own errors and
``atp token issue:`` for argparse's.

Each case runs the real ``atp`` in a subprocess."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.router._helpers_e2e import atp


def _prefix(argv: tuple[str, ...]) -> tuple[int, str]:
    proc = atp(*argv, env={"ATP_JWT_KEY": ""})
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines, (argv, proc.returncode)
    head, sep, _ = lines[-1].partition(": ")
    assert sep, lines
    return proc.returncode, head


@pytest.mark.parametrize(
    ("words", "own_error"),
    [
        (("token", "issue"), ()),  # no key
        (("routing", "show"), ("--state", "{tmp}/absent.sqlite")),
        (("routing", "import"), ("{tmp}/absent.json", "--state", "{tmp}/s.sqlite")),
        (("audit", "verify"), ("{tmp}/absent.jsonl",)),
        (("conformance", "explain"), ("no-such-case",)),
        (("conformance", "run"), ("--role", "router", "--target", "http://x/ws")),
    ],
)
def test_a_command_and_argparse_say_the_same_prefix(
    words: tuple[str, ...], own_error: tuple[str, ...], tmp_path: Path
) -> None:
    own = (*words, *(a.replace("{tmp}", str(tmp_path)) for a in own_error))
    bad_option = (*words, "--no-such-option")
    with ThreadPoolExecutor(2) as pool:
        (rc, prefix), (bad_rc, argparse_prefix) = pool.map(_prefix, [own, bad_option])
    assert bad_rc == 2
    assert argparse_prefix == " ".join(("atp", *words))
    assert rc != 0
    assert prefix == argparse_prefix, (own, prefix)
