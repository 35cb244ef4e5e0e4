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

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ENTRYPOINT", "PACKAGE", "PolicyEvalError", "PolicyLoadError", "RegoEngine"]

PACKAGE = "atp.policy"
ENTRYPOINT = "atp/policy"
#: decisions cached per loaded policy
CACHE_SIZE = 4096
#: the deepest nesting of brackets a policy may have: regopy's parser recurses on the C
#: stack and a few thousand ``[`` end the process (SIGSEGV); real policies nest < 20
MAX_NESTING = 100


class PolicyLoadError(ValueError):
    """The policy cannot be loaded (unreadable, not Rego, no ``package atp.policy``)."""


class PolicyEvalError(Exception):
    """Evaluating the policy failed (a runtime error or an output that is not a document)."""


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("-")]
    msg = "; ".join(dict.fromkeys(lines))
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


@contextlib.contextmanager
def _stdout_captured() -> Iterator[Callable[[], str]]:
    """File descriptor 1 into a temporary file for the block: regopy's compiler prints its
    diagnostics there (``Errors: ... Pass collections failed``), past ``sys.stdout``, in
    the middle of ``atp serve``'s one-line error. Yields what was printed, once read."""
    captured = {"text": ""}
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1: nothing to keep clean
        yield lambda: captured["text"]
        return
    with tempfile.TemporaryFile() as tmp:
        sys.stdout.flush()
        os.dup2(tmp.fileno(), 1)
        try:
            yield lambda: captured["text"]
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            captured["text"] = tmp.read(64 * 1024).decode("utf-8", "replace")


def _compile_error(name: str, error: str, printed: str) -> str:
    """One line from regopy's s-expression error and the diagnostics it printed:
    ``policy.rego:2:3: Invalid assignment operator``."""
    messages = re.findall(r"\(errormsg \d+:([^)\n]*)\)", error)
    where = re.findall(r"^-- (\S+:\d+:\d+)$", printed, re.M)
    if not messages:
        return f"{name}: {_one_line(error)}"
    head = where[0] if where else name
    return _one_line(f"{head}: {'; '.join(dict.fromkeys(messages))}")


def _nesting(source: str) -> int:
    """How deep ``()``, ``[]`` and ``{}`` nest in Rego ``source`` (strings, raw strings
    and comments skipped)."""
    depth = deepest = 0
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "#":
            i = source.find("\n", i)
            if i < 0:
                break
        elif c == "`":
            i = source.find("`", i + 1)
            if i < 0:
                break
        elif c == '"':
            i += 1
            while i < n and source[i] != '"':
                i += 2 if source[i] == "\\" else 1
        elif c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth -= 1
        i += 1
    return deepest


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
        depth = _nesting(source)
        if depth > MAX_NESTING:
            raise PolicyLoadError(f"{name}: brackets nested {depth} deep (at most {MAX_NESTING})")
        self.name = name
        #: what /metrics and the logs show: the first 12 hex digits of the source's sha256
        self.version = hashlib.sha256(source.encode()).hexdigest()[:12]
        builder = regopy.Interpreter()
        with _stdout_captured() as printed:
            try:
                builder.add_module(name, source)
                bundle = builder.build(None, [ENTRYPOINT])
            except regopy.RegoError as exc:
                error: Exception | None = exc
            else:
                error = None
        if error is not None:
            raise PolicyLoadError(_compile_error(name, str(error), printed())) from None
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
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
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
