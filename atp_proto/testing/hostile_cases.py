"""The hostile peer's cases: mutations of valid conversations, each with the spec's verdict.

The registry and the verdicts (``stream``, ``conn``, ``ok``) are in :mod:`.hostile_verdicts`;
the cases register themselves from :mod:`.hostile_cases_errors` (connection and stream
errors), :mod:`.hostile_cases_input` (what must be ignored or accepted) and
:mod:`.hostile_cases_limits` (JSON, time, budget, limits, QUIC). Importing this module
loads all of them.
"""

from __future__ import annotations

from . import hostile_cases_errors, hostile_cases_input, hostile_cases_limits
from .hostile_verdicts import CASES, Case, run_case

__all__ = ["CASES", "Case", "run_case"]
_LOADED = (hostile_cases_errors, hostile_cases_input, hostile_cases_limits)
