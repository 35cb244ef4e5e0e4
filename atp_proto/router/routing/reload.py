"""Loading the policy and the routing table, and reloading them without a restart.

:class:`PolicySource` says where they come from (``--policy FILE.rego``, ``--opa-url``,
``--routing-table FILE.toml``) and builds a whole :class:`~.policy.PolicyState` from
them: the Rego bundle compiled, the table checked. :class:`Reloader` rebuilds it on
SIGHUP, and when a file's mtime (or size) changed and then held still for one poll
(polled every ``interval_s`` with trio: a writer that pauses is not read half-way;
writing aside and renaming over is safest), and swaps it into the
:class:`~.policy.LayeredPolicy` in one assignment: a stream's decision reads either the
old state or the new one, never a half-loaded one (ATP-SEC-018). A policy or table that
does not load keeps the last good state and logs why, in one line.
``atp_policy_info{version}`` and ``atp_policy_reloads_total{result}`` (/metrics) show
what is loaded.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import trio

from .opa import OpaEngine
from .policy import LayeredPolicy, PolicyState
from .rego import PolicyLoadError, RegoEngine
from .table import RoutingTable, TableError

__all__ = ["PolicySource", "Reloader"]

log = logging.getLogger("atp.router")


@dataclass(frozen=True, slots=True)
class PolicySource:
    policy_file: str | None = None
    opa_url: str | None = None
    opa_timeout_s: float = 1.0
    table_file: str | None = None
    adapters: Collection[str] | None = None  #: the configured adapters (table check)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.policy_file, self.table_file) if f)

    def load(self) -> PolicyState:
        """Build the whole state.

        Raises:
            PolicyLoadError, TableError, ValueError: one line naming the file and the key.
        """
        engine: RegoEngine | OpaEngine | None = None
        if self.opa_url:
            engine = OpaEngine(self.opa_url, timeout_s=self.opa_timeout_s)
        elif self.policy_file:
            engine = RegoEngine.load(self.policy_file)
        table = (
            RoutingTable.load(self.table_file, self.adapters) if self.table_file else RoutingTable()
        )
        return PolicyState(engine, table)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class Reloader:
    """Keeps ``policy.state`` current with ``source``'s files."""

    def __init__(
        self,
        policy: LayeredPolicy,
        source: PolicySource,
        *,
        registry: Any = None,
        interval_s: float = 1.0,
    ) -> None:
        self.policy = policy
        self.source = source
        self.interval_s = interval_s
        self._stamps = {f: _stamp(f) for f in source.files}  #: taken before the first load
        self._settling = False  #: a file changed at the last look
        self.reloads = {"ok": 0, "failed": 0}
        self.last_error = ""
        self._reloading = trio.Lock()
        if registry is not None:
            registry.callback(
                "gauge",
                "atp_policy_info",
                "The loaded policy and routing table (version = policy@table sha256 prefixes)",
                ("version",),
                lambda: [((self.policy.state.version,), 1.0)],
            )
            registry.callback(
                "counter",
                "atp_policy_reloads_total",
                "Policy / routing table reloads, by result (a failed one keeps the last good)",
                ("result",),
                lambda: [((k,), float(v)) for k, v in self.reloads.items()],
            )

    def reload(self, why: str = "request") -> bool:
        """Load the source again; swap it in when it loads, else keep the last good one."""
        old = self.policy.state.version
        try:
            state = self.source.load()
        except (PolicyLoadError, TableError, ValueError) as exc:
            self.reloads["failed"] += 1
            self.last_error = str(exc)
            log.warning("policy reload (%s) failed, keeping %s: %s", why, old, exc)
            return False
        except Exception as exc:  # a loader's bug must not take the running router down
            self.reloads["failed"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("policy reload (%s) failed, keeping %s", why, old)
            return False
        self.policy.state = state  # one assignment: atomic for every reader
        self.reloads["ok"] += 1
        self.last_error = ""
        log.info("policy reloaded (%s): %s -> %s", why, old, state.version)
        return True

    def check_files(self) -> bool:
        """Reload once a watched file changed and then held still for one look (a file
        still being written is not read half-way if its writer pauses less than
        ``interval_s``); True when a reload was tried."""
        if self._due():
            self.reload("file changed")
            return True
        return False

    async def _reload_in_thread(self, why: str) -> None:
        """:meth:`reload` in a worker thread: compiling a policy can take minutes (regopy's
        compiler is quadratic in a long ``1 + 1 + ...``: 4,000 terms take 10 s), and the
        router must go on serving on the last good one meanwhile (regopy releases the GIL
        while it compiles). One reload at a time."""
        async with self._reloading:
            await trio.to_thread.run_sync(self.reload, why, abandon_on_cancel=True)

    def _due(self) -> bool:
        """True when a watched file changed at the last look and held still since."""
        changed = False
        for f in self.source.files:
            now = _stamp(f)
            if now != self._stamps.get(f):
                self._stamps[f] = now
                changed = True
        if changed:
            self._settling = True
            return False
        if self._settling:
            self._settling = False
            return True
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the files and SIGHUP until cancelled; started once SIGHUP is handled (its
        default action would end the process: the router says it listens only after)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch_signal)
            task_status.started()
            if self.source.files:
                while True:
                    await trio.sleep(self.interval_s)
                    if self._due():
                        await self._reload_in_thread("file changed")

    async def _watch_signal(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        try:
            with trio.open_signal_receiver(signal.SIGHUP) as signals:
                task_status.started()
                started = True
                async for _ in signals:
                    for f in self.source.files:
                        self._stamps[f] = _stamp(f)
                    await self._reload_in_thread("SIGHUP")
        except (ValueError, RuntimeError):  # not the main thread (an embedded router)
            if started:
                raise
            task_status.started()
