"""``atp serve --workers N``: N router processes on one port, supervised.

Each worker is a whole router (``atp serve`` with the same options) whose WebSocket
listener is bound with ``SO_REUSEPORT``: the kernel spreads new TCP connections over the
workers' listeners (Linux: by a hash of the connection's addresses). A connection stays
in the worker that accepted it, so a session never moves.

QUIC (UDP) is served by worker 0 only. With ``SO_REUSEPORT`` on UDP the kernel picks the
socket by a hash of the datagram's addresses, and that hash changes whenever the set of
sockets changes (a worker dies or restarts) or the client's address changes (QUIC
connection migration, NAT rebinding): a connection's datagrams would reach a worker that
does not know its connection ID. Routing by connection ID needs an eBPF
``SO_ATTACH_REUSEPORT_EBPF`` program, out of scope here; so one worker owns the UDP port.

Metrics are per worker: worker ``i`` serves ``/metrics`` on the metrics port plus ``i``
(kernel-chosen ports when the metrics port is 0); every log line carries ``worker=i``.
So is the decision log (``--audit-log FILE``): worker ``i`` writes ``FILE`` with
``.worker<i>`` before its extension, one hash chain per writer (two processes appending
to one chain would break it).
Shared state (tenant quotas, the learner) needs ``--redis``: without it each worker
counts alone, and a tenant's quota is per worker (the supervisor says so at start).

The supervisor restarts a worker that exits (backoff 0.5 s doubling to 10 s, reset after
30 s of uptime) and gives up as systemd does (``StartLimitBurst``,
``StartLimitIntervalSec``): a worker that exits ``burst`` times within ``interval`` seconds
(:class:`RestartLimit`, ``atp serve --restart-limit N/SECONDS``, default 5 in 60 s) stops
the whole set, exit status 1; a worker that exits with status 2 (bad usage or
configuration: it would fail the same way again), however long it ran, stops it at once,
exit status 2. Either way the reason is one line on stderr.

SIGTERM / SIGINT: every worker drains (the router's own drain, SIGTERM forwarded) and the
supervisor exits 0 when all have; a second signal kills them. SIGHUP is passed on (every
worker reloads its policy files). Workers run in their own process group (a terminal's
Ctrl-C reaches only the supervisor) and drain by themselves when the supervisor dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import trio

__all__ = [
    "RestartLimit",
    "WorkerOptions",
    "child_argv",
    "reuse_port_listeners",
    "supervise",
    "tag_worker_logs",
    "watch_parent",
    "worker_audit_log",
]

log = logging.getLogger("atp.router")

HAS_REUSEPORT = hasattr(socket, "SO_REUSEPORT")
NO_REUSEPORT = (
    "--workers needs SO_REUSEPORT, which this OS lacks: run one `atp serve` per port "
    "behind a load balancer instead"
)

#: options the supervisor sets itself in each worker's command line (value-taking)
_OWN = (
    "--workers",
    "--ws",
    "--metrics",
    "--quic",
    "--worker-index",
    "--restart-limit",
    "--audit-log",
)


async def reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """A TCP listener on ``host:port`` bound with SO_REUSEPORT (one per address family
    the host resolves to, as :func:`trio.open_tcp_listeners` makes).

    Raises:
        OSError: the OS lacks SO_REUSEPORT, or the bind failed.
    """
    if not HAS_REUSEPORT:
        raise OSError(NO_REUSEPORT)
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    seen: set[tuple[int, object]] = set()
    for family, kind, proto, _, addr in infos:
        if (family, addr[0]) in seen:
            continue
        seen.add((family, addr[0]))
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(addr)
            sock.listen(4096)
        except OSError:
            sock.close()
            for done in listeners:
                await done.aclose()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, never listening: it holds the
    port (a kernel-chosen one when 0) for the supervisor's life, so restarted workers bind
    the same one, and says at once when another program holds the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def worker_audit_log(path: str, index: int) -> str:
    """Worker ``index``'s own decision log beside ``path`` (``audit.jsonl`` ->
    ``audit.worker1.jsonl``): a hash chain has one writer, so N workers write N chains,
    each verified on its own (``atp audit verify``); rotation segments follow each name."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.worker{index}{p.suffix}"))


class WorkerOptions:
    """What differs between workers: their index, ports, QUIC (worker 0 only) and their
    decision log (:func:`worker_audit_log`)."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: tuple[str, int] | None,
        quic: str | None,
        audit_log: str = "",
    ) -> None:
        self.host, self.port, self.metrics, self.quic = host, port, metrics, quic
        self.audit_log = audit_log

    def flags(self, index: int) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        out = ["--ws", f"{host}:{self.port}", "--worker-index", str(index)]
        if self.metrics is None:
            out += ["--metrics", "off"]
        else:
            mhost, mport = self.metrics
            out += ["--metrics", f"{mhost}:{mport + index if mport else 0}"]
        out += ["--quic", self.quic if index == 0 and self.quic else "off"]
        if self.audit_log:
            out += ["--audit-log", worker_audit_log(self.audit_log, index)]
        return out


def child_argv(serve_args: Sequence[str]) -> list[str]:
    """``serve_args`` (what followed ``serve``) without the options the supervisor sets."""
    out: list[str] = []
    skip = False
    for arg in serve_args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _OWN:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def tag_worker_logs(index: int) -> None:
    """Every log record of this process carries ``worker=index``."""

    def tag(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger("atp").handlers:
        handler.addFilter(tag)


async def watch_parent(on_orphaned: trio.Event, parent: int) -> None:
    """Set ``on_orphaned`` when the supervisor (``parent``) is gone."""
    while os.getppid() == parent:
        await trio.sleep(1.0)
    on_orphaned.set()


class RestartLimit(NamedTuple):
    """Give up on a worker that exits ``burst`` times within ``interval`` seconds."""

    burst: int
    interval: float

    @classmethod
    def parse(cls, text: str) -> RestartLimit:
        """``N/SECONDS`` (``5/60``).

        Raises:
            ValueError: not two positive numbers, the first an integer.
        """
        burst, sep, interval = text.partition("/")
        try:
            limit = cls(int(burst), float(interval))
        except ValueError:
            limit = cls(0, 0.0)
        if not sep or limit.burst < 1 or not 0 < limit.interval < float("inf"):
            raise ValueError(f"expected N/SECONDS (e.g. 5/60), got {text!r}")
        return limit


#: systemd's defaults are 5 in 10 s; a worker here takes ~1 s to start and backs off
#: 0.5 + 1 + 2 + 4 s, so 5 exits take ~12 s at best: 60 s catches a worker that dies at start
DEFAULT_RESTART_LIMIT = RestartLimit(5, 60.0)


class _Supervisor:
    def __init__(
        self,
        argv: list[str],
        opts: WorkerOptions,
        n: int,
        limit: RestartLimit = DEFAULT_RESTART_LIMIT,
    ) -> None:
        self.argv, self.opts, self.n, self.limit = argv, opts, n, limit
        self.procs: dict[int, trio.Process] = {}
        self.stopping = False
        self.stop_signal: int = signal.SIGTERM  #: what a worker spawned while stopping gets
        self.status = 0
        self.reason = ""  #: why the supervisor gave up (one line), when it did

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, nursery.cancel_scope)
            async with trio.open_nursery() as workers:
                for i in range(self.n):
                    workers.start_soon(self._keep, i)
            nursery.cancel_scope.cancel()
        return self.status

    async def _keep(self, index: int) -> None:
        backoff = 0.5
        exits: deque[float] = deque()  #: when this worker exited, within the limit's interval
        while not self.stopping:
            started = trio.current_time()
            argv = [*self.argv, *self.opts.flags(index)]
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, start_new_session=True
            )
            self.procs[index] = proc
            log.info("worker started", extra={"worker": index, "pid": proc.pid})
            if self.stopping:  # a signal came while it was being spawned (on a thread)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal)
            with trio.CancelScope(shield=True):
                code = await proc.wait()
            self.procs.pop(index, None)
            if self.stopping:
                log.info("worker stopped", extra={"worker": index, "status": code})
                return
            now = trio.current_time()
            uptime = now - started
            if code == 2:  # bad usage or configuration: a restart fails the same way
                self._give_up(2, f"worker {index} refused its options or configuration (exit 2)")
                return
            exits.append(now)
            while exits and exits[0] < now - self.limit.interval:
                exits.popleft()
            if len(exits) >= self.limit.burst:
                self._give_up(
                    1,
                    f"worker {index} exited {len(exits)} times within "
                    f"{self.limit.interval:g} s (last status {code})",
                )
                return
            if uptime > 30.0:
                backoff = 0.5
            log.warning(
                "worker exited: restarting",
                extra={"worker": index, "status": code, "restart_in_s": backoff},
            )
            await trio.sleep(backoff)
            backoff = min(10.0, backoff * 2)

    def _give_up(self, status: int, reason: str) -> None:
        """Stop every worker: the set cannot serve as configured."""
        if self.stopping:
            return
        self.status, self.reason = status, f"{reason}: stopping all workers"
        log.error(self.reason)
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        self.stopping = True
        self.stop_signal = sig
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for sig in signals:
                if sig == signal.SIGHUP:  # reload the policy files: every worker does
                    for proc in list(self.procs.values()):
                        with contextlib.suppress(ProcessLookupError):
                            proc.send_signal(signal.SIGHUP)
                    continue
                if self.stopping:
                    log.warning("second signal: killing the workers")
                    self._stop(signal.SIGKILL)
                    return
                log.info(
                    "signal received, draining the workers",
                    extra={"signal": signal.Signals(sig).name, "workers": len(self.procs)},
                )
                self._stop(signal.SIGTERM)


def supervise(
    serve_args: Sequence[str],
    opts: WorkerOptions,
    n: int,
    limit: RestartLimit = DEFAULT_RESTART_LIMIT,
) -> int:
    """Run ``n`` workers of ``atp serve serve_args`` until a signal, or until it gives up
    (:class:`RestartLimit`, a worker's exit status 2: the reason is printed on stderr as
    one line); the exit status (0 drained, 1 gave up, 2 bad configuration)."""
    argv = [sys.executable, "-m", "atp_proto", "serve", *child_argv(serve_args)]
    sup = _Supervisor(argv, opts, n, limit)
    status = trio.run(sup.run)
    if sup.reason:
        print(f"atp serve: error: {sup.reason}", file=sys.stderr)
    return status
