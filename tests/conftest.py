"""Suite-wide test rules.

Every async test runs under ``trio.fail_after`` (60 s unless marked
``@pytest.mark.deadline(seconds)``): a hang fails the test with a traceback instead of
stalling CI. This wraps the test function itself, because pytest-trio runs each fixture
in its own task, so a cancel scope opened in a fixture would not cover the test.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import trio

DEFAULT_DEADLINE_S = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deadline(seconds): fail an async test after this long")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if not inspect.iscoroutinefunction(fn) or getattr(fn, "_atp_deadline", False):
            continue
        marker = item.get_closest_marker("deadline")
        seconds = float(marker.args[0]) if marker else DEFAULT_DEADLINE_S

        def wrap(fn=fn, seconds=seconds):  # type: ignore[no-untyped-def]
            @functools.wraps(fn)
            async def with_deadline(*args, **kwargs):  # type: ignore[no-untyped-def]
                with trio.fail_after(seconds):
                    return await fn(*args, **kwargs)

            with_deadline._atp_deadline = True  # type: ignore[attr-defined]
            return with_deadline

        item.obj = wrap()
