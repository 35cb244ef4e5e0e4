"""``ensure_program``: the one way the fixtures install a missing Debian package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from atp_proto.testing.debian import DebianUnavailable, ensure_program


def test_a_program_on_path_is_returned_without_apt() -> None:
    assert ensure_program(("no-such-program-atp", "sh"), "dash") == shutil.which("sh")


def test_a_missing_program_without_apt_get_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither the program nor apt-get
    with pytest.raises(DebianUnavailable, match=r"apt-get install no-such-package-atp"):
        ensure_program(("no-such-program-atp",), "no-such-package-atp")
