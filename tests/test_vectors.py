"""The language-neutral test vectors (``conformance/vectors/``) and where they came from.

``seed.json`` is the one copy in the repository of the seed's example frames; every test
and ``atp frames seeds`` read it. It is compared here with the seed itself,
``../shared/seeds/002_*.txt`` beside the checkout (for a git worktree: beside the main
checkout), when that directory exists; when it does not, the comparison is reported as
skipped, with the places looked in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from atp_proto.frames import JsonMapping
from conformance.vectors import load, seed_frames

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "conformance" / "vectors"


def _checkouts() -> list[Path]:
    """This checkout, and the main checkout when this one is a git worktree (its ``.git``
    is a file pointing into the main checkout's ``.git/worktrees/``)."""
    out = [ROOT]
    dot_git = ROOT / ".git"
    if dot_git.is_file():
        m = re.match(r"gitdir:\s*(.+)", dot_git.read_text())
        if m:
            gitdir = (ROOT / m.group(1).strip()).resolve()
            if gitdir.parent.name == "worktrees":
                out.append(gitdir.parent.parent.parent)
    return out


def seed_dirs() -> list[Path]:
    """Where the seed may be: ``../shared/seeds/`` beside each checkout."""
    return [c.parent / "shared" / "seeds" for c in _checkouts()]


def test_seed_vectors_are_three_frames_with_their_source() -> None:
    doc = load("seed")
    assert [f["name"] for f in doc["frames"]] == ["syn", "partial", "final"]
    assert doc["source"]["document"].startswith("shared/seeds/002_")
    assert list(seed_frames()) == ["syn", "partial", "final"]
    # the file is plain JSON any language can read
    assert json.loads((VECTORS / "seed.json").read_text(encoding="utf-8")) == doc


def test_seed_vectors_decode() -> None:
    """[ATP-JSON-001] The seed frames MUST decode: SYN opens st1, PARTIAL and FINAL on it."""
    jm = JsonMapping()
    frames = [jm.decode(seed_frames()[n]) for n in ("syn", "partial", "final")]
    assert all(f is not None and f.stream_id == 1 for f in frames)


def test_seed_vectors_match_the_seed_beside_the_checkout() -> None:
    """The in-repo copy is the seed's section 3, character for character."""
    doc = load("seed")
    name = Path(doc["source"]["document"]).name
    found = [d / name for d in seed_dirs() if (d / name).exists()]
    if not found:
        pytest.skip(
            f"seed comparison skipped: {name} not found in "
            f"{', '.join(str(d) for d in seed_dirs())} (the in-repo copy is used unchecked)"
        )
    text = found[0].read_text(encoding="utf-8")
    section = text.split("## 3)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    assert blocks == [f["text"] for f in doc["frames"]]


def test_atp_frames_seeds_prints_the_vectors_from_outside_the_checkout(tmp_path: Path) -> None:
    """``atp frames seeds`` reads the vectors as package data, not from the working tree."""
    out = subprocess.run(
        [sys.executable, "-m", "atp_proto", "frames", "seeds", "--name", "final"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == seed_frames()["final"]
