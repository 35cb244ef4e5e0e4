"""Real router and adapter processes on loopback, for tests, benchmarks and the conformance suite.

End-to-end checks run the programs a user runs (``atp serve``, ``atp adapter serve``) as
subprocesses, on ports the kernel picks (``127.0.0.1:0``), and learn the bound address from
the process's own "listening" log line: no race for a free port, no sleeps.

* :class:`RouterProcess` (synchronous: usable from plain tests, benchmark drivers and trio
  tests alike). A thread drains the router's stderr to the end, so the router never blocks
  on a full pipe; the lines are kept for assertions (``log()``) and error messages.
* :func:`adapter_server` / :func:`adapter_fleet` (synchronous): one or several
  ``atp adapter serve`` processes, yielding their grpc URLs.
* :func:`serve_adapter` / :func:`spawn` (trio): an adapter server, ours or another
  implementation's, as an :class:`AdapterProcess`, which extends the runtime's
  :class:`atp_proto.adapters.process.AdapterProcess` (what the demo uses) with its log.

Both stop the same way: SIGTERM (the graceful path the programs implement), then SIGKILL
after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from atp_proto.adapters import process as _adapter_process

__all__ = [
    "AdapterProcess",
    "RouterProcess",
    "adapter_argv",
    "adapter_fleet",
    "adapter_server",
    "clean_env",
    "die_with_parent",
    "serve_adapter",
    "spawn",
]

_LISTENING = re.compile(r"router listening .*?ws=(wss?://\S+)")  # wss: atp serve --cert
_METRICS = re.compile(r"metrics=https?://[^\s:]+:(\d+)/metrics")
_QUIC = re.compile(r"quic=(quic://\S+)")  # atp serve --quic HOST:0 logs the bound port
_ADAPTER_LISTENING = re.compile(rb"listening on [^\s]*:(\d+)")

#: ``python -c`` prologue: raise RLIMIT_NOFILE to the hard limit, then run the CLI
_NOFILE_WRAPPER = (
    "import resource, sys\n"
    "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
    "want = hard if hard != resource.RLIM_INFINITY else 65536\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))\n"
    "from atp_proto.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the process that started it
    dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``): a benchmark killed mid-run leaves
    no router or adapter behind. None where the OS has no such call. The signal follows
    the *thread* that forks: start the child from a thread that lives as long as it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ATP_* / ADAPTER_ENDPOINTS / PYTEST_* (so the
    test runner's settings do not leak into a subprocess), unbuffered, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ATP_", "ADAPTER_ENDPOINTS", "PYTEST_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class RouterProcess:
    """``atp serve`` as a subprocess, ready once it logged "router listening ... ws=URL".

    ``args`` are passed to ``atp serve`` as given. ``ws`` and ``metrics`` (default: free
    loopback ports) add ``--ws`` / ``--metrics`` unless None (then the config file or the
    environment decides). ``adapters`` adds ``--adapter NAME=URL`` each; ``config_toml`` is
    written to a temporary file passed as ``--config`` (removed on stop). ``env`` is the
    whole environment (default: this one's, unbuffered). ``raise_nofile`` raises the
    child's RLIMIT_NOFILE first (benchmarks open thousands of sessions). ``keep_lines``
    bounds the log kept (None: all of it). ``with_parent``: the router gets SIGTERM when
    this process dies, even by SIGKILL (:func:`die_with_parent`).

    Raises:
        RuntimeError: the router exited, or did not log that it listens within ``timeout``.
    """

    def __init__(
        self,
        *args: str,
        ws: str | None = "127.0.0.1:0",
        metrics: str | None = "127.0.0.1:0",
        adapters: Mapping[str, str] | None = None,
        config_toml: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        raise_nofile: bool = False,
        keep_lines: int | None = None,
        timeout: float = 60.0,
        with_parent: bool = False,
    ) -> None:
        argv = [sys.executable, "-c", _NOFILE_WRAPPER] if raise_nofile else [sys.executable]
        if not raise_nofile:
            argv += ["-m", "atp_proto"]
        argv.append("serve")
        if ws is not None:
            argv += ["--ws", ws]
        if metrics is not None:
            argv += ["--metrics", metrics]
        for name, url in (adapters or {}).items():
            argv += ["--adapter", f"{name}={url}"]
        self._config: str | None = None
        if config_toml is not None:
            fd, self._config = tempfile.mkstemp(suffix=".toml", prefix="atp-router-")
            with os.fdopen(fd, "w") as fh:
                fh.write(config_toml)
            argv += ["--config", self._config]
        argv += args
        self.argv = argv
        self.lines: deque[str] = deque(maxlen=keep_lines)  #: stderr lines, with their "\n"
        self.ws_url = ""
        self.quic_url = ""  #: ``quic://HOST:PORT`` when it serves QUIC (``--quic``), else ""
        self.metrics_port: int | None = None
        self._ready = threading.Event()
        self._eof = False  #: the router closed its stderr (it is gone or going)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env if env is not None else os.environ, PYTHONUNBUFFERED="1"),
            cwd=cwd,
            # the hook takes no lock (one prctl, one getppid): safe beside our threads
            preexec_fn=die_with_parent() if with_parent else None,  # noqa: PLW1509
        )
        self.pid = self.proc.pid
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or not self.ws_url:
            what = "exited" if self._eof else f"did not listen within {timeout:g} s"
            self.stop(timeout=2)
            raise RuntimeError(f"atp serve {what} ({self.proc.returncode}): {self.log()[-2000:]}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if not self.ws_url and (m := _LISTENING.search(line)):
                mm = _METRICS.search(line)
                self.metrics_port = int(mm.group(1)) if mm else None
                mq = _QUIC.search(line)
                self.quic_url = mq.group(1) if mq else ""
                self.ws_url = m.group(1)
                self._ready.set()
        self._eof = True
        self._ready.set()  # EOF: the process is gone

    @property
    def url(self) -> str:
        """The WebSocket URL the router listens on (``ws://127.0.0.1:PORT/ws``)."""
        return self.ws_url

    @property
    def ws_port(self) -> int:
        return int(self.ws_url.rsplit(":", 1)[1].split("/", 1)[0])

    @property
    def port(self) -> int:
        return self.ws_port

    def log(self) -> str:
        """Everything the router logged so far (or the last ``keep_lines`` lines)."""
        return "".join(list(self.lines))

    @property
    def tail(self) -> list[str]:
        """The last 40 log lines, without line ends."""
        return [line.rstrip("\n") for line in list(self.lines)[-40:]]

    def terminate(self) -> None:
        """Send SIGTERM (the router drains, then exits); does not wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        _adapter_process.stop_popen([self.proc], timeout)
        self._thread.join(timeout=5)
        if self._config:
            with contextlib.suppress(OSError):
                os.unlink(self._config)
            self._config = None
        return self.proc.returncode

    close = stop

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class AdapterProcess(_adapter_process.AdapterProcess):
    """A running adapter server (``process``, ``port``, ``url``, ``kill()``) and its log."""

    log: Path | None = None  #: where its stderr goes (None: discarded)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


adapter_argv = _adapter_process.adapter_argv


@contextmanager
def adapter_fleet(
    target: str,
    options: Mapping[str, Mapping[str, str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    stop_timeout: float = 5.0,
) -> Iterator[dict[str, str]]:
    """``atp adapter serve TARGET`` once per name of ``options`` (each with its options and
    ``--option name=NAME``), all started before any is awaited; yields ``{name: grpc URL}``
    once every one said where it listens. Synchronous: for module-scoped fixtures. Stops
    them all with SIGTERM, then SIGKILL after ``stop_timeout``."""
    argvs = {
        name: adapter_argv(target, options={**opts, "name": name}) for name, opts in options.items()
    }
    with _adapter_processes(argvs, cwd=cwd, stop_timeout=stop_timeout) as urls:
        yield urls


@contextmanager
def adapter_server(
    target: str,
    *args: str,
    options: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stop_timeout: float = 5.0,
) -> Iterator[str]:
    """One ``atp adapter serve TARGET ARGS``, synchronous (benchmark drivers, module
    fixtures): yields its grpc URL once it listens; stopped as :func:`adapter_fleet`."""
    argvs = {target: adapter_argv(target, *args, options=options)}
    with _adapter_processes(argvs, cwd=cwd, stop_timeout=stop_timeout) as urls:
        yield urls[target]


@contextmanager
def _adapter_processes(
    argvs: Mapping[str, list[str]],
    *,
    cwd: str | os.PathLike[str] | None,
    stop_timeout: float,
) -> Iterator[dict[str, str]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in argvs.items():
            procs[name] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd, env=clean_env()
            )
        urls = {}
        for name, p in procs.items():
            assert p.stdout is not None
            line = p.stdout.readline()
            m = _ADAPTER_LISTENING.search(line)
            if m is None:
                raise RuntimeError(f"adapter {name} did not start: {line!r}")
            urls[name] = f"grpc://127.0.0.1:{int(m.group(1))}"
        yield urls
    finally:
        _adapter_process.stop_popen(procs.values(), stop_timeout)


@asynccontextmanager
async def spawn(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    stop_timeout: float = 3.0,
) -> AsyncIterator[AdapterProcess]:
    """Start a gRPC adapter server ``argv`` and wait for its "listening on HOST:PORT" line on
    stdout; stderr goes to ``log`` (appended). On exit: SIGTERM, then SIGKILL.

    Raises:
        RuntimeError: the process exited before listening.
        trio.TooSlowError: it printed no such line within ``timeout``.
    """
    async with _adapter_process.listening_process(
        argv, log=log, env=env, cwd=cwd, timeout=timeout, stop_timeout=stop_timeout
    ) as (process, port):
        yield AdapterProcess(process, port, log)


@asynccontextmanager
async def serve_adapter(
    target: str,
    *args: str,
    listen: str = "127.0.0.1:0",
    options: Mapping[str, str] | None = None,
    name: str | None = None,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> AsyncIterator[AdapterProcess]:
    """``atp adapter serve TARGET ARGS`` as a real process, ready when it listens."""
    argv = adapter_argv(target, *args, listen=listen, options=options, name=name)
    async with spawn(argv, log=log, env=env, cwd=cwd, timeout=timeout) as proc:
        yield proc
