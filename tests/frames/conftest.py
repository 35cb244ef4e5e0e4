"""Fixtures of the core's tests: ``cbor_path`` runs a test on each CBOR implementation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atp_proto.frames import _cbor, _codec, _frame


@pytest.fixture(params=_cbor.available())
def cbor_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The strict CBOR path under test, "c" or "python" (issue 10 item 6): the C accelerator
    with its frame shortcuts, or the pure-Python code that runs without it (what
    ``ATP_PURE_CBOR=1`` selects). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("cbor_path")``."""
    impl: str = request.param
    if impl == "python":
        monkeypatch.setattr(_codec, "_frame_encode", None)
        monkeypatch.setattr(_codec, "_frame_at", None)
        monkeypatch.setattr(_frame, "_header", _frame._header_py)
    before = _cbor.use(impl)
    try:
        yield impl
    finally:
        _cbor.use(before)
