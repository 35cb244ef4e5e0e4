"""Suite-wide test rules.

Every async test runs under ``trio.fail_after`` (60 s unless marked
``@pytest.mark.deadline(seconds)``): a hang fails the test with a traceback instead of
stalling CI. This wraps the test function itself, because pytest-trio runs each fixture
in its own task, so a cancel scope opened in a fixture would not cover the test.

The suite runs in parallel (``./dev test``: pytest-xdist, ``--dist loadgroup``), so:

* a module with a module-scoped fixture (a fleet of adapter processes, a built wheel) goes
  whole to one worker, which sets the fixture up once (tests/_xdist_scheduling.py);
* each worker's ``XDG_DATA_HOME`` (where ``atp serve --dev-cert`` keeps its certificate) is
  a directory of its own, inherited by the processes the tests start: no test writes the
  user's data directory, and no two workers share one;
* servers bind port 0 and report the port they got (never "pick a free port, close it,
  let the server bind it": another worker can take it in between).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings

DEFAULT_DEADLINE_S = 60.0

# No timing checks in property tests: Hypothesis' per-example deadline (200 ms) and its
# too-slow health check fail on a loaded host, or with the suite's workers sharing the cores
# (an example took 348 ms once, 0.4 ms when replayed). Tests that set their own keep them.
settings.register_profile("atp", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("atp")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deadline(seconds): fail an async test after this long")


@pytest.fixture(scope="session", autouse=True)
def _own_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``XDG_DATA_HOME`` of this worker's session: a fresh directory (tests that need
    another one still set it themselves)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
        yield


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: tests/_xdist_scheduling.py (modules with module-scoped
    fixtures stay on one worker)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from tests._xdist_scheduling import ModuleFixtureScheduling

    return ModuleFixtureScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if os.environ.get("ATP_COVER_PROPERTIES") != "1" and getattr(
            fn, "is_hypothesis_test", False
        ):
            # Property tests run without coverage tracing, which doubled their time (they
            # hammer the core); the coverage gate counts what the deterministic tests
            # execute. ATP_COVER_PROPERTIES=1 measures them too.
            item.add_marker(pytest.mark.no_cover)
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
