"""``atp conformance`` as a person and a CI script use it: list, explain, exit statuses
(0 / 1 / 2 / 3), known failures (a stale entry fails), --repeat, and the reports in
--report-dir: report.json against its schema, JUnit XML, and the HTML page rendered by
headless Chromium with the failures and the frames exchanged on it."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from atp_proto.testing import clean_env
from atp_proto.testing.debian import DebianUnavailable, ensure_program

from .conftest import BROKEN, ROOT, refused_port, run_suite

PY = sys.executable
CODEC = f"{PY} -m conformance.testees.python_codec"
BROKEN_CODEC = f"env PYTHONPATH={BROKEN}:{ROOT} {PY} {BROKEN / 'codec_variant.py'} accept-truncated"


def atp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "atp_proto", "conformance", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_and_explain() -> None:
    out = atp("list", "--json")
    assert out.returncode == 0
    cases = json.loads(out.stdout)
    roles = {c["role"] for c in cases}
    assert {"router", "client", "codec"} <= roles
    assert all(c["requirements"] for c in cases)
    req = atp("explain", "ATP-FLOW-001")
    assert req.returncode == 0 and "8. Credit windows" in req.stdout
    assert "router.flow.credit-respected" in req.stdout
    case = atp("explain", "router.seq.skip")
    assert case.returncode == 0 and "ESEQ_RETRY" in case.stdout and "ATP-SEQ-004" in case.stdout
    bad = atp("explain", "no.such.case")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--role", "client"),  # no --exec
        ("run", "--role", "client", "--exec", "my-client"),  # no {url}
        ("run", "--role", "codec", "--exec", CODEC, "--repeat", "0"),
        ("run", "--role", "router"),  # no --target
        ("run", "--role", "router", "--target", "ws://x/ws", "--adapter-listen", "nope"),
        ("run", "--role", "router", "--target", "ws://x/ws", "--adapter-listen", "fd:987"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    out = atp(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_target_exits_3() -> None:
    with refused_port() as port:
        code, report, err = run_suite("--role", "router", "--target", f"ws://127.0.0.1:{port}/ws")
    assert code == 3 and report["exit_code"] == 3 and report["unreachable"]
    assert "unreachable" in err
    # found before any case: none of them is reported as the router's FAIL or an ERROR
    # (the handshake-timeout and subprotocol cases, which connect on their own, were)
    assert not [c for c in report["cases"] if c["verdict"] in ("FAIL", "ERROR")], report["cases"]
    assert "connection refused" in report["unreachable"]
    code, _, _ = run_suite("--role", "codec", "--exec", "/nonexistent/codec-testee")
    assert code == 3


def test_known_failures_and_stale_entries(tmp_path: Path) -> None:
    code, report, _ = run_suite("--role", "codec", "--exec", BROKEN_CODEC)
    failing = sorted(c["id"] for c in report["cases"] if c["verdict"] == "FAIL")
    assert code == 1 and failing
    known = tmp_path / "known.txt"
    known.write_text("# accepted for now\n" + "\n".join(failing) + "\n")
    code, report, _ = run_suite(
        "--role", "codec", "--exec", BROKEN_CODEC, "--known-failures", str(known)
    )
    assert code == 0, report["counts"]
    assert all(c["known_failure"] for c in report["cases"] if c["verdict"] == "FAIL")
    known.write_text(known.read_text() + "codec.hello  # passes: stale\n")
    code, report, err = run_suite(
        "--role", "codec", "--exec", BROKEN_CODEC, "--known-failures", str(known)
    )
    assert code == 1 and report["stale"] == ["codec.hello"] and "stale" in err


def test_repeat_and_selection() -> None:
    code, report, _ = run_suite(
        "--role",
        "codec",
        "--exec",
        CODEC,
        "--repeat",
        "3",
        "--run",
        "codec.fuzz.*",
        "--skip",
        "codec.fuzz.5",
    )
    assert code == 0
    ran = [c for c in report["cases"] if c["verdict"] != "SKIPPED"]
    assert len(ran) == 5 * 3 and {c["repeat"] for c in ran} == {0, 1, 2}
    code, report, _ = run_suite(
        "--role", "codec", "--exec", CODEC, "--requirement", "ATP-FRAME-013"
    )
    ran = {c["id"] for c in report["cases"] if c["verdict"] != "SKIPPED"}
    assert ran == {"codec.decode.frame.caps-without-caps", "codec.decode.frame.caps-on-stream"}


def _chromium() -> str:
    try:
        return ensure_program(("chromium", "chromium-browser"), "chromium")
    except DebianUnavailable as exc:
        pytest.skip(f"chromium is not installed and could not be installed from Debian: {exc}")


def test_reports_in_report_dir_and_html_in_chromium(tmp_path: Path) -> None:
    code, _, _ = run_suite("--role", "codec", "--exec", BROKEN_CODEC, "--report-dir", str(tmp_path))
    assert code == 1
    doc = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(
        doc, json.loads((ROOT / "conformance/schema/report.schema.json").read_text())
    )
    failed = [c for c in doc["cases"] if c["verdict"] == "FAIL"]
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert int(suite.get("failures", "0")) == len(failed) > 0
    dom = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            (tmp_path / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "ATP conformance report" in dom
    assert f"Failures ({len(failed)})" in dom
    first = failed[0]
    assert f'id="case-{first["id"]}"' in dom
    sent_hex = next(e["hex"] for e in first["exchange"] if e["direction"] == "sent")
    assert sent_hex and sent_hex in dom  # the frames exchanged, in hex ...
    assert "stream_id" in dom and "undecodable" in dom  # ... and decoded (a truncated frame)
    assert "ATP-WS-001" in dom
