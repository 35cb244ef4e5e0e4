"""Test vectors: language-neutral JSON files, one per topic.

``seed.json``
    The seed's three example frames (SYN, PARTIAL, FINAL) in the JSON text mapping,
    verbatim, with where they came from. Read by ``atp frames seeds`` and by the tests.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


def load(name: str) -> Any:
    """The parsed vector file ``NAME.json`` (package data: works from an installed wheel)."""
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text("utf-8"))


@cache
def seed_frames() -> dict[str, str]:
    """The seed's example frames by name (``syn``, ``partial``, ``final``): each frame's
    JSON text exactly as the seed gives it (ATP-JSON-001: they MUST decode)."""
    return {f["name"]: f["text"] for f in load("seed")["frames"]}
