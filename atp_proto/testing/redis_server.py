"""A real ``redis-server`` for the tests of ``atp serve --redis`` (Debian's package).

:func:`ensure_redis_server` finds the binary, or installs it with ``apt-get`` (as the
browser tests install Chromium) when it is missing and this runs as root.
:class:`RedisServer` runs one on a free loopback port (Redis has no port 0: a port is
picked, and another one tried when the bind loses a race), with append-only persistence in
its own directory so that :meth:`RedisServer.restart` keeps the data (a restart mid-run
is one of the tests), and stops it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "RedisUnavailable", "ensure_redis_server"]


class RedisUnavailable(RuntimeError):
    """No redis-server and no way to install it (the message says why)."""


def ensure_redis_server(timeout: float = 900) -> str:
    """The path of ``redis-server``, installed with apt-get when missing.

    Raises:
        RedisUnavailable: missing and not root, or apt-get failed.
    """
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() != 0:
        raise RedisUnavailable(
            "redis-server is not installed and installing it needs root "
            "(apt-get install redis-server)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        done = subprocess.run(cmd, check=False, capture_output=True, env=env, timeout=timeout)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise RedisUnavailable(f"{' '.join(cmd)} failed ({done.returncode}): {out}")
    path = shutil.which("redis-server")
    if not path:
        raise RedisUnavailable("apt-get installed redis-server but it is not on PATH")
    # the package's own service may have started on 6379: ours use their own ports
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on ``127.0.0.1:port`` (AOF in a temporary directory)."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or ensure_redis_server()
        self.dir = tempfile.mkdtemp(prefix="atp-redis-")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(5):
            self.port = _free_port()
            if self._start():
                return
        raise RedisUnavailable(f"redis-server did not start: {self.log()[-2000:]}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self, timeout: float = 10.0) -> bool:
        log = open(Path(self.dir) / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # the port was taken meanwhile: the caller picks another
            if self.ping():
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        path = Path(self.dir) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop it (SIGTERM: it writes its append-only file; SIGKILL after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        """Start it again on the same port, with the data it had.

        Raises:
            RedisUnavailable: it did not come back.
        """
        self.stop()
        if not self._start():
            raise RedisUnavailable(f"redis-server did not restart: {self.log()[-2000:]}")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
