"""How ``./dev test`` shares the suite among pytest-xdist workers (``--dist loadgroup``).

Tests go out one at a time, to whichever worker is free (xdist's "load"), except that a
test module with a module-scoped fixture (a fleet of adapter processes, a built wheel, a
certificate) goes whole to one worker: that worker sets the fixture up once, instead of
every worker building it again (and two workers building a wheel at once in the same
checkout). Such modules are found by reading the module and the conftest.py files above
it for ``scope="module"``.

xdist's own grouping (``@pytest.mark.xdist_group``) cannot do this with pytest 9: it
renames the item's ``_nodeid``, which pytest 9 no longer reads, so every group is lost.
The scope is decided here, on the controller, from the node id alone.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling

_MODULE_SCOPE = re.compile(r"""scope\s*=\s*["']module["']""")


class ModuleFixtureScheduling(LoadGroupScheduling):
    """``loadgroup``, with each module that has a module-scoped fixture as one group."""

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        super().__init__(config, log)
        self._root = Path(config.rootpath)

    @functools.cache  # noqa: B019 - one scheduler per run, a few hundred paths
    def _shares_fixtures(self, path: str) -> bool:
        module = self._root / path
        if module.suffix != ".py":
            return False
        files = [module, *(d / "conftest.py" for d in module.parents if self._root in d.parents)]
        for file in files:
            try:
                if _MODULE_SCOPE.search(file.read_text(encoding="utf-8", errors="replace")):
                    return True
            except OSError:
                continue
        return False

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        if self._shares_fixtures(path):
            return path
        return str(super()._split_scope(nodeid))
