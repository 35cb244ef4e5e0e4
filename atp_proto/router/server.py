"""The router process: listeners, sessions, graceful drain, signals.

Beside it: :mod:`.handshake` (accept or refuse a session -> Principal), :mod:`.http`
(``/metrics``, ``/healthz``, ``/readyz``), :mod:`.logs` (formatters). Sessions run on
:mod:`atp_proto.session` over :mod:`atp_proto.transports.ws_server`.
"""

from __future__ import annotations

import itertools
import logging
import signal
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from atp_proto.adapters import Adapter, ResilientAdapter, make_adapter, registry
from atp_proto.frames import (
    WS_MESSAGE_SLACK,
    ATPError,
    CapabilitiesReceived,
    Encoding,
    ErrorCode,
    FrameType,
    StreamOpened,
)
from atp_proto.session import Output, Session, SessionInfo
from atp_proto.transports._tls_stream import TlsStream
from atp_proto.transports.base import Transport, TransportClosed
from atp_proto.transports.ws_server import Handshake, WsConnection

from .admission import Admission
from .audit import AuditLog
from .auth import (
    ANONYMOUS,
    AuthConfig,
    Authenticator,
    AuthError,
    Principal,
    TokenVerifier,
)
from .config import RouterConfig
from .feedback import feedback_handler
from .handshake import admit
from .http import serve_http
from .metrics import RouterMetrics
from .quota import LocalQuotaStore, QuotaGuard
from .routing import RoutingContext, StreamRun
from .routing.hedging import Hedger
from .routing.learner.service import build_learner, persist
from .routing.policy import LayeredPolicy
from .routing.reload import PolicySource, Reloader

if TYPE_CHECKING:  # aioquic loads only when QUIC is configured (start-up time)
    from atp_proto.transports.quic_server import QuicServer, QuicTransport

log = logging.getLogger("atp.router")


def _type_name(value: int) -> str:
    try:
        return FrameType(value).name
    except ValueError:
        return f"0x{value:02x}"


def _add_frames(
    totals: dict[tuple[str, str], int], received: dict[int, int], sent: dict[int, int]
) -> None:
    for direction, counts in (("in", received), ("out", sent)):
        for ftype, n in counts.items():
            key = (direction, _type_name(ftype))
            totals[key] = totals.get(key, 0) + n


def _key_set_authenticator(config: RouterConfig) -> TokenVerifier:
    """``--jwks`` / ``--oidc-issuer`` (:mod:`.jwks`). A key set in a file is read now:
    a broken one refuses to start (ValueError)."""
    from .jwks import JWKS_ALGORITHMS, JwksAuthenticator, JwksSource, OidcDiscovery

    keys: JwksSource | OidcDiscovery
    ttl, refetch = config.jwks_ttl_s, config.jwks_refetch_s
    options: dict[str, Any] = {"ttl_s": ttl, "min_refetch_s": refetch}
    if config.jwt_algorithm:  # --jwt-algorithm pins it: keys of the other type are not loaded
        if config.jwt_algorithm not in JWKS_ALGORITHMS:
            raise ValueError(
                f"--jwt-algorithm {config.jwt_algorithm} with a key set: a JWK Set gives "
                f"{'/'.join(JWKS_ALGORITHMS)} keys only ({config.jwt_algorithm} is for "
                "--jwt-key-file)"
            )
        options["algorithms"] = (config.jwt_algorithm,)
    if config.oidc_issuer:
        keys = OidcDiscovery(config.oidc_issuer, **options)
    else:
        keys = JwksSource(config.jwks or "", **options)
        if urlsplit(keys.location).scheme not in ("http", "https"):
            try:
                keys.load_now()
            except ValueError as exc:
                msg, pin = str(exc), f"--jwt-algorithm {config.jwt_algorithm}"
                if config.jwt_algorithm:  # "... (it holds RS256 keys; --jwt-algorithm ES256)"
                    msg = f"{msg[:-1]}; {pin})" if msg.endswith(")") else f"{msg} ({pin})"
                raise ValueError(msg) from None
    return JwksAuthenticator(
        keys,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        allowed_tenants=config.allowed_tenants or None,
    )


class Router:
    """Serves ATP over WebSocket. Construct, then ``await nursery.start(router.serve)``."""

    def __init__(self, config: RouterConfig, adapters: Mapping[str, Adapter] | None = None) -> None:
        self.config = config
        self.metrics = RouterMetrics()
        self.adapters: dict[str, Adapter] = (
            dict(adapters)
            if adapters is not None
            else {name: make_adapter(name, url) for name, url in config.adapters.items()}
        )
        self._admission_state: tuple[int, int, int, int] | None = None
        self.admission = Admission(config.admission, on_change=self._admission_changed)
        self._frames_done: dict[tuple[str, str], int] = {}
        self.metrics.frame_counts = self._frame_counts
        self.metrics.adapter_state = lambda: [
            (n, a.state) for n, a in self.adapters.items() if isinstance(a, ResilientAdapter)
        ]
        self.audit = (
            AuditLog(
                config.audit_log,
                max_bytes=config.audit_max_bytes,
                on_drop=self.metrics.audit_dropped.inc,
            )
            if config.audit_log
            else None
        )
        # the policy and routing table (a broken one refuses to start: ValueError, exit 2)
        self.policy = LayeredPolicy(
            min_confidence=config.min_confidence, window=config.tenant_window
        )
        source = PolicySource(
            config.policy_file,
            config.opa_url,
            config.opa_timeout_s,
            config.routing_table,
            tuple(self.adapters),
        )
        self.reloader = Reloader(  # it notes the files' mtimes before they are read
            self.policy, source, registry=self.metrics.registry, interval_s=config.policy_poll_s
        )
        self.policy.state = source.load()
        self.routing = RoutingContext(
            self.adapters,
            self.admission,
            self.metrics,
            config,
            self.policy,
            build_learner(config),
            hedger=Hedger(rate=config.hedge_rate),
            audit=self.audit,
        )
        self._shared_tasks = self._scale_out(config)  # --redis, [quota] (router/shared/)
        self.authenticator: TokenVerifier | None = None
        if config.auth and (config.jwks or config.oidc_issuer):
            self.authenticator = _key_set_authenticator(config)
        elif config.auth:
            self.authenticator = Authenticator(
                AuthConfig.load(
                    key_file=config.jwt_key_file,
                    algorithm=config.jwt_algorithm,
                    audience=config.jwt_audience,
                    issuer=config.jwt_issuer,
                    allowed_tenants=config.allowed_tenants or None,
                )
            )
        #: ``wss://`` (and the metrics port's https): one server context for the listener's
        #: life; TLSConfigError (a ValueError) for a certificate or key it cannot use
        self.ssl_context: ssl.SSLContext | None = (
            config.tls.server_ssl_context() if config.tls is not None else None
        )
        self.sessions: dict[str, Session] = {}
        #: connections still in their TLS handshake or upgrade (at most max_sessions)
        self.handshaking = 0
        self._ids = itertools.count(1)
        self._draining = False
        self._listener_scope: trio.CancelScope | None = None
        self.ws_port: int | None = None
        self.quic_port: int | None = None
        self.quic_server: QuicServer | None = None
        self.metrics_port: int | None = None
        self._ready = False
        self.stopped = trio.Event()

    def _scale_out(self, config: RouterConfig) -> list[Any]:
        """Tenant quotas (in-process, or in Redis with ``--redis``) and the learner's
        state shared through Redis: the tasks to start beside the listeners."""
        tasks: list[Any] = []
        users: list[tuple[str, Any]] = []  #: what uses Redis, for atp_redis_up
        self.quota: QuotaGuard | None = None
        link = None
        if config.redis_url:
            from .shared.link import RedisLink

            link = RedisLink(
                config.redis_url, prefix=config.redis_prefix, timeout_s=config.redis_timeout_s
            )
            from .shared.learning import SharedLearning

            sharing = SharedLearning.maybe(self.routing.learner, link)
            if sharing is not None:
                tasks.append(sharing.run)
                users.append(("learning", sharing))
            self.metrics.registry.callback(
                "gauge",
                "atp_redis_up",
                "1 while the shared state (--redis) answers, per use (quota, learning)",
                ("use",),
                lambda: [((use,), 1.0 if u.up else 0.0) for use, u in users],
            )
        if config.quota.enabled:
            refused = self.metrics.registry.counter(
                "atp_quota_refused_total", "streams refused by a tenant quota, by code", ("code",)
            )
            store: Any = LocalQuotaStore()
            if link is not None:
                from .shared.redis_quota import RedisQuotaStore

                store = RedisQuotaStore(link)
                tasks.append(store.run)
                users.append(("quota", store))
                errors = store.write_errors
                self.metrics.registry.callback(
                    "counter",
                    "atp_redis_write_errors_total",
                    "quota scripts Redis answered with an error: kind=refused (Redis "
                    "refuses writes for a while: OOM, READONLY...; sent again, streams "
                    "refused meanwhile), kind=rejected (an error about the write itself: "
                    "a script error; its tenant's usage queued, its streams refused)",
                    ("kind",),
                    lambda: [((k,), float(v)) for k, v in sorted(errors.items())],
                )
            resized = self.metrics.registry.counter(
                "atp_quota_holds_resized_total",
                "shared-store holds lowered to the preflight's estimate, or raised back "
                "to the admitted share when a stream outspent it (ATP-BUDGET-017)",
                ("change",),
            )
            self.quota = QuotaGuard(config.quota, store, refused, resized)
        return tasks

    def _frame_counts(self) -> list[tuple[tuple[str, ...], float]]:
        totals = dict(self._frames_done)
        for s in self.sessions.values():
            _add_frames(totals, s.conn.frames_received, s.conn.frames_sent)
        return [(k, float(v)) for k, v in sorted(totals.items())]

    def _admission_changed(self, adm: Admission) -> None:
        # called on every admission and release: touch the gauges only when they move
        state = adm.gauges()
        if state == self._admission_state:
            return
        self._admission_state = state
        m = self.metrics
        m.concurrency_limit.set(state[0])
        m.lane_queue.set(state[1], "gold")
        m.lane_queue.set(state[2], "silver")
        m.lane_queue.set(state[3], "bronze")

    # ------------------------------------------------------------------ serving

    async def serve(
        self, *, task_status: trio.TaskStatus[Router] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled or drained. ``task_status.started`` once listening."""
        try:
            async with trio.open_nursery() as outer:
                writer = trio.CancelScope(shield=True)  # closed, never cancelled: see below
                if self.audit is not None:  # the decision log's writer (off the hot path)
                    await outer.start(self._write_audit, self.audit, writer)
                try:
                    await self._serve(task_status)
                finally:
                    # every stream task has ended (each appended its record on its way
                    # out): the writer writes the queue and returns, within 10 s
                    if self.audit is not None:
                        self.audit.close()
                        writer.deadline = trio.current_time() + 10
        finally:
            with trio.CancelScope(shield=True):
                for adapter in self.adapters.values():
                    with trio.move_on_after(2):
                        await adapter.aclose()

    @staticmethod
    async def _write_audit(
        audit: AuditLog,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            await audit.run(task_status=task_status)

    async def _serve(self, task_status: trio.TaskStatus[Router]) -> None:
        cfg = self.config
        async with trio.open_nursery() as nursery:
            if cfg.reuse_port:  # a worker of atp serve --workers N (router/workers.py)
                from .workers import reuse_port_listeners

                listeners = await reuse_port_listeners(cfg.ws_host, cfg.ws_port)
            else:
                listeners = await trio.open_tcp_listeners(cfg.ws_port, host=cfg.ws_host)
            self.ws_port = listeners[0].socket.getsockname()[1]
            self._listener_scope = trio.CancelScope()
            nursery.start_soon(self._run_listener, listeners, nursery, self._listener_scope)
            quic = self.quic_server = self._quic_server()
            if quic is not None:
                self.quic_port = await nursery.start(quic.serve, cfg.quic_host, cfg.quic_port)
            if cfg.metrics_port is not None:
                self.metrics_port = await nursery.start(self._serve_metrics)
            await nursery.start(self.reloader.run)  # SIGHUP (handled from now) and files
            keys = getattr(self.authenticator, "keep_fresh", None)
            if keys is not None:  # JWKS / OIDC: QUIC's first CAPABILITIES cannot await
                await nursery.start(keys)
            nursery.start_soon(  # a worker of --workers N writes its own rows
                persist, self.routing.learner, cfg.routing_state, 5.0, cfg.worker_index
            )
            for shared_task in self._shared_tasks:  # quota writer, learner sharing
                await nursery.start(shared_task)
            for adapter in self.adapters.values():  # their tasks live in our nursery
                await registry.start(nursery, adapter, health_interval_s=cfg.health_interval_s)
            self._ready = True
            log.info(
                "router listening",
                extra={
                    "ws": f"{self.ws_scheme}://{cfg.ws_host}:{self.ws_port}{cfg.ws_path}",
                    "quic": (
                        f"quic://{cfg.quic_host}:{self.quic_port}" if self.quic_port else "off"
                    ),
                    "metrics": (
                        f"{'https' if self.ssl_context else 'http'}://"
                        f"{cfg.metrics_host}:{self.metrics_port}/metrics"
                        if self.metrics_port
                        else "off"
                    ),
                    "auth": (
                        ("oidc" if cfg.oidc_issuer else "jwks" if cfg.jwks else "jwt")
                        if self.authenticator
                        else "off"
                    ),
                    "adapters": ",".join(self.adapters),
                    "policy": self.policy.state.version,
                },
            )
            task_status.started(self)
            await self.stopped.wait()
            nursery.cancel_scope.cancel()

    @property
    def ws_scheme(self) -> str:
        """``wss`` when the WebSocket listener speaks TLS, else ``ws``."""
        return "wss" if self.ssl_context is not None else "ws"

    async def _run_listener(
        self,
        listeners: list[trio.SocketListener],
        handler_nursery: trio.Nursery,
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            await trio.serve_listeners(
                self._handle_connection, listeners, handler_nursery=handler_nursery
            )

    async def run_stream(self, info: SessionInfo, ev: StreamOpened, output: Output) -> None:
        """The session's runner for one SYN: the routing run, given the stream's output
        (its policy caps the lane, ATP-SEC-004/015: the session knows no principals);
        within the tenant's quota when one is configured (ATP-BUDGET-013)."""
        if self.quota is None:
            await StreamRun(self.routing, info, ev, output).run()
            return
        tenant = getattr(info.principal, "tenant", "")
        await self.quota.run(StreamRun(self.routing, info, ev, output), tenant, output)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        # An exception escaping here would kill the whole server: catch everything.
        ws: WsConnection | None = None
        counted = False  # in self.handshaking
        try:
            try:
                host, port = stream.socket.getpeername()[:2]
                remote = f"{host}:{port}"
            except OSError:
                remote = "?"
            max_message = self.config.limits.max_frame_size + WS_MESSAGE_SLACK  # ATP-WS-011
            request: Handshake | None = None
            if self.handshaking >= self.config.max_sessions:
                # ATP-WS-014: connections that never finish a handshake are bounded in
                # number as well as in time: beyond max_sessions at once, new ones go
                self.metrics.handshakes_refused.inc("busy")
                return
            self.handshaking += 1
            counted = True
            # ATP-WS-014: the handshake timeout covers TLS and the upgrade together, so a
            # client that opens TCP and never finishes either is cut all the same
            with trio.move_on_after(self.config.handshake_timeout_s):
                transport: trio.abc.Stream = stream
                if self.ssl_context is not None:
                    tls = TlsStream(stream, self.ssl_context, server_side=True)
                    transport = tls
                    try:
                        await tls.do_handshake()
                    except (trio.BrokenResourceError, OSError) as exc:  # ssl.SSLError is one
                        log.debug("TLS handshake failed", extra={"peer": remote, "error": str(exc)})
                        return
                ws = WsConnection(transport, max_message_size=max_message, remote=remote)
                request = await ws.read_request()
            self.handshaking -= 1
            counted = False
            if ws is None or request is None:  # timed out, left, or not a WebSocket
                return
            await self._handle(ws, request)
        except Exception:
            log.exception("connection handler failed")
        finally:
            if counted:
                self.handshaking -= 1
            if ws is not None:
                await ws.abort()
            else:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _handle(self, ws: WsConnection, request: Handshake) -> None:
        cfg = self.config
        m = self.metrics
        admitted = await admit(
            ws,
            request,
            config=cfg,
            authenticator=self.authenticator,
            draining=self._draining,
            sessions=len(self.sessions),
            metrics=m,
        )
        if admitted is None:
            return
        principal = admitted.principal
        try:
            await ws.accept(admitted.subprotocol)
        except TransportClosed:  # the client left during the handshake
            return
        session_id = f"{time.time_ns() // 1_000_000:x}-{next(self._ids)}"
        session = Session(
            ws,
            principal=principal,
            limits=cfg.limits,
            run_stream=self.run_stream,
            session_id=session_id,
            metrics=m,
            encoding=Encoding.JSON if admitted.text else Encoding.BINARY,  # ATP-WS-010
        )
        await self._run_session(session, ws, principal, str(request.remote))

    async def _run_session(
        self, session: Session, transport: Transport, principal: Principal, remote: str
    ) -> None:
        """One admitted session, whatever its transport: served until it ends."""
        m = self.metrics
        session_id = session.session_id
        self.sessions[session_id] = session
        m.sessions_total.inc()
        m.sessions_active.set(len(self.sessions))
        log.info(
            "session open",
            extra={"session": session_id, "tenant": principal.tenant, "peer": remote},
        )
        try:
            await session.run()
        finally:
            self.sessions.pop(session_id, None)
            _add_frames(self._frames_done, session.conn.frames_received, session.conn.frames_sent)
            m.sessions_active.set(len(self.sessions))
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                if isinstance(transport, WsConnection):
                    if not transport.closed:
                        await transport.close(1000, "bye")
                else:
                    await transport.aclose()
            log.info("session closed", extra={"session": session_id})

    # ------------------------------------------------------------------ QUIC

    def _quic_server(self) -> QuicServer | None:
        """The QUIC listener when configured (``quic_port`` and a certificate)."""
        cfg = self.config
        if cfg.quic_port is None:
            return None
        tls = getattr(cfg, "tls", None)  # TLSConfig of the TLS branch, when merged
        cert = getattr(tls, "cert_file", None) or cfg.cert_file
        key = getattr(tls, "key_file", None) or cfg.key_file
        if not cert or not key:
            raise ValueError("QUIC needs a certificate: set cert_file and key_file")
        from atp_proto.transports.quic_server import QuicServer, QuicServerConfig

        return QuicServer(
            QuicServerConfig(
                cert_file=cert,
                key_file=key,
                retry=cfg.quic_retry,
                idle_timeout=cfg.quic.idle_timeout(cfg.limits.idle_timeout_ms),
                handshake_timeout=cfg.quic.handshake_timeout_s or cfg.handshake_timeout_s,
                max_connections=cfg.max_sessions,
                max_datagram_size=cfg.quic.max_datagram_size,
                max_data=cfg.quic.max_data,
                max_stream_data=cfg.quic.max_stream_data,
                udp_offload=cfg.quic.udp_offload,
            ),
            self._handle_quic,
        )

    async def _handle_quic(self, transport: QuicTransport) -> None:
        """One QUIC connection: the same session, admission and engine as WebSocket;
        authentication by the first CAPABILITIES' ``caps.auth`` (ATP-QUIC-008/009)."""
        cfg = self.config
        m = self.metrics
        if self._draining or len(self.sessions) >= cfg.max_sessions:
            m.handshakes_refused.inc("503")
            await transport.close_with_error(
                ErrorCode.EDRAINING, "router is draining" if self._draining else "too many sessions"
            )
            return
        authenticator = self.authenticator
        authenticate = None
        if authenticator is not None:

            def authenticate(ev: CapabilitiesReceived) -> Principal:
                auth = ev.caps.get("auth")
                token = None
                if isinstance(auth, str) and auth[:7].lower() == "bearer ":
                    token = auth[7:].strip()
                try:
                    return authenticator.authenticate(token)
                except AuthError as exc:
                    m.handshakes_refused.inc(str(exc.status))
                    log.info(
                        "QUIC session refused",
                        extra={"reason": exc.message, "peer": transport.remote},
                    )
                    raise ATPError(ErrorCode.ESEC, exc.message) from None

        session_id = f"{time.time_ns() // 1_000_000:x}-{next(self._ids)}"
        session = Session(
            transport,
            principal=ANONYMOUS,
            limits=cfg.limits,
            run_stream=self.run_stream,
            session_id=session_id,
            metrics=m,
            authenticate=authenticate,
            preauth_code=ErrorCode.ESEC,  # ATP-QUIC-008: any other first frame
        )
        if authenticate is None:
            await self._run_session(session, transport, ANONYMOUS, transport.remote)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._auth_deadline, session)
            await self._run_session(session, transport, ANONYMOUS, transport.remote)
            nursery.cancel_scope.cancel()

    async def _auth_deadline(self, session: Session) -> None:
        """A QUIC client has ``handshake_timeout_s`` to authenticate (its first
        CAPABILITIES with caps.auth, ATP-QUIC-008), as a WebSocket client has to finish
        its upgrade: an unauthenticated connection holds nothing longer."""
        await trio.sleep(self.config.handshake_timeout_s)
        if not session.authenticated and not session.closing:
            session.close(ErrorCode.ESEC, "no CAPABILITIES with caps.auth in time")

    # ------------------------------------------------------------------ drain

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop accepting, answer new SYNs with EDRAINING, let streams finish, close."""
        if self._draining:
            return
        self._draining = True
        self._ready = False
        grace = self.config.grace_s if grace_s is None else grace_s
        log.info("draining", extra={"grace_s": grace, "sessions": len(self.sessions)})
        # The listener stays open until we stop: new handshakes get a 503 with Retry-After
        # (see _handle) instead of a bare connection refusal.
        for s in list(self.sessions.values()):
            s.start_drain()
        # ATP-SESS-013: each session closes as soon as it has no stream left (one with
        # none closes at once), not when the last stream of the whole router has ended.
        with trio.move_on_after(grace):
            while True:
                for s in list(self.sessions.values()):
                    if s.idle and not s.closing:
                        s.close(ErrorCode.EDRAINING, "drain: the session has no open stream")
                if not self.sessions:
                    break
                await trio.sleep(0.02)
        for s in list(self.sessions.values()):
            if not s.closing:
                s.close(ErrorCode.EDRAINING, "drain finished: the router closed the session")
        with trio.move_on_after(2):
            while self.sessions:
                await trio.sleep(0.02)
        self.stopped.set()

    async def run_until_signal(self) -> None:
        """Serve; on SIGTERM / SIGINT drain gracefully, then return (a second signal stops
        at once)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve)
            nursery.start_soon(self._watch_signals, nursery)
            await self.stopped.wait()
            nursery.cancel_scope.cancel()

    async def _watch_signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                if self._draining:
                    log.warning("second signal: stopping now")
                    self.stopped.set()
                    return
                log.info("signal received, draining", extra={"signal": signal.Signals(sig).name})
                nursery.start_soon(self.drain)

    # ------------------------------------------------------------------ metrics

    async def _serve_metrics(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        listeners = await trio.open_tcp_listeners(cfg.metrics_port or 0, host=cfg.metrics_host)
        task_status.started(listeners[0].socket.getsockname()[1])
        # ATP-FEED-002; accepted reports also go to the decision log (ATP-AUDIT-002)
        post = feedback_handler(self.routing.learner, self.authenticator, self.audit)
        await serve_http(listeners, self.metrics.render, self._readiness, self.ssl_context, post)

    def _readiness(self) -> str | None:
        if not self._ready or self._draining:
            return "not ready\n"
        # not ready when no adapter can serve: every remote one is DOWN or its breaker open
        if not any(
            a.available if isinstance(a, ResilientAdapter) else True for a in self.adapters.values()
        ):
            return "not ready: no adapter can serve\n"
        return None
