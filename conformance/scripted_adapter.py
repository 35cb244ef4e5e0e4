"""The scripted gRPC adapter the router role serves with ``--adapter-listen HOST:PORT``: the
router under test is configured with ``atp serve --adapter conf=grpc://HOST:PORT``, and
each case picks the adapter's behaviour through the prompt of the task it sends,
``"conformance:<token>:<behaviour>"`` (ATP-ADAPT-004, -009, -011, -012, -015):

=========================== ===========================================================
behaviour                   what the Stream call does
=========================== ===========================================================
``ok`` (and any other       three chunks, then a final one (cumulative usage, confidence
prompt)                     0.8), status OK
``two_chunks``              two chunks, the second final
``slow:<ms>``               as ``ok``, sleeping ``ms`` before each chunk
``die_mid_stream``          one chunk, then RST_STREAM(INTERNAL_ERROR): the HTTP/2 stream
                            aborted (the router sees UNAVAILABLE, hence EAGENTDOWN)
``stall``                   sends nothing at all until cancelled (or its deadline)
``text:<answer>``           one final chunk whose text is ``answer`` (the rest of the
                            prompt, colons and all; at most 4 KiB), confidence 0.8
``status:<NAME>[:<ms>]``    fails at once with that gRPC status (e.g. UNAVAILABLE,
                            RESOURCE_EXHAUSTED); UNAVAILABLE and RESOURCE_EXHAUSTED carry
                            a retry hint, ``ms`` (default 200), as google.rpc.RetryInfo
``status:<NAME>:<ms>:pushback`` the same hint as a ``grpc-retry-pushback-ms`` trailer
``big:<bytes>``             an answer of ``bytes`` characters (at most 1 MiB) in chunks of
                            16 Ki characters, cycling ``ab"\\é…`` (JSON escapes them, so
                            its text frames are longer than its CBOR: ATP-FLOW-007/008)
``raw:<hex>``               one StreamChunk message of exactly these bytes (a malformed
                            one: ATP-ADAPT-016), then status OK
``duo:<A>|<B>``             behaviour ``A`` on the first listener (``conf``), ``B`` on the
                            second (``conf2``): two adapters of different strength
=========================== ===========================================================

Any behaviour may start with options ``{key=value,...}``: ``est_tok`` / ``est_usd`` /
``est_conf`` (the Estimate's out_tokens, usd_micros, confidence; default 8, 12, 0.8),
``conf`` (every chunk's confidence, default 0.8), ``tok`` / ``usd`` (the cumulative usage
added by each chunk of ``ok`` / ``slow``, default 2 and 3: ATP-BUDGET-003), ``n`` (the
number of chunks of ``ok`` / ``slow``, default 4, at most 1,000), ``wait`` (milliseconds
the Stream call sleeps before it does anything, at most 60,000), ``max_age`` (the
Estimate's ``max_age_ms``: how long the router may reuse it, default 0 = never, at most
600,000; ATP-BUDGET-018).

Estimate always answers (its events are recorded); Health answers READY. Every call's
``grpc-timeout`` is honoured: when it passes, the call ends with DEADLINE_EXCEEDED.

Events, per token, as dicts ``{"event", "at", "deadline_ms", "adapter"}`` (``at`` is
``trio.current_time()``, ``deadline_ms`` the call's grpc-timeout or None, ``adapter`` the
listener's name): ``estimate``, ``stream_start`` (also with ``meta``, the task's meta as
the adapter received it, ATP-SEC-014, and ``inflight``, the token's Stream calls in
flight on every listener, this one included: ATP-BUDGET-004), ``chunk_sent``,
``cancelled`` (the router reset the call), ``deadline_exceeded``, ``finished`` (trailers
sent, any status). A case waits with :meth:`ScriptedAdapter.wait_event` and reads them
with :meth:`ScriptedAdapter.events`.

It runs in the runner's trio process: a small HTTP/2 server on h2 (grpclib is asyncio-only).
A second listener (``--adapter-listen A,B`` in the runner: ``serving(..., name="conf2")``)
shares the events. Limits: a request body above 1 MiB is refused (RESOURCE_EXHAUSTED); at
most 256 calls at once per connection (HTTP/2 SETTINGS); at most 10 000 events per token.
"""

from __future__ import annotations

import base64
import contextlib
import math
import socket
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from atp_proto.adapters import Chunk, CostEstimate, Health
from atp_proto.adapters.grpc.status import GrpcStatus, method_path, parse_grpc_timeout
from atp_proto.adapters.proto import codec

__all__ = ["PREFIX", "ScriptedAdapter", "behaviour_of", "split_options"]

PREFIX = "conformance:"
MAX_BODY = 1 << 20
MAX_EVENTS = 10_000
_RETRY_DEFAULT_MS = 200
_HINTED = {GrpcStatus.UNAVAILABLE, GrpcStatus.RESOURCE_EXHAUSTED}
MAX_BIG = 1 << 20
_BIG_CHUNK = 16 * 1024
_BIG_CYCLE = 'ab"\\\u00e9\n\t<>&cd'
_OPTION_DEFAULTS = {
    "est_tok": 8.0,
    "est_usd": 12.0,
    "est_conf": 0.8,
    "conf": 0.8,
    "tok": 2.0,
    "usd": 3.0,
    "n": 4.0,
    "wait": 0.0,
    "max_age": 0.0,
}
MAX_AGE_MS = 600_000  #: the largest ``max_age`` option sent


def behaviour_of(prompt: str) -> tuple[str, str]:
    """``(token, behaviour)`` of a prompt; any prompt not ``conformance:<token>:<b>`` is
    ``("", "ok")``."""
    if prompt.startswith(PREFIX):
        token, sep, behaviour = prompt[len(PREFIX) :].partition(":")
        if sep and token:
            return token, behaviour or "ok"
    return "", "ok"


def split_options(behaviour: str) -> tuple[dict[str, float], str]:
    """``({key: value}, rest)`` of ``{key=value,...}rest``; unknown keys and values that are
    not numbers are ignored (the defaults stay)."""
    opts = dict(_OPTION_DEFAULTS)
    if behaviour.startswith("{") and "}" in behaviour:
        inner, _, behaviour = behaviour[1:].partition("}")
        for item in inner.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key in opts:
                with contextlib.suppress(ValueError):
                    number = float(value)
                    if math.isfinite(number) and number >= 0:
                        opts[key] = number
    return opts, behaviour


def for_listener(behaviour: str, index: int) -> str:
    """The part of a ``duo:A|B`` behaviour for listener ``index`` (0: A, 1: B)."""
    if behaviour.startswith("duo:"):
        parts = behaviour[4:].split("|")
        return parts[min(index, len(parts) - 1)] or "ok"
    return behaviour


class _Call:
    def __init__(self, sid: int, headers: dict[str, str]) -> None:
        self.sid = sid
        self.headers = headers
        self.body = bytearray()
        self.scope = trio.CancelScope()
        self.token = ""
        self.deadline_ms: int | None = None
        self.reset_by_peer = False
        self.window = trio.Event()


class ScriptedAdapter:
    """See the module docstring. ``port`` is the bound port once :meth:`serving` runs."""

    def __init__(self) -> None:
        self.port: int | None = None
        self._events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._changed = trio.Event()
        self._names: list[str] = []  #: listener names, in the order they started
        self.ports: dict[str, int] = {}  #: listener name -> its bound port
        self.inflight: dict[str, int] = defaultdict(int)  #: token -> Stream calls running

    # ------------------------------------------------------------------ events

    def record(
        self, token: str, event: str, deadline_ms: int | None, adapter: str = "conf", **extra: Any
    ) -> None:
        log = self._events[token]
        if len(log) < MAX_EVENTS:
            log.append(
                {
                    "event": event,
                    "at": trio.current_time(),
                    "deadline_ms": deadline_ms,
                    "adapter": adapter,
                    **extra,
                }
            )
        self._changed.set()
        self._changed = trio.Event()

    def events(self, token: str) -> list[dict[str, Any]]:
        """The events of ``token`` so far, oldest first (a copy)."""
        return [dict(e) for e in self._events.get(token, ())]

    async def wait_event(
        self, token: str, event: str, timeout: float, name: str | None = None
    ) -> bool:
        """True once ``token`` has an ``event`` (already, or within ``timeout`` seconds),
        on the listener called ``name`` if given."""
        with trio.move_on_after(timeout):
            while not any(
                e["event"] == event and name in (None, e["adapter"])
                for e in self._events.get(token, ())
            ):
                await self._changed.wait()
            return True
        return False

    # ------------------------------------------------------------------ serving

    @contextlib.asynccontextmanager
    async def serving(
        self, host: str, port: int, name: str = "conf", *, fd: int | None = None
    ) -> AsyncIterator[ScriptedAdapter]:
        """Listen on ``host:port`` (0: any free port, see :attr:`port`, the first listener's)
        while the block runs; with ``fd``, on that listening socket instead (the caller bound
        it and configured the router with its port first: no race for a free port);
        ``name``: the adapter name the router under test gives this listener (the events say
        it; the second of a ``duo:`` behaviour is the second listener started)."""
        if fd is None:
            listeners = await trio.open_tcp_listeners(port, host=host)
        else:
            sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
            listeners = [trio.SocketListener(sock)]
        bound = listeners[0].socket.getsockname()[1]
        if self.port is None:
            self.port = bound
        index = len(self._names)
        self._names.append(name)
        self.ports[name] = bound

        async def handler(stream: trio.SocketStream) -> None:
            await self._connection(stream, name, index)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def _connection(self, stream: trio.SocketStream, name: str, index: int) -> None:
        conn = _Conn(self, stream, name, index)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await conn.run()


class _Conn:
    def __init__(
        self, adapter: ScriptedAdapter, stream: trio.SocketStream, name: str, index: int
    ) -> None:
        self.adapter = adapter
        self.name = name
        self.index = index
        self.stream = stream
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 256,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
            },
        )
        self.calls: dict[int, _Call] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        self.h2.initiate_connection()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer)
            self._wake.set()
            try:
                while True:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        break
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        break
                    for ev in events:
                        self._dispatch(ev)
                    self._wake.set()
            finally:
                for call in self.calls.values():
                    call.reset_by_peer = True
                    call.scope.cancel()
                nursery.cancel_scope.cancel()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = self.h2.data_to_send()
            if data:
                await self.stream.send_all(data)

    def _dispatch(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            headers = {str(k): str(v) for k, v in ev.headers}
            self.calls[ev.stream_id] = _Call(ev.stream_id, headers)
        elif isinstance(ev, h2.events.DataReceived):
            call = self.calls.get(ev.stream_id)
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if call is not None and len(call.body) + len(ev.data) <= MAX_BODY:
                call.body += ev.data
            elif call is not None:
                call.body = bytearray(b"\xff" * 6)  # marks "too large" for the handler
        elif isinstance(ev, h2.events.StreamEnded):
            call = self.calls.get(ev.stream_id)
            if call is not None and self._nursery is not None:
                self._nursery.start_soon(self._handle, call)
        elif isinstance(ev, h2.events.StreamReset):
            call = self.calls.get(ev.stream_id)
            if call is not None:
                call.reset_by_peer = True
                call.scope.cancel()
        elif isinstance(ev, h2.events.WindowUpdated):
            for call in self.calls.values():
                call.window.set()

    # ------------------------------------------------------------------ responses

    def _send_headers(self, call: _Call) -> None:
        self.h2.send_headers(call.sid, [(":status", "200"), ("content-type", "application/grpc")])

    async def _send_message(self, call: _Call, payload: bytes) -> None:
        data = b"\x00" + len(payload).to_bytes(4, "big") + payload
        while data:
            window = min(
                self.h2.local_flow_control_window(call.sid), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                call.window = trio.Event()
                self._wake.set()
                await call.window.wait()
                continue
            part, data = data[:window], data[window:]
            self.h2.send_data(call.sid, part)
        self._wake.set()
        await trio.lowlevel.checkpoint()

    def _trailers(
        self,
        call: _Call,
        status: int,
        message: str = "",
        extra: dict[str, str] | None = None,
        *,
        headers_sent: bool,
    ) -> None:
        trailers = [("grpc-status", str(int(status)))]
        if not headers_sent:
            trailers = [(":status", "200"), ("content-type", "application/grpc"), *trailers]
        if message:
            trailers.append(("grpc-message", message))
        trailers += list((extra or {}).items())
        self.h2.send_headers(call.sid, trailers, end_stream=True)
        self._wake.set()
        self._record(call, "finished")

    def _record(self, call: _Call, event: str, **extra: Any) -> None:
        self.adapter.record(call.token, event, call.deadline_ms, self.name, **extra)

    async def _handle(self, call: _Call) -> None:
        path = call.headers.get(":path", "")
        timeout = call.headers.get("grpc-timeout")
        deadline = math.inf
        if timeout is not None:
            try:
                seconds = parse_grpc_timeout(timeout.encode())
            except ValueError:
                seconds = 0.0
            call.deadline_ms = math.ceil(seconds * 1000)
            deadline = trio.current_time() + seconds
        sent = {"headers": False}
        try:
            with call.scope:
                with trio.move_on_at(deadline) as dl:
                    await self._respond(call, path, sent)
                if dl.cancelled_caught:
                    self._record(call, "deadline_exceeded")
                    self._trailers(
                        call,
                        GrpcStatus.DEADLINE_EXCEEDED,
                        "deadline exceeded",
                        headers_sent=sent["headers"],
                    )
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
            call.reset_by_peer = True  # the stream was reset (and h2 may have forgotten it)
        finally:
            self.calls.pop(call.sid, None)
            if call.reset_by_peer:  # the router reset the call, or the connection went
                self._record(call, "cancelled")

    async def _respond(self, call: _Call, path: str, sent: dict[str, bool]) -> None:
        body = bytes(call.body)
        if len(body) < 5:
            self._trailers(
                call, GrpcStatus.INVALID_ARGUMENT, "missing request message", headers_sent=False
            )
            return
        message = body[5:]
        if path == method_path("Health"):
            self._send_headers(call)
            sent["headers"] = True
            await self._send_message(call, codec.encode_health(Health("READY")))
            self._trailers(call, GrpcStatus.OK, headers_sent=True)
            return
        if path not in (method_path("Estimate"), method_path("Stream")):
            self._trailers(call, GrpcStatus.UNIMPLEMENTED, "Method not found", headers_sent=False)
            return
        try:
            req = codec.decode_task_request(message)
        except codec.DecodeError as exc:
            self._trailers(
                call, GrpcStatus.INVALID_ARGUMENT, f"bad request: {exc}", headers_sent=False
            )
            return
        call.token, behaviour = behaviour_of(req.prompt)
        opts, behaviour = split_options(for_listener(behaviour, self.index))
        if path == method_path("Estimate"):
            self._record(call, "estimate")
            self._send_headers(call)
            sent["headers"] = True
            est = CostEstimate(
                4,
                int(opts["est_tok"]),
                int(opts["est_usd"]),
                50.0,
                4.0,
                min(opts["est_conf"], 1.0),
                int(min(opts["max_age"], MAX_AGE_MS)),
            )
            await self._send_message(call, codec.encode_estimate(est))
            self._trailers(call, GrpcStatus.OK, headers_sent=True)
            return
        inflight = self.adapter.inflight
        inflight[call.token] += 1
        try:
            self._record(call, "stream_start", meta=dict(req.meta), inflight=inflight[call.token])
            await self._stream(call, behaviour, opts, sent)
        finally:
            inflight[call.token] -= 1

    async def _stream(
        self, call: _Call, behaviour: str, opts: dict[str, float], sent: dict[str, bool]
    ) -> None:
        name, _, arg = behaviour.partition(":")
        confidence = min(opts["conf"], 1.0)
        if opts["wait"]:
            await trio.sleep(min(opts["wait"], 60_000.0) / 1000)
        if name == "stall":
            await trio.sleep_forever()
        if name == "status":
            code_name, _, rest = arg.partition(":")
            hint_ms, _, form = rest.partition(":")
            try:
                status = GrpcStatus[code_name]
            except KeyError:
                status = GrpcStatus.INTERNAL
            extra: dict[str, str] = {}
            if status in _HINTED:
                ms = int(hint_ms) if hint_ms.isdigit() else _RETRY_DEFAULT_MS
                if form == "pushback":
                    extra["grpc-retry-pushback-ms"] = str(ms)
                else:
                    raw = codec.encode_retry_status(int(status), f"scripted {status.name}", ms)
                    extra["grpc-status-details-bin"] = base64.b64encode(raw).decode().rstrip("=")
            self._trailers(call, status, f"scripted {status.name}", extra, headers_sent=False)
            return
        if name == "text":  # a given answer: comparators' keys (ATP-STRAT-003)
            self._send_headers(call)
            sent["headers"] = True
            chunk = Chunk(arg[:4096], confidence, 8, 4, True, "stop")
            await self._send_message(call, codec.encode_chunk(chunk))
            self._record(call, "chunk_sent")
            self._trailers(call, GrpcStatus.OK, headers_sent=True)
            return
        if name == "raw":  # these bytes as a StreamChunk, malformed or not (ATP-ADAPT-016)
            try:
                raw = bytes.fromhex(arg[:8192])
            except ValueError:
                raw = b""
            self._send_headers(call)
            sent["headers"] = True
            await self._send_message(call, raw)
            self._record(call, "chunk_sent")
            self._trailers(call, GrpcStatus.OK, headers_sent=True)
            return
        if name == "big":  # a long answer, JSON-escaped characters included (ATP-FLOW-007)
            total = min(int(arg), MAX_BIG) if arg.isdigit() else 300_000
            self._send_headers(call)
            sent["headers"] = True
            text = (_BIG_CYCLE * (_BIG_CHUNK // len(_BIG_CYCLE) + 1))[:_BIG_CHUNK]
            done = 0
            while done < total:
                part = text[: min(_BIG_CHUNK, total - done)]
                done += len(part)
                final = done >= total
                chunk = Chunk(part, confidence, 10, 10, final, "stop" if final else "")
                await self._send_message(call, codec.encode_chunk(chunk))
                self._record(call, "chunk_sent")
            self._trailers(call, GrpcStatus.OK, headers_sent=True)
            return
        delay = 0.0
        if name == "slow":
            delay = max(0.0, float(arg)) / 1000 if arg.replace(".", "", 1).isdigit() else 0.05
        n = {"two_chunks": 2, "die_mid_stream": 1}.get(name, max(1, min(int(opts["n"]), 1000)))
        self._send_headers(call)
        sent["headers"] = True
        for i in range(n):
            if delay:
                await trio.sleep(delay)
            final = i == n - 1 and name != "die_mid_stream"
            chunk = Chunk(
                f"part{i + 1} ",
                confidence,
                4 + int(opts["tok"] * (i + 1)),
                int(opts["usd"] * (i + 1)),
                final,
                "stop" if final else "",
            )
            await self._send_message(call, codec.encode_chunk(chunk))
            self._record(call, "chunk_sent")
        if name == "die_mid_stream":
            await trio.sleep(0.01)  # the chunk leaves first
            self.h2.reset_stream(call.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self._wake.set()
            self._record(call, "finished")
            return
        self._trailers(call, GrpcStatus.OK, headers_sent=True)
