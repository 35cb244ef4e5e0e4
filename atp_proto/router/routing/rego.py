"""Rego policies evaluated in-process with regopy (ATP-SEC-013, ATP-SEC-016).

The policy file is compiled ONCE, when it is loaded: ``Interpreter.build`` makes a bundle
with the entry point ``atp/policy`` (the whole ``package atp.policy`` document), and each
decision runs ``query_bundle_entrypoint`` on it (~50-130 µs, against ~800 µs for
``query()``, which recompiles on every call). Answers are cached by their input document
(a bounded LRU): the input holds only what a decision may depend on (docs/policy.md), so
equal inputs get equal answers. The cache belongs to one loaded policy: a reload starts
a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ENTRYPOINT", "PACKAGE", "PolicyEvalError", "PolicyLoadError", "RegoEngine"]

PACKAGE = "atp.policy"
ENTRYPOINT = "atp/policy"
#: decisions cached per loaded policy
CACHE_SIZE = 4096


class PolicyLoadError(ValueError):
    """The policy cannot be loaded (unreadable, not Rego, no ``package atp.policy``)."""


class PolicyEvalError(Exception):
    """Evaluating the policy failed (a runtime error or an output that is not a document)."""


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("-")]
    msg = "; ".join(dict.fromkeys(lines))
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _regopy() -> Any:
    try:
        import regopy
    except ImportError:  # pragma: no cover - a dependency; an install without it
        raise PolicyLoadError(
            "Rego policies need the regopy package (pip install regopy)"
        ) from None
    return regopy


class RegoEngine:
    """One compiled Rego policy: ``evaluate(input) -> the atp.policy document``."""

    def __init__(self, source: str, name: str = "policy.rego") -> None:
        regopy = _regopy()
        if f"package {PACKAGE}" not in source:
            raise PolicyLoadError(f"{name}: the policy must declare 'package {PACKAGE}'")
        self.name = name
        #: what /metrics and the logs show: the first 12 hex digits of the source's sha256
        self.version = hashlib.sha256(source.encode()).hexdigest()[:12]
        builder = regopy.Interpreter()
        try:
            builder.add_module(name, source)
            bundle = builder.build(None, [ENTRYPOINT])
        except regopy.RegoError as exc:
            raise PolicyLoadError(f"{name}: {_one_line(str(exc))}") from None
        if not bundle.ok():
            raise PolicyLoadError(f"{name}: the policy did not compile")
        self._regopy = regopy
        self._bundle = bundle
        self._interp = regopy.Interpreter()
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        # a policy that fails on an empty input is broken: refuse it at load, not per stream
        self._run({})

    @classmethod
    def load(cls, path: str | Path) -> RegoEngine:
        try:
            source = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            why = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror or exc
            raise PolicyLoadError(f"cannot read policy {path}: {str(why).lower()}") from None
        except UnicodeDecodeError as exc:
            raise PolicyLoadError(f"cannot read policy {path}: not UTF-8 text ({exc})") from None
        try:
            return cls(source, name=str(path))
        except PolicyEvalError as exc:
            raise PolicyLoadError(f"{path}: {exc}") from None

    def _run(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        regopy = self._regopy
        try:
            self._interp.set_input(regopy.Input(doc))
            out = self._interp.query_bundle_entrypoint(self._bundle, ENTRYPOINT)
        except regopy.RegoError as exc:
            raise PolicyEvalError(_one_line(str(exc))) from None
        if not out.ok():
            raise PolicyEvalError(_one_line(str(out)))
        text = str(out)
        if text == "undefined":
            return {}
        try:
            result = json.loads(text)["expressions"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PolicyEvalError("the policy's answer is not a document") from None
        if not isinstance(result, dict):
            raise PolicyEvalError(f"data.{PACKAGE} is not an object")
        return result

    def evaluate(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The ``data.atp.policy`` document for ``doc`` (cached).

        Raises:
            PolicyEvalError: the policy failed on this input.
        """
        key = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        result = self._run(doc)
        self._cache[key] = result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result
