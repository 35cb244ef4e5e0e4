"""The wheel carries everything ``atp`` needs outside a checkout (issue 10, item 5):
``atp_proto`` (with ``atp_proto.testing``), ``conformance`` with its vectors as package
data, and ``benchmarks``, which ``atp bench`` imports as a package.

Built and installed for real: ``pip wheel`` of this checkout, a fresh venv, the wheel
installed into it with ``--no-deps``; the dependencies come from this test run's own
environment through a ``.pth`` line (offline and fast; a ``.pth`` line adds a directory but
does not run the editable install's finder in it, so ``atp_proto`` can only come from the
wheel, which the test checks). Then ``atp frames seeds`` and ``atp bench codec --quick`` run
from a directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ATP_"))}
    out = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{argv}: {out.returncode}\n{out.stdout[-3000:]}{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of a fresh venv holding the wheel of this checkout."""
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        base,
    )
    (wheel,) = wheels.glob("atp_proto-*.whl")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / "bin"
    site = Path(
        _run(
            [
                str(bin_dir / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            base,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(bin_dir / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        base,
    )
    return bin_dir


def test_the_packages_come_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    code = (
        "import json, atp_proto, atp_proto.testing, benchmarks, conformance.vectors\n"
        "print(json.dumps([m.__file__ for m in "
        "(atp_proto, atp_proto.testing, benchmarks, conformance.vectors)]))"
    )
    files = json.loads(_run([str(installed / "python"), "-c", code], tmp_path).stdout)
    venv_dir = str(installed.parent.resolve())
    for f in files:
        assert str(Path(f).resolve()).startswith(venv_dir), files
        assert not str(Path(f).resolve()).startswith(str(ROOT)), files


def test_atp_frames_seeds_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "atp"), "frames", "seeds"], tmp_path)
    assert '"session_id"' in out.stdout


def test_atp_bench_codec_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "atp"), "bench", "codec", "--quick", "--json"], tmp_path)
    result = json.loads(out.stdout)
    assert result["benchmark"] == "codec" and result["judged"] is False
    if shutil.which("cc") and not os.environ.get("ATP_PURE_CBOR", "").strip("0"):
        assert result["machine"]["cbor_path"] == "c"  # the wheel carries the built _ccbor


def test_atp_conformance_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    """Issue 11: scenarios, schemas, UNTESTABLE.md and requirements.yaml are package data."""
    out = _run([str(installed / "atp"), "conformance", "list", "--json"], tmp_path)
    ids = {c["id"] for c in json.loads(out.stdout)}
    assert "router.basic.final" in ids and "codec.hello" in ids
    out = _run([str(installed / "atp"), "conformance", "explain", "ATP-FLOW-001"], tmp_path)
    assert "router.flow.credit-respected" in out.stdout
    testee = f"{installed / 'python'} -m conformance.testees.python_codec"
    out = _run(
        [
            str(installed / "atp"),
            "conformance",
            "run",
            "--role",
            "codec",
            "--exec",
            testee,
            "--json",
        ],
        tmp_path,
    )
    assert json.loads(out.stdout)["exit_code"] == 0
