"""Issue 10 item 6: the C accelerator is built wherever it can be.

Apart from tests/frames/test_ccbor.py on purpose: that file skips as a whole when
``_ccbor`` does not import, so a check kept there could never fail on the very installation
it is about (one where the optional build went wrong silently).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from atp_proto.frames import _cbor


def _can_build() -> bool:
    """A C compiler that runs (``$CC``, else sysconfig's, as setuptools picks it) and the
    Python headers: what building ``_ccbor`` needs."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return False
    try:
        ok = subprocess.run([*cc, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ok and (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


@pytest.mark.skipif(not _can_build(), reason="no C compiler or Python headers: the fallback runs")
def test_the_extension_is_built_where_a_compiler_is() -> None:
    """``pip install -e .`` (./dev setup) builds ``_ccbor`` when it can; the build is
    optional, so a silent failure would only show as a slow codec. This says it loudly."""
    spec = importlib.util.find_spec("atp_proto.frames._ccbor")
    assert spec is not None, "atp_proto.frames._ccbor is missing: run ./dev setup"
    if not os.environ.get("ATP_PURE_CBOR", "").strip("0"):
        assert "c" in _cbor.available()


_ROOT = Path(__file__).resolve().parents[2]


def _setuptools_major() -> int:
    try:
        import setuptools
    except ImportError:
        return 0
    return int(setuptools.__version__.split(".")[0])


@pytest.mark.skipif(
    _setuptools_major() < 77, reason="setuptools>=77 (pyproject.toml's build backend) is needed"
)
def test_a_failed_rebuild_leaves_no_stale_module(tmp_path: Path) -> None:
    """The build is optional, so an edit of ``_ccbor.c`` that does not compile still
    "installs": the module an earlier build left beside it must go, else the old C code
    goes on running (and passing the tests) as if it were the new one. Runs the project's
    own setup.py on a copy whose C source is broken."""
    for name in ("setup.py", "pyproject.toml", "README.md", "atp_proto/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_ROOT / name, tmp_path / name)
    frames = tmp_path / "atp_proto" / "frames"
    frames.mkdir()
    (frames / "_ccbor.c").write_text("this is not C;\n")
    stale = frames / f"_ccbor{sysconfig.get_config_var('EXT_SUFFIX')}"
    stale.write_bytes(b"an old build")

    def build(*args: str) -> None:
        run = subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]  # optional: the install goes on

    build("--build-lib", str(tmp_path / "out"))  # a wheel's build: the tree is not its to clean
    assert stale.exists(), "a build outside the tree removed the module in it"
    build("--inplace")
    assert not stale.exists(), "the module of the old source is still there"
