"""Files named on the command line, for every command that takes one (the real ``atp``
in a subprocess; atp_proto/_cli/_files.py):

- a file to read that does not exist is bad usage, exit 2, one line ``cannot read ...:
  no such file`` (before: ``atp routing`` exited 1 where ``atp audit`` exited 2, and
  ``atp serve --quic-cert`` said it could not listen);
- a place to write that cannot be written is said before the work starts, exit 2 (before:
  ``atp bench e2e --plot`` failed only after its run).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.router._helpers_e2e import atp

#: (argv with {nope} for a missing file, what the line names)
MISSING = [
    (("routing", "show", "--state", "{nope}"), "the routing state {nope}"),
    (("routing", "export", "--state", "{nope}"), "the routing state {nope}"),
    (("routing", "train", "{nope}", "--state", "{tmp}/s.sqlite"), "{nope}"),
    (("routing", "import", "{nope}", "--state", "{tmp}/s.sqlite"), "{nope}"),
    (("audit", "verify", "{nope}"), "{nope}"),
    (("token", "issue", "--key-file", "{nope}"), "--key-file {nope}"),
    (("frames", "decode", "{nope}"), "{nope}"),
    (("bench", "routing", "--quick", "--data", "{nope}"), "--data {nope}"),
    (("send", "wss://127.0.0.1:9/ws", "--prompt", "hi", "--ca", "{nope}"), "--ca {nope}"),
    (("feedback", "ab", "0.5", "--url", "https://127.0.0.1:9", "--ca", "{nope}"), "--ca {nope}"),
    (
        (
            "conformance",
            "run",
            "--role",
            "router",
            "--target",
            "ws://127.0.0.1:9/ws",
            "--known-failures",
            "{nope}",
        ),
        "--known-failures {nope}",
    ),
    (
        (
            "conformance",
            "run",
            "--role",
            "router",
            "--target",
            "wss://127.0.0.1:9/ws",
            "--ca",
            "{nope}",
        ),
        "--ca {nope}",
    ),
    *(
        (("serve", "--ws", "127.0.0.1:0", "--metrics", "off", *extra), f"{flag} {{nope}}")
        for flag, extra in [
            ("--config", ("--no-auth", "--config", "{nope}")),
            ("--policy", ("--no-auth", "--policy", "{nope}")),
            ("--routing-table", ("--no-auth", "--routing-table", "{nope}")),
            ("--jwt-key-file", ("--jwt-key-file", "{nope}")),
            ("--jwks", ("--jwks", "{nope}")),
            ("--cert", ("--no-auth", "--cert", "{nope}", "--key", "{nope}")),
            (
                "--quic-cert",
                (
                    "--no-auth",
                    "--quic",
                    "127.0.0.1:0",
                    "--quic-cert",
                    "{nope}",
                    "--quic-key",
                    "{nope}",
                ),
            ),
        ]
    ),
]


def _fill(words: tuple[str, ...], tmp: Path) -> tuple[str, ...]:
    nope = str(tmp / "no-such-file")
    return tuple(w.replace("{nope}", nope).replace("{tmp}", str(tmp)) for w in words)


def _one_line(argv: tuple[str, ...]) -> tuple[int, list[str], str]:
    proc = atp(*argv, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if " WARNING " not in ln]
    return proc.returncode, lines, proc.stdout


def test_a_missing_input_file_is_bad_usage_for_every_command(tmp_path: Path) -> None:
    cases = [_fill(argv, tmp_path) for argv, _ in MISSING]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(_one_line, cases))
    for argv, (_, named), (rc, lines, _) in zip(cases, MISSING, results, strict=True):
        assert rc == 2, (argv, rc, lines)
        assert len(lines) == 1, (argv, lines)
        what = _fill((named,), tmp_path)[0]
        assert lines[0].endswith(f": error: cannot read {what}: no such file"), lines[0]


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A path below a regular file: no directory can be made there, nothing written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "out"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (("bench", "e2e", "--quick", "--scenario", "load", "--plot", "{out}"), "--plot"),
        (("routing", "export", "--state", "{state}", "-o", "{out}/x.json"), "--output"),
        (("frames", "encode", "--out", "{out}/x.bin", "-"), "--out"),
        (
            (
                "conformance",
                "run",
                "--role",
                "router",
                "--target",
                "ws://127.0.0.1:9/ws",
                "--report-dir",
                "{out}",
            ),
            "--report-dir",
        ),
    ],
)
def test_an_output_that_cannot_be_written_is_said_before_the_work(
    argv: tuple[str, ...], option: str, blocked: Path, tmp_path: Path
) -> None:
    state = tmp_path / "s.sqlite"
    if "{state}" in argv:  # a real state to export
        data = tmp_path / "d.jsonl"
        model = {"correct": 1, "in_tokens": 20, "out_tokens": 10, "cost_usd": 0.001}
        rec = {"id": "t/1", "source": "t", "prompt": "p", "bucket": 1, "models": {"a": model}}
        data.write_text(json.dumps(rec) + "\n")
        assert atp("routing", "train", str(data), "--state", str(state)).returncode == 0
    filled = tuple(a.replace("{out}", str(blocked)).replace("{state}", str(state)) for a in argv)
    rc, lines, out = _one_line(filled)
    assert rc == 2, (rc, lines)
    assert len(lines) == 1 and f": error: {option} {blocked}" in lines[0], lines
    assert out == ""  # nothing ran: no benchmark table, no report, no frames
