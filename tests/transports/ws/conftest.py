"""Fixtures of the WebSocket transport tests: the in-process router of tests/router."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.router.conftest import jwt_env, quic_cert, start_router

__all__ = ["jwt_env", "no_handler_errors", "quic_cert", "start_router"]


@pytest.fixture
def no_handler_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The router logs nothing at ERROR (e.g. "connection handler failed"). The handler
    goes on the "atp" logger itself: setup_logging() may have turned propagation off."""
    logger = logging.getLogger("atp")
    caplog.set_level(logging.INFO, logger="atp")
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
    # caplog.records in a fixture's teardown holds only the teardown phase's records
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    records += caplog.records
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert not errors, errors
