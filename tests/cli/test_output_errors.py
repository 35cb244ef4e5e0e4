"""What happens to a command's output is the system's business, said in one line
(atp_proto/cli.py ``main``): a reader that leaves early (``atp ... | head``) is not an
error and prints nothing (before: a BrokenPipeError traceback), and an output that
cannot be written (a full disk) is one line with exit status 1, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.router._helpers_e2e import ROOT


@pytest.mark.parametrize(
    "argv",
    [("adapter", "list"), ("conformance", "list"), ("conformance", "explain", "ATP-FLOW-001")],
)
def test_a_reader_that_leaves_early_is_not_an_error(argv: tuple[str, ...]) -> None:
    # The reader is gone before the command writes: every write meets a broken pipe.
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "atp_proto", *argv],
            stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this OS")
def test_output_that_cannot_be_written_is_one_line_exit_1() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "atp_proto", "conformance", "list"],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == "atp conformance list: error: no space left on device\n"
