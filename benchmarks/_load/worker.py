"""One load process: trio, many concurrent ATP streams, HDR histograms per lane.

A worker gets a :class:`Plan` (picklable) and a pipe. It drives either

* ``target="router"``: ``sessions`` ATP sessions to the router over WebSocket (the shared
  raw wsproto client) or QUIC, each driven by the library's :class:`~atp_proto.session.
  Session` (reader, writer and timer tasks; credit returned per received message), at most
  ``per_session`` streams open on one session (the router allows 100); or
* ``target="direct"``: the same streams as ``Stream`` calls straight to the gRPC adapters
  (:class:`~atp_proto.adapters.grpc.GrpcAdapter`, one HTTP/2 connection per adapter, as the
  router holds), so the router's added latency is the difference (issue 14 item 2).

Load is **open-loop** (``Flow.rate`` > 0: stream *i* of a flow is due at ``start + i /
rate``; its latencies are measured from that intended time, so when the client or the
router falls behind, the wait counts: coordinated-omission correction) or **closed-loop**
(``concurrency`` clients per lane share, each sending its next stream when the last one
ended). Streams that find every session full wait in a backlog (still timed from their
intended time). Streams due before ``warmup`` are sent but not recorded.

A shed stream (EPREEMPT) of a flow with ``honour_retry`` is sent again after the router's
``retry_after_ms`` (at most ``max_retries`` times); its latency stays measured from its
first intended send.

Once connected it sends ``("ready", None)`` and waits for the wall-clock time of the run's
second 0 (the same for every worker). Every ``tick`` seconds it sends
``("tick", {lane: counters})``; at the end ``("done", result)`` with the histograms
encoded (:mod:`.hist`), or ``("error", text)``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import hist

#: per-lane counters a tick and the result carry
COUNTERS = (
    "requests",  # logical requests (first attempts), recorded window only
    "attempts",  # SYNs / Stream calls sent, retries included
    "completed",  # ended with a FINAL
    "failed",  # ended with an error and no retry left
    "retries",  # attempts re-sent after EPREEMPT + retry_after_ms
    "partials",  # PARTIAL messages received
    "finals",  # FINAL messages received
    "shed_no_hint",  # EPREEMPT without retry_after_ms (the spec asks for the hint)
)


@dataclass(frozen=True)
class Flow:
    """Open-loop streams of one lane: ``rate`` per second (this worker's share) between
    ``start`` and ``end`` seconds of the run."""

    lane: str
    rate: float
    start: float = 0.0
    end: float = math.inf
    honour_retry: bool = True


@dataclass(frozen=True)
class Plan:
    target: str  #: "router" | "direct"
    duration: float
    url: str = ""  #: router: ws://... or quic://HOST:PORT
    ca_file: str | None = None  #: quic: the router's certificate
    adapters: dict[str, str] = field(default_factory=dict)  #: name -> grpc URL
    flows: tuple[Flow, ...] = ()  #: open loop
    concurrency: int = 0  #: closed loop: clients in this worker (lanes round-robin)
    lanes: tuple[str, ...] = ("gold",)  #: closed loop
    warmup: float = 0.0
    prompt_bytes: int = 64
    sessions: int = 4
    per_session: int = 90
    max_retries: int = 3
    drain: float = 5.0  #: seconds to wait for streams still open after ``duration``
    tick: float = 0.5
    seed: int = 0


@dataclass
class _Lane:
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    errors: dict[str, int] = field(default_factory=dict)  #: every attempt's error, by code
    ttfp: Any = field(default_factory=hist.new)
    ttf: Any = field(default_factory=hist.new)
    #: second of the run -> TTFP histogram of streams due in that second
    timeline: dict[int, Any] = field(default_factory=dict)


@dataclass(eq=False)  # hashed by identity: kept in Worker.live
class _Stream:
    lane: str
    intended: float  #: trio time the stream was due
    recorded: bool
    honour_retry: bool
    tries: int = 0
    first: float | None = None
    done: Any = None  #: closed loop: trio.Event set when the stream ends


class Worker:
    def __init__(self, plan: Plan, pipe: Any) -> None:
        import trio

        self.plan = plan
        self.pipe = pipe
        self.lanes: dict[str, _Lane] = {}
        self.open: int = 0  #: streams started and not ended (retries waiting included)
        self.backlog: deque[_Stream] = deque()
        self.t0 = 0.0
        self.body = b""
        self.names = sorted(plan.adapters) or ["persona"]
        self.next_adapter = 0
        self.all_sent = trio.Event()
        self.idle = trio.Event()
        self.sessions: list[Any] = []  #: router: [Session]
        self.session_open: list[int] = []
        self.owner: dict[tuple[int, int], _Stream] = {}  #: (session index, stream id)
        self.grpc: dict[str, Any] = {}
        self.nursery: Any = None
        self.prompt = ""
        #: logical requests not yet ended (in flight, in the backlog or waiting to retry)
        self.live: set[_Stream] = set()

    # ---------------------------------------------------------------- bookkeeping

    def lane(self, name: str) -> _Lane:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = _Lane()
        return lane

    def count(self, st: _Stream, key: str, n: int = 1) -> None:
        if st.recorded:
            self.lane(st.lane).counters[key] += n

    def adapter(self) -> str:
        name = self.names[self.next_adapter % len(self.names)]
        self.next_adapter += 1
        return name

    def finished(self, st: _Stream, now: float, error: str | None, retry_ms: int | None) -> None:
        """A stream attempt ended: record it, retry it, or start a waiting one."""
        lane = self.lane(st.lane)
        if error is None:
            self.count(st, "completed")
            if st.recorded:
                if st.first is not None:
                    hist.record_s(lane.ttfp, st.first - st.intended)
                    sec = int(st.intended - self.t0)
                    h = lane.timeline.get(sec)
                    if h is None:
                        h = lane.timeline[sec] = hist.new()
                    hist.record_s(h, st.first - st.intended)
                hist.record_s(lane.ttf, now - st.intended)
        else:
            if st.recorded:
                lane.errors[error] = lane.errors.get(error, 0) + 1
            if error == "EPREEMPT" and retry_ms is None:
                self.count(st, "shed_no_hint")
            if (
                error == "EPREEMPT"
                and st.honour_retry
                and st.tries <= self.plan.max_retries
                and now - self.t0 < self.plan.duration
            ):
                self.count(st, "retries")
                delay = (retry_ms if retry_ms is not None else 100) / 1000
                st.first = None
                self.nursery.start_soon(self._retry_later, st, delay)
                self._dispatch_backlog()
                return
            self.count(st, "failed")
        if st.done is not None:
            st.done.set()
        self.open -= 1
        self.live.discard(st)
        self._dispatch_backlog()
        if self.open == 0 and self.all_sent.is_set():
            self.idle.set()

    async def _retry_later(self, st: _Stream, delay: float) -> None:
        import trio

        await trio.sleep(delay)
        self.send(st)

    def _dispatch_backlog(self) -> None:
        while self.backlog and self._room():
            self._start(self.backlog.popleft())

    # ---------------------------------------------------------------- sending

    def new_stream(self, lane: str, intended: float, honour_retry: bool) -> _Stream:
        rel = intended - self.t0
        st = _Stream(lane, intended, self.plan.warmup <= rel < self.plan.duration, honour_retry)
        self.count(st, "requests")
        self.open += 1
        self.live.add(st)
        return st

    def send(self, st: _Stream) -> None:
        if self._room():
            self._start(st)
        else:
            self.backlog.append(st)

    def _room(self) -> bool:
        if self.plan.target == "direct":
            return self._direct_open < self.plan.sessions * self.plan.per_session
        return min(self.session_open) < self.plan.per_session

    def _start(self, st: _Stream) -> None:
        import trio

        from atp_proto.frames import QoS

        st.tries += 1
        self.count(st, "attempts")
        if self.plan.target == "direct":
            self._direct_open += 1
            self.nursery.start_soon(self._direct_call, st)
            return
        i = min(range(len(self.sessions)), key=self.session_open.__getitem__)
        session = self.sessions[i]
        sid = session.conn.open_stream(
            self.body,
            qos=QoS[st.lane.upper()],
            meta={"task_type": "qa", "adapters": [self.adapter()]},
            now=trio.current_time(),
        )
        self.session_open[i] += 1
        self.owner[(i, sid)] = st
        session.kick()

    # ---------------------------------------------------------------- router target

    def on_event(self, i: int, ev: Any) -> None:
        import trio

        from atp_proto.frames import ConnectionClosed, MessageReceived, StreamReset

        session = self.sessions[i]
        if type(ev) is MessageReceived:
            session.conn.acknowledge(ev.stream_id, ev.size)
            st = self.owner.get((i, ev.stream_id))
            if st is None:
                return
            now = trio.current_time()
            if ev.end_stream:
                self.count(st, "finals")
                del self.owner[(i, ev.stream_id)]
                self.session_open[i] -= 1
                self.finished(st, now, None, None)
            else:
                self.count(st, "partials")
                if st.first is None:
                    st.first = now
            session.kick()
        elif isinstance(ev, StreamReset):
            st = self.owner.pop((i, ev.stream_id), None)
            if st is not None:
                self.session_open[i] -= 1
                self.finished(st, trio.current_time(), str(ev.code), ev.retry_after_ms)
        elif isinstance(ev, ConnectionClosed):
            for key in [k for k in self.owner if k[0] == i]:
                st = self.owner.pop(key)
                self.session_open[i] -= 1
                self.finished(st, trio.current_time(), f"closed:{ev.code}", None)
            self.session_open[i] = 1 << 30  # never pick it again

    async def _router_session(self, i: int, ready: Any) -> None:
        import trio

        from atp_proto.frames import Limits, Role
        from atp_proto.session import Session

        async def drive(transport: Any) -> None:
            session = Session(
                transport,
                role=Role.CLIENT,
                limits=Limits(),
                session_id=f"load{i}",
                on_event=lambda ev: self.on_event(i, ev),
            )
            self.sessions[i] = session
            session.conn.send_capabilities()
            session.kick()
            ready.release()
            await session.run()

        if self.plan.url.startswith("quic://"):
            from urllib.parse import urlsplit

            from atp_proto.transports.quic_client import connect_quic

            u = urlsplit(self.plan.url)
            assert u.hostname and u.port
            async with connect_quic(u.hostname, u.port, ca_file=self.plan.ca_file) as quic:
                await drive(quic)
        else:
            from atp_proto.transports.ws_client import connect_ws

            ws = await connect_ws(self.plan.url, max_message_size=8 << 20)
            try:
                await drive(ws)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await ws.close(1000, "")

    # ---------------------------------------------------------------- direct target

    _direct_open = 0

    async def _direct_call(self, st: _Stream) -> None:
        import trio

        from atp_proto.adapters import AdapterError, TaskRequest

        name = self.adapter()
        req = TaskRequest(task_type="qa", prompt=self.prompt, meta={"lane": st.lane})
        error: str | None = None
        try:
            async for _chunk in self.grpc[name].stream(req):
                self.count(st, "partials")
                if st.first is None:
                    st.first = trio.current_time()
            self.count(st, "finals")
        except AdapterError as exc:
            error = str(exc.code)
        self._direct_open -= 1
        self.finished(st, trio.current_time(), error, None)

    # ---------------------------------------------------------------- load shapes

    async def _flow(self, flow: Flow) -> None:
        import trio

        if flow.rate <= 0:
            return
        start = self.t0 + flow.start
        end = self.t0 + min(flow.end, self.plan.duration)
        i = 0
        while True:
            due = start + i / flow.rate
            if due >= end:
                return
            if due > trio.current_time():
                await trio.sleep_until(due)
            # every stream due by now, each with its own intended time
            now = trio.current_time()
            while due <= now and due < end:
                self.send(self.new_stream(flow.lane, due, flow.honour_retry))
                i += 1
                due = start + i / flow.rate

    async def _client(self, lane: str) -> None:
        import trio

        end = self.t0 + self.plan.duration
        while trio.current_time() < end:
            st = self.new_stream(lane, trio.current_time(), True)
            st.done = trio.Event()
            self.send(st)
            await st.done.wait()

    async def _ticker(self) -> None:
        import trio

        while True:
            await trio.sleep(self.plan.tick)
            self.pipe.send(("tick", {k: dict(v.counters) for k, v in self.lanes.items()}))

    # ---------------------------------------------------------------- main

    async def main(self) -> dict[str, Any]:
        import trio

        plan = self.plan
        self.prompt = "x" * plan.prompt_bytes
        from atp_proto.messages import task_body

        self.body = task_body(self.prompt, None)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if plan.target == "direct":
                from atp_proto.adapters.grpc import GrpcAdapter

                for name, url in plan.adapters.items():
                    a = GrpcAdapter.from_url(name, url)
                    await nursery.start(a.run)
                    self.grpc[name] = a
            else:
                self.sessions = [None] * plan.sessions
                self.session_open = [0] * plan.sessions
                ready = trio.Semaphore(0)
                for i in range(plan.sessions):
                    nursery.start_soon(self._router_session, i, ready)
                with trio.fail_after(30):
                    for _ in range(plan.sessions):
                        await ready.acquire()
            # ready: the parent answers with the wall-clock time of second 0, the same
            # for every worker
            self.pipe.send(("ready", None))
            start_at = await trio.to_thread.run_sync(self.pipe.recv)
            wait = start_at - time.time()
            self.t0 = trio.current_time() + max(0.0, wait)
            await trio.sleep_until(self.t0)
            nursery.start_soon(self._ticker)
            async with trio.open_nursery() as load:
                for flow in plan.flows:
                    load.start_soon(self._flow, flow)
                for k in range(plan.concurrency):
                    load.start_soon(self._client, plan.lanes[k % len(plan.lanes)])
            self.all_sent.set()
            if self.open == 0:
                self.idle.set()
            with trio.move_on_after(plan.drain):
                await self.idle.wait()
            nursery.cancel_scope.cancel()
        wall = trio.current_time() - self.t0
        return {
            "unfinished": self.open,
            "wall_s": wall,
            "lanes": {
                name: {
                    "counters": lane.counters,
                    "errors": lane.errors,
                    "ttfp": hist.encode(lane.ttfp),
                    "ttf": hist.encode(lane.ttf),
                    "timeline": {s: hist.encode(h) for s, h in lane.timeline.items()},
                    "unfinished": sum(1 for st in self.live if st.lane == name and st.recorded),
                }
                for name, lane in self.lanes.items()
            },
            "cpu_s": time.process_time(),
        }


def run(plan: Plan, pipe: Any) -> None:
    """Process entry point: run the plan, send ``("done", result)`` or ``("error", text)``."""
    import trio

    from .._harness import _raise_nofile

    _raise_nofile()
    try:
        result = trio.run(Worker(plan, pipe).main)
        pipe.send(("done", result))
    except BaseException as exc:  # report, never hang the parent
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
