"""Install a missing Debian package for a test fixture, once across processes.

The tests that need a real server (``redis-server``, Chromium) install it from Debian's
packages when it is missing, as CI does on a fresh machine. Under pytest-xdist several
workers can reach such a fixture at the same moment, and two ``apt-get`` runs at once
fail on dpkg's lock ("Could not get lock /var/lib/dpkg/lock-frontend"). So every install
here runs under one exclusive file lock (``fcntl.flock`` in the temporary directory),
looks for the program again once it holds the lock (another process may have installed it
meanwhile), and asks apt itself to wait for dpkg's lock (``DPkg::Lock::Timeout``) in case
something outside the tests holds it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["DebianUnavailable", "ensure_program"]

_LOCK = Path(tempfile.gettempdir()) / "atp-tests-apt.lock"


class DebianUnavailable(RuntimeError):
    """The program is missing and could not be installed (the message says why)."""


def _which(programs: tuple[str, ...]) -> str | None:
    for name in programs:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_program(programs: tuple[str, ...], package: str, timeout: float = 900) -> str:
    """The path of the first of ``programs`` on PATH, installing ``package`` when none is.

    Raises:
        DebianUnavailable: missing and not root, no apt-get, or apt-get failed.
    """
    found = _which(programs)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DebianUnavailable(
            f"{programs[0]} is not installed and installing it needs root and apt-get "
            f"(apt-get install {package})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", f"DPkg::Lock::Timeout={int(timeout)}"]
    with _LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        found = _which(programs)
        if found:  # another process installed it while this one waited
            return found
        deadline = time.monotonic() + timeout  # this process's own install, from here
        for cmd in (
            ["apt-get", *wait, "update", "-qq"],
            ["apt-get", *wait, "install", "-y", "-qq", package],
        ):
            left = max(1.0, deadline - time.monotonic())
            try:
                done = subprocess.run(cmd, check=False, capture_output=True, env=env, timeout=left)
            except subprocess.TimeoutExpired:
                took = f"{' '.join(cmd)} did not finish in {timeout:.0f} s"
                raise DebianUnavailable(took) from None
            if done.returncode != 0:
                out = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
                raise DebianUnavailable(f"{' '.join(cmd)} failed ({done.returncode}): {out}")
    found = _which(programs)
    if not found:
        raise DebianUnavailable(f"apt-get installed {package} but {programs[0]} is not on PATH")
    return found
