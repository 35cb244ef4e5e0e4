"""Which requirements the suite covers: spec/requirements.yaml against every role's cases
and ``conformance/UNTESTABLE.md`` (the only escape, each entry with its reason).

A requirement counts as covered when a case of one of its roles cites it, or a codec
case does (the codec role checks the stateless receiver rules every router and client
share, ATP-FRAME-023).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["requirements", "untestable"]


def _spec_file() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "spec" / "requirements.yaml"
    return here if here.exists() else None


@cache
def requirements() -> dict[str, dict[str, Any]]:
    """Requirement ID -> its entry (from the checkout's spec/, else the packaged copy)."""
    path = _spec_file()
    if path is not None:
        text = path.read_text(encoding="utf-8")
    else:
        text = resources.files("conformance").joinpath("requirements.yaml").read_text("utf-8")
    return {r["id"]: r for r in yaml.safe_load(text)["requirements"]}


def untestable() -> dict[str, str]:
    """ID -> reason, from ``conformance/UNTESTABLE.md`` (lines ``- **ATP-X-NNN** reason``)."""
    text = resources.files("conformance").joinpath("UNTESTABLE.md").read_text("utf-8")
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^- \*\*(ATP-[A-Z0-9]+-\d+)\*\*[:\s]+(.+)$", text, re.M)
    }
