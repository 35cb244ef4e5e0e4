"""A real ``redis-server`` for the tests of ``atp serve --redis`` (Debian's package).

:func:`ensure_redis_server` finds the binary, or installs it with ``apt-get`` (as the
browser tests install Chromium) when it is missing and this runs as root.
:class:`RedisServer` runs one on a free loopback port (Redis has no port 0: a port is
picked, and another one tried when the bind loses a race), with append-only persistence in
its own directory so that :meth:`RedisServer.restart` keeps the data (a restart mid-run
is one of the tests), and stops it. :class:`RedisCluster` runs a Redis Cluster of three
such servers (``--cluster-enabled``, joined with ``redis-cli --cluster create``).
:class:`RedisSentinelSet` runs a master, a replica and a Sentinel watching them
(``redis-server --sentinel``: the Debian package's binary runs as one), for failovers.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from atp_proto.testing.debian import DebianUnavailable, ensure_program

__all__ = [
    "RedisCluster",
    "RedisSentinelSet",
    "RedisServer",
    "RedisUnavailable",
    "ensure_redis_server",
]


class RedisUnavailable(RuntimeError):
    """No redis-server and no way to install it (the message says why)."""


def ensure_redis_server(timeout: float = 900) -> str:
    """The path of ``redis-server``, installed with apt-get when missing.

    (The package's own service may start on 6379: the servers here use their own ports.)

    Raises:
        RedisUnavailable: missing and not root, or apt-get failed.
    """
    try:
        return ensure_program(("redis-server",), "redis-server", timeout)
    except DebianUnavailable as exc:
        raise RedisUnavailable(str(exc)) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on ``127.0.0.1:port`` (AOF in a temporary directory)."""

    def __init__(
        self, binary: str | None = None, *, cluster: bool = False, extra: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary or ensure_redis_server()
        self.cluster = cluster  #: a node of a Redis Cluster (joined by RedisCluster)
        self.extra = extra  #: more command-line options (``--replicaof HOST PORT``)
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
                *(
                    ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                    if self.cluster
                    else []
                ),
                *self.extra,
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

    def cluster_ok(self) -> bool:
        """A cluster node that says ``cluster_state:ok``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"CLUSTER INFO\r\n")
                return b"cluster_state:ok" in s.recv(4096)
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


class RedisCluster:
    """A Redis Cluster of ``n`` primaries on loopback (``redis-server --cluster-enabled``,
    joined by ``redis-cli --cluster create``), no replicas; :attr:`url` names one node
    (``redis+cluster://``: the router discovers the others)."""

    def __init__(self, n: int = 3, binary: str | None = None) -> None:
        binary = binary or ensure_redis_server()
        cli = shutil.which("redis-cli", path=str(Path(binary).parent)) or shutil.which("redis-cli")
        if cli is None:
            raise RedisUnavailable("redis-cli is missing (Debian's redis-tools)")
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(n):
                self.nodes.append(RedisServer(binary, cluster=True))
            addrs = [f"127.0.0.1:{node.port}" for node in self.nodes]
            done = subprocess.run(
                [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                check=False,
                capture_output=True,
                timeout=60,
            )
            if done.returncode != 0:
                out = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
                raise RedisUnavailable(f"redis-cli --cluster create failed: {out}")
            deadline = time.monotonic() + 20
            while not all(node.cluster_ok() for node in self.nodes):
                if time.monotonic() > deadline:
                    raise RedisUnavailable("the Redis Cluster did not become ready")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _command(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """One inline command to a server on loopback; its raw reply ('' when it is away)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            time.sleep(0.02)
            return s.recv(65536)
    except OSError:
        return b""


class RedisSentinelSet:
    """A master and a replica (``--replicaof``) on loopback, and one Sentinel watching the
    master as ``name`` (quorum 1, down after ``down_after_ms``): :attr:`url` is the
    ``redis+sentinel://`` URL a router is given. :meth:`failover` asks the Sentinel for one
    (``SENTINEL FAILOVER``) and waits until it names the other server."""

    def __init__(
        self, binary: str | None = None, *, name: str = "atpmaster", down_after_ms: int = 1000
    ) -> None:
        binary = binary or ensure_redis_server()
        self.name = name
        self.master = RedisServer(binary)
        self.servers = [self.master]
        self.sentinel_proc: subprocess.Popen[bytes] | None = None
        try:
            replica = RedisServer(binary, extra=("--replicaof", "127.0.0.1", str(self.master.port)))
            self.servers.append(replica)
            self.dir = tempfile.mkdtemp(prefix="atp-sentinel-")
            self.sentinel_port = _free_port()
            conf = Path(self.dir) / "sentinel.conf"  # Sentinel rewrites it: its own file
            conf.write_text(
                f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {name} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                f"sentinel failover-timeout {name} 10000\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
            log = open(Path(self.dir) / "sentinel.log", "ab")  # noqa: SIM115 (the child keeps it)
            self.sentinel_proc = subprocess.Popen(
                [binary, str(conf), "--sentinel"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            # ready when the replica is in sync and the Sentinel knows it (a failover
            # needs a replica it has seen)
            self._wait(lambda: b"master_link_status:up" in _command(replica.port, "INFO"), 30)
            self._wait(lambda: self._sentinel_sees_replica(replica.port), 30)
        except BaseException:
            self.close()
            raise

    def _sentinel_sees_replica(self, port: int) -> bool:
        reply = _command(self.sentinel_port, "SENTINEL", "REPLICAS", self.name)
        return f"\r\n{port}\r\n".encode() in reply and b"s_down" not in reply

    @staticmethod
    def _wait(check: object, timeout: float) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RedisUnavailable("the Redis Sentinel set did not become ready")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.name}"

    def master_port(self) -> int:
        """The master's port as the Sentinel names it now."""
        reply = _command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(reply.split(b"\r\n")[-2])

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def failover(self, timeout: float = 30) -> int:
        """``SENTINEL FAILOVER``; returns the new master's port once the Sentinel names it
        and it takes writes.

        Raises:
            RedisUnavailable: the Sentinel refused, or named no new master in time.
        """
        old = self.master_port()
        reply = _command(self.sentinel_port, "SENTINEL", "FAILOVER", self.name)
        if not reply.startswith(b"+OK"):
            raise RedisUnavailable(f"SENTINEL FAILOVER: {reply[:200]!r}")
        self._wait(lambda: self.master_port() != old, timeout)
        new = self.master_port()
        self._wait(lambda: b"role:master" in _command(new, "INFO", "replication"), timeout)
        return new

    def close(self) -> None:
        if self.sentinel_proc is not None and self.sentinel_proc.poll() is None:
            self.sentinel_proc.terminate()
            try:
                self.sentinel_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.sentinel_proc.kill()
                self.sentinel_proc.wait(5)
        for server in self.servers:
            server.close()
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinelSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
