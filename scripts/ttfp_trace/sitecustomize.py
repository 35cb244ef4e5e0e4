"""Timestamps per stage of a stream's way to its first PARTIAL, in every process of an
``atp bench e2e`` run (load client, router, direct client), for scripts/ttfp_trace/analyze.py.

Measurement only: nothing in atp_proto imports it. Python loads it at start-up when this
directory is on PYTHONPATH; it does nothing unless TTFP_TRACE_DIR names a directory, where
each process appends ``KIND NANOSECONDS N`` lines to ``PID.ev`` (time.perf_counter_ns:
CLOCK_MONOTONIC, the same clock in every process of the machine). It wraps trio's socket
stream, the WebSocket transport's sends, the session's SYN handling, the routing stages
(policy, preflight, admission), the gRPC client's call start and DATA, and the load
worker's stream starts and events, each adding one list append per event. Use it on one
stream at a time (``--concurrency 1`` or a low ``--rate`` with one lane): the analysis
matches stages across processes by time order. Run from the repository root::

    mkdir -p ttfp-trace
    TTFP_TRACE_DIR="$PWD/ttfp-trace" PYTHONPATH=scripts/ttfp_trace:. atp bench e2e --scenario load \
        --concurrency 1 --duration 8 --procs 1 --sessions 1 --lanes gold=1
    python scripts/ttfp_trace/analyze.py ttfp-trace
"""

import os

_DIR = os.environ.get("TTFP_TRACE_DIR")
if _DIR:
    import atexit
    import sys
    import time

    _pc = time.perf_counter_ns
    EV = []
    _grpc = set()

    def _flush():
        if EV:
            with open(os.path.join(_DIR, f"{os.getpid()}.ev"), "a") as f:
                f.write("".join(f"{k} {t} {n}\n" for k, t, n in EV))
            EV.clear()

    atexit.register(_flush)

    def rec(k, n=0):
        EV.append((k, _pc(), n))

    import builtins

    builtins._ttfp_rec = rec

    def _patch():
        from trio._highlevel_socket import SocketStream

        o_send, o_recv = SocketStream.send_all, SocketStream.receive_some

        async def send_all(self, data):
            k = "g" if id(self) in _grpc else "w"
            rec(k + "send0", len(data))
            await o_send(self, data)
            rec(k + "send1", len(data))

        async def receive_some(self, max_bytes=None):
            d = await o_recv(self, max_bytes)
            rec(("g" if id(self) in _grpc else "w") + "recv", len(d))
            return d

        SocketStream.send_all, SocketStream.receive_some = send_all, receive_some
        from atp_proto.adapters.grpc import _h2

        o_init = _h2.H2Channel.__init__

        def init(self, stream, **kw):
            _grpc.add(id(stream))
            o_init(self, stream, **kw)

        _h2.H2Channel.__init__ = init
        o_start = _h2.H2Channel.start_call

        async def start_call(self, path, payload, timeout):
            rec("call0", len(path))
            c = await o_start(self, path, payload, timeout)
            rec("call1")
            return c

        _h2.H2Channel.start_call = start_call
        from atp_proto.adapters.grpc import _call

        o_ond = _call.Call.on_data

        def on_data(self, data, n):
            rec("ondata", len(data))
            return o_ond(self, data, n)

        _call.Call.on_data = on_data
        from atp_proto.transports import ws_server

        o_try = ws_server.WsConnection.try_send

        def try_send(self, m):
            r = o_try(self, m)
            rec("wtry", len(m) if r else -1)
            return r

        ws_server.WsConnection.try_send = try_send
        o_sb = ws_server.WsConnection._send_bytes

        async def send_bytes(self, data):
            rec("wsb0", len(data))
            await o_sb(self, data)
            rec("wsb1", len(data))

        ws_server.WsConnection._send_bytes = send_bytes
        from atp_proto.router import admission
        from atp_proto.router.routing import preflight, run

        o_run = run.StreamRun.run

        async def srun(self):
            rec("run0")
            await o_run(self)
            rec("run1")

        run.StreamRun.run = srun
        o_dec = run.decide

        async def decide(*a, **k):
            r = await o_dec(*a, **k)
            rec("decided")
            return r

        run.decide = decide
        o_est = preflight.estimate

        async def estimate(*a, **k):
            rec("est0")
            r = await o_est(*a, **k)
            rec("est1")
            return r

        preflight.estimate = estimate
        o_acq = admission.Admission.acquire

        async def acquire(self, lane):
            await o_acq(self, lane)
            rec("admitted")

        admission.Admission.acquire = acquire
        from atp_proto.session import output

        o_sp = output.Output.send_partial

        def send_partial(self, body, *, ext=None):
            rec("partial", 0 if self._started else 1)
            return o_sp(self, body, ext=ext)

        output.Output.send_partial = send_partial
        from atp_proto.session import session

        o_ss = session.Session._start_stream

        def start_stream(self, ev):
            rec("syn")
            return o_ss(self, ev)

        session.Session._start_stream = start_stream
        o_rs = session.Session._stream_task

        async def stream_task(self, ev, h):
            rec("task0")
            await o_rs(self, ev, h)

        session.Session._stream_task = stream_task
        o_de = session.Session._dispatch

        def dispatch(self, events):
            rec("dispatch", len(events))
            return o_de(self, events)

        session.Session._dispatch = dispatch
        try:
            from benchmarks._load import worker

            o_wr = worker.run

            def wrun(plan, pipe):
                try:
                    o_wr(plan, pipe)
                finally:
                    _flush()

            worker.run = wrun
            o_oe = worker.Worker.on_event

            def on_event(self, i, ev):
                rec("cev")
                return o_oe(self, i, ev)

            worker.Worker.on_event = on_event
            o_st = worker.Worker._start

            def _start(self, st):
                rec("cstart")
                return o_st(self, st)

            worker.Worker._start = _start
        except ImportError:
            pass

    try:
        _patch()
    except Exception as e:
        print("ttfp trace patch failed", e, file=sys.stderr)
