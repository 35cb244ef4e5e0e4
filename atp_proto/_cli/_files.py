"""Files named on the command line, checked before a command starts its work.

A file to read that is missing or unreadable, and a place to write that cannot be
written, are bad usage (exit 2, one line), said up front: not exit 1, and not after a
run of minutes whose results then have nowhere to go (README, "Exit codes").
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from atp_proto.cli import UsageError


def why(exc: OSError) -> str:
    """An OSError's reason in a few lower-case words (``no such file``)."""
    if exc.errno == errno.ENOENT:
        return "no such file"
    return (exc.strerror or str(exc)).lower()


def input_file(name: str | os.PathLike[str], what: str = "", *, label: str = "") -> Path:
    """``name`` as a Path, once it is known to be a regular file this process can open.

    Raises:
        UsageError: ``cannot read [WHAT ]NAME: no such file`` (or ``not a file``, or the
            system's reason); ``label`` replaces ``[WHAT ]NAME`` in it.
    """
    path = Path(name)
    label = label or (f"{what} {name}" if what else str(name))
    if path.is_dir():
        raise UsageError(f"cannot read {label}: not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read {label}: {why(exc)}") from None
    return path


def output_dir(name: str | os.PathLike[str], option: str) -> Path:
    """``name`` made (with its parents) if absent, once a file can be created in it.

    Raises:
        UsageError: ``OPTION NAME: <reason>`` (a file in the way, a read-only place).
    """
    path = Path(name)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {name}: {(exc.strerror or str(exc)).lower()}") from None
    return path


def output_file(name: str | os.PathLike[str], option: str) -> Path:
    """``name`` once it can be written: an existing file opened for writing (not
    truncated), or a new one creatable in an existing directory (not left behind).

    Raises:
        UsageError: ``OPTION NAME: <reason>``.
    """
    path = Path(name)
    if path.is_dir():
        raise UsageError(f"{option} {name}: is a directory")
    try:
        if path.exists():
            with open(path, "r+b"):
                pass
        else:
            parent = path.parent
            if not parent.is_dir():
                raise UsageError(f"{option} {name}: no directory {parent}")
            with tempfile.TemporaryFile(dir=parent):
                pass
    except OSError as exc:
        raise UsageError(f"{option} {name}: {(exc.strerror or str(exc)).lower()}") from None
    return path
