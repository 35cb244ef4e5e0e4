"""``atp serve``: run the router."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from atp_proto.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ws", metavar="HOST:PORT", help="WebSocket listen address (default 127.0.0.1:7443)"
    )
    p.add_argument("--path", metavar="PATH", help="WebSocket path (default /ws)")
    p.add_argument(
        "--quic",
        metavar="HOST:PORT",
        help="QUIC listen address, UDP (default: the WebSocket host, port 7443, when a "
        "certificate is configured; 'off')",
    )
    p.add_argument("--quic-cert", metavar="FILE", help="certificate (PEM) for QUIC")
    p.add_argument("--quic-key", metavar="FILE", help="private key (PEM) of --quic-cert")
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="Prometheus /metrics, /healthz, /readyz (default 127.0.0.1:9464; 'off')",
    )
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=URL",
        help="an adapter: builtin:echo, builtin:persona[?opts], grpc://HOST:PORT (repeatable; "
        "replaces the defaults)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML config file (flags > env > file > defaults)"
    )
    p.add_argument(
        "--no-auth", action="store_true", help="accept unauthenticated clients (local use only)"
    )
    p.add_argument(
        "--jwt-key-file",
        metavar="FILE",
        help="HS256 secret or RS256/ES256 PEM public key (or env ATP_JWT_KEY)",
    )
    p.add_argument(
        "--jwt-algorithm",
        choices=["HS256", "RS256", "ES256"],
        help="pin the algorithm (default: from the key)",
    )
    p.add_argument("--jwt-audience", metavar="AUD", help="required 'aud' claim")
    p.add_argument("--jwt-issuer", metavar="ISS", help="required 'iss' claim")
    p.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="verify tokens with the keys of a JWK Set (RS256/ES256; refetched on a new kid)",
    )
    p.add_argument(
        "--oidc-issuer",
        metavar="URL",
        help="OIDC discovery: the issuer's jwks_uri gives the keys; 'iss' must match",
    )
    p.add_argument(
        "--policy", metavar="FILE.rego", help="Rego policy (package atp.policy), in-process"
    )
    p.add_argument(
        "--opa-url", metavar="URL", help="ask an OPA server's data API instead (or env OPA_URL)"
    )
    p.add_argument(
        "--routing-table",
        metavar="FILE.toml",
        help="per task type: candidates, strategy, escalation, window, lane (docs/policy.md)",
    )
    p.add_argument(
        "--cert", metavar="FILE", help="TLS certificate (PEM, chain first): serve wss://"
    )
    p.add_argument("--key", metavar="FILE", help="TLS private key (PEM) of --cert")
    p.add_argument(
        "--dev-cert",
        action="store_true",
        help="serve wss:// with a self-signed certificate for localhost (made once, kept "
        "under the user's data directory; local use only)",
    )
    p.add_argument("--max-sessions", type=int, metavar="N", help="sessions at once (default 10000)")
    p.add_argument("--grace", type=float, metavar="SECONDS", help="drain grace period (default 10)")
    p.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append a hash-chained decision log (JSON lines) to FILE; "
        "check it with 'atp audit verify FILE'",
    )
    p.add_argument(
        "--log-format", choices=["text", "json"], help="json: one JSON object a line (default text)"
    )
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default info"
    )
    p.add_argument(
        "--learner",
        choices=["cheap-first", "bandit"],
        help="who orders the candidates: cheapest estimate first (default), or the learned "
        "cost-quality bandit (feedback: POST /v1/feedback on the --metrics port)",
    )
    p.add_argument(
        "--routing-state",
        metavar="FILE.sqlite",
        help="where the bandit's state persists across restarts (default: memory only)",
    )
    p.add_argument(
        "--routing-weights",
        metavar="PLAN=Q,C,L[;...]",
        help="bandit reward weights per tenant plan: quality, cost, latency "
        "(default default=1,0.1,0.02)",
    )
    p.add_argument(
        "--routing-seed", type=int, metavar="N", help="the bandit's random seed (reproducible runs)"
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N router processes on the one WebSocket port (SO_REUSEPORT: Linux, BSD, "
        "macOS; refused where the OS lacks it), supervised; QUIC is served by worker 0; "
        "worker i serves metrics on the metrics port + i (README: Scale-out)",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="share tenant quotas and the learned routing state with every router using "
        "this Redis (redis://HOST:PORT[/DB], redis+cluster://NODE:PORT for a Redis "
        "Cluster, redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER_NAME[?db=N] through Redis "
        "Sentinel; or env ATP_REDIS_URL); unreachable: new "
        "streams are refused (fail closed), routing learns locally",
    )
    p.add_argument(
        "--restart-limit",
        metavar="N/SECONDS",
        type=_restart_limit,
        help="--workers: stop them all (exit 1) when a worker exits N times within SECONDS "
        "(default 5/60); a worker's exit status 2 (bad configuration) stops them at once",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers


def config_from_args(args: argparse.Namespace) -> Any:
    from atp_proto.router.config import (
        ConfigError,
        build_config,
        parse_adapter_spec,
        parse_hostport,
    )

    try:
        flags: dict[str, Any] = {
            "ws_path": args.path,
            "jwt_key_file": args.jwt_key_file,
            "jwt_algorithm": args.jwt_algorithm,
            "jwt_audience": args.jwt_audience,
            "jwt_issuer": args.jwt_issuer,
            "max_sessions": args.max_sessions,
            "jwks": args.jwks,
            "oidc_issuer": args.oidc_issuer,
            "policy_file": args.policy,
            "opa_url": args.opa_url,
            "routing_table": args.routing_table,
            "grace_s": args.grace,
            "log_format": args.log_format,
            "log_level": args.log_level,
            "learner": getattr(args, "learner", None),
            "routing_state": getattr(args, "routing_state", None),
            "routing_weights": getattr(args, "routing_weights", None),
            "routing_seed": getattr(args, "routing_seed", None),
            "audit_log": args.audit_log,
            "workers": getattr(args, "workers", None),
            "redis_url": getattr(args, "redis", None),
        }
        if getattr(args, "worker_index", None) is not None:  # a worker of --workers N
            flags["worker_index"], flags["reuse_port"] = args.worker_index, True
        if args.ws:
            flags["ws_host"], flags["ws_port"] = parse_hostport(args.ws, "--ws")
        if args.metrics:
            if args.metrics == "off":
                flags["metrics_port"] = None
                cfg_metrics_off = True
            else:
                flags["metrics_host"], flags["metrics_port"] = parse_hostport(
                    args.metrics, "--metrics"
                )
                cfg_metrics_off = False
        else:
            cfg_metrics_off = False
        if args.adapter:
            flags["adapters"] = dict(parse_adapter_spec(a) for a in args.adapter)
        if args.no_auth:
            given = [
                flag
                for flag, value in (
                    ("--jwt-key-file", args.jwt_key_file),
                    ("--jwks", args.jwks),
                    ("--oidc-issuer", args.oidc_issuer),
                    ("--jwt-algorithm", args.jwt_algorithm),
                    ("--jwt-audience", args.jwt_audience),
                    ("--jwt-issuer", args.jwt_issuer),
                )
                if value
            ]
            if given:  # ignored before: a router left open that its operator meant to guard
                raise UsageError(f"{' and '.join(given)} with --no-auth: choose one")
            flags["auth"] = False
        from atp_proto._cli._serve_checks import (
            check_combinations,
            check_config_files,
            check_input_files,
            check_tls_files,
        )

        check_input_files(args)  # before --dev-cert writes anything
        check_tls_files(args)
        flags["tls"] = tls = _tls_from_args(args)
        _quic_flags(args, flags, parse_hostport, tls)
        cfg = build_config(file=args.config, env=os.environ, flags=flags)
        from dataclasses import replace

        if cfg_metrics_off:
            cfg = replace(cfg, metrics_port=None)
        check_combinations(args, cfg)
        check_config_files(args, cfg)
        if args.quic == "off":  # wins over [transport.quic] listen
            cfg = replace(cfg, quic_port=None)
        elif cfg.quic_port is None and not cfg.quic.disabled and (cfg.tls or cfg.cert_file):
            # ATP-QUIC-019: with a certificate from any layer (--cert, --dev-cert,
            # --quic-cert, [tls], [transport.quic] cert) QUIC goes beside WebSocket: the
            # same host and port number over UDP (7443 by default; a kernel-chosen port
            # when the WebSocket asks for one, so that routers never collide)
            cfg = replace(cfg, quic_host=cfg.ws_host, quic_port=cfg.ws_port)
        return cfg
    except ConfigError as exc:
        _DEV_CERT.forget()
        raise UsageError(str(exc)) from None
    except UsageError:
        _DEV_CERT.forget()
        raise


class _DevCert:
    """``--dev-cert``: what this run made (the directory, the certificate, its key, the
    lock file), so that a start refused afterwards (a missing ``--policy``, a broken
    config file) leaves nothing behind, and the lines saying where it is, printed once
    the router is about to serve (not before an error that then removes it)."""

    def __init__(self) -> None:
        self.made: list[Path] = []
        self.lines: list[str] = []

    def make(self) -> tuple[str, str]:
        from atp_proto.transports.tls import (
            DEV_CERT_NAME,
            DEV_KEY_NAME,
            dev_cert_dir,
            make_or_reuse_dev_cert,
        )

        # where dev_cert_dir() puts it (atp_proto/transports/tls.py), before it creates it
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(
            os.path.expanduser("~"), ".local/share"
        )
        where = Path(base) / "atp"
        names = (DEV_CERT_NAME, DEV_KEY_NAME, ".dev-cert.lock")
        before = [p for p in (where / n for n in names) if not p.exists()]
        dir_before = []  # the directories it will create, deepest first
        parent = where
        while not parent.exists() and parent != parent.parent:
            dir_before.append(parent)
            parent = parent.parent
        try:
            cert, key, fp, created = make_or_reuse_dev_cert(dev_cert_dir())
        except OSError as exc:
            raise UsageError(f"cannot write the dev certificate: {exc.strerror or exc}") from None
        # only what this run made, as the lock decided: a router started beside this one
        # may have made them meanwhile (it then serves with them); the directories go
        # only when empty (forget: rmdir)
        self.made = [p for p in before if p.exists()] + dir_before if created else []
        self.lines = [
            f"atp serve: dev certificate {cert} (SHA-256 {fp})",
            "atp serve: warning: the dev certificate is self-signed, for local use only; "
            f"clients trust it with --ca {cert}",
        ]
        return str(cert), str(key)

    def announce(self) -> None:
        for line in self.lines:
            print(line, file=sys.stderr)
        self.made, self.lines = [], []

    def forget(self) -> None:
        """Remove what :meth:`make` made (the start was refused)."""
        for path in self.made:
            with contextlib.suppress(OSError):  # not empty, or gone: leave it
                path.rmdir() if path.is_dir() else path.unlink()
        self.made, self.lines = [], []


_DEV_CERT = _DevCert()


def _tls_from_args(args: argparse.Namespace) -> Any:
    """``--cert/--key`` or ``--dev-cert`` as a TLSConfig (None: neither given)."""
    from atp_proto.transports.tls import TLSConfig

    if args.dev_cert:
        if args.cert or args.key:
            raise UsageError("--dev-cert makes its own certificate: drop --cert/--key")
        cert, key = _DEV_CERT.make()
        return TLSConfig(cert_file=cert, key_file=key)
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    if args.cert:
        return TLSConfig(cert_file=args.cert, key_file=args.key)
    return None


def _quic_flags(
    args: argparse.Namespace, flags: dict[str, Any], parse_hostport: Any, tls: Any
) -> None:
    """``--quic`` (spec §13.2): QUIC is served with the router's certificate (``--cert`` /
    ``--key`` or ``--dev-cert``, the same as ``wss://``, or the config file's ``[tls]``;
    ``--quic-cert`` / ``--quic-key`` give QUIC another one), beside WebSocket unless
    ``--quic`` (or the config file's ``[transport.quic] listen``) says otherwise
    (ATP-QUIC-019: :func:`config_from_args` puts it there once every layer is merged). A
    QUIC address without any certificate is refused by ``RouterConfig.validate``."""
    from atp_proto.router.config import ConfigError

    cert = args.quic_cert or (tls.cert_file if tls is not None else None)
    key = args.quic_key or (tls.key_file if tls is not None else None)
    if bool(args.quic_cert) != bool(args.quic_key):
        raise ConfigError("--quic-cert and --quic-key go together")
    if cert:
        flags["cert_file"], flags["key_file"] = cert, key
    if args.quic and args.quic != "off":
        flags["quic_host"], flags["quic_port"] = parse_hostport(args.quic, "--quic")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError:
        _DEV_CERT.forget()  # a start refused after --dev-cert made its certificate
        raise


def _run(args: argparse.Namespace) -> int:
    import trio

    from atp_proto.router.logs import setup_logging
    from atp_proto.router.server import Router

    cfg = config_from_args(args)
    setup_logging(cfg.log_format, cfg.log_level)
    import logging

    supervising = cfg.workers > 1 and cfg.worker_index < 0
    if cfg.audit_log:  # say a log it cannot write now, not as a listener's error later
        from atp_proto.router.workers import worker_audit_log

        n = cfg.workers if supervising else 0  # each worker writes its own
        for log_file in [worker_audit_log(cfg.audit_log, i) for i in range(n)] or [cfg.audit_log]:
            try:
                with open(log_file, "ab"):
                    pass
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
                raise UsageError(f"cannot open the audit log {log_file}: {why}") from None
    if cfg.redis_url and not cfg.quota.enabled and cfg.learner != "bandit" and cfg.worker_index < 0:
        # said once (by the supervisor with --workers), not refused: one ATP_REDIS_URL may
        # serve a fleet whose routers do not all have quotas
        logging.getLogger("atp.router").warning(
            "--redis is set but nothing uses it: no [quota] is configured and the learner "
            "is not bandit (the shared state is for these two)"
        )
    if supervising:
        _DEV_CERT.announce()
        return _supervise(cfg, args.restart_limit)
    if cfg.worker_index >= 0:
        from atp_proto.router.workers import tag_worker_logs

        tag_worker_logs(cfg.worker_index)

    if not cfg.auth:
        logging.getLogger("atp.router").warning(
            "authentication is OFF (--no-auth): anyone who can reach the port can use the router"
        )
    elif cfg.tls is None and not _loopback(cfg.ws_host):
        # ATP-SEC-008: bearer tokens beyond loopback belong inside TLS
        logging.getLogger("atp.router").warning(
            "tokens travel in clear on ws:// beyond loopback: serve wss:// (--cert/--key)"
        )
    try:
        router = Router(cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # Objects alive after start-up never become garbage: keep them out of the collector's
    # way, and collect the young generation less often (gen-2 pauses of 25-73 ms were
    # measured under load by atp bench ws).
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    _DEV_CERT.announce()
    try:
        if cfg.worker_index >= 0:
            trio.run(_serve_worker, router)
        else:
            trio.run(router.run_until_signal)
    except (OSError, BaseExceptionGroup) as exc:
        err = _listen_error(exc)
        if err is None:
            raise
        where = _which_listener(err, cfg)
        print(
            f"atp serve: error: cannot listen on {where}: {_strerror(err, where)}",
            file=sys.stderr,
        )
        return 2
    return 0


async def _serve_worker(router: Any) -> None:
    """A worker of ``--workers N``: serve until a signal, or drain when the supervisor is
    gone (no orphan keeps the port)."""
    import trio

    from atp_proto.router.workers import watch_parent

    orphaned = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_parent, orphaned, os.getppid())

        async def drain_when_orphaned() -> None:
            await orphaned.wait()
            await router.drain()

        nursery.start_soon(drain_when_orphaned)
        await router.run_until_signal()
        nursery.cancel_scope.cancel()


def _restart_limit(text: str) -> Any:
    """``--restart-limit N/SECONDS`` as a :class:`atp_proto.router.workers.RestartLimit`."""
    from atp_proto.router.workers import RestartLimit

    try:
        return RestartLimit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _supervise(cfg: Any, limit: Any) -> int:
    """``--workers N``: the supervisor (atp_proto.router.workers)."""
    import logging

    from atp_proto.router import workers

    if not workers.HAS_REUSEPORT:
        raise UsageError(workers.NO_REUSEPORT)
    try:
        serve_at = sys.argv.index("serve")
    except ValueError:
        raise UsageError("--workers runs from the command line (atp serve --workers N)") from None
    try:
        held = workers.reserve_port(cfg.ws_host, cfg.ws_port)
    except OSError as exc:
        print(
            f"atp serve: error: cannot listen on {cfg.ws_host}:{cfg.ws_port} (WebSocket): "
            f"{_strerror(exc, '(WebSocket)')}",
            file=sys.stderr,
        )
        return 2
    port = held.getsockname()[1]
    quic = None
    if cfg.quic_port is not None:
        qport = port if cfg.quic_port == cfg.ws_port else cfg.quic_port
        quic = f"[{cfg.quic_host}]:{qport}" if ":" in cfg.quic_host else f"{cfg.quic_host}:{qport}"
    metrics = None if cfg.metrics_port is None else (cfg.metrics_host, cfg.metrics_port)
    opts = workers.WorkerOptions(cfg.ws_host, port, metrics, quic, cfg.audit_log)
    log = logging.getLogger("atp.router")
    log.info(
        "supervisor starting workers",
        extra={"workers": cfg.workers, "ws_port": port, "quic": quic or "off"},
    )
    if not cfg.redis_url and cfg.quota.enabled:
        log.warning("no --redis: each worker counts the tenant quotas alone (limit x workers)")
    _merge_routing_state(cfg)  # what a fleet killed before its stop left in worker rows
    try:
        return workers.supervise(
            sys.argv[serve_at + 1 :], opts, cfg.workers, limit or workers.DEFAULT_RESTART_LIMIT
        )
    finally:
        held.close()
        _merge_routing_state(cfg)  # the workers' learning, one state for the next start


def _merge_routing_state(cfg: Any) -> None:
    """``--workers N --routing-state FILE``: fold the workers' rows into the fleet's state
    while no worker runs (atp_proto.router.routing.learner.store.merge_workers)."""
    if cfg.learner != "bandit" or not cfg.routing_state:
        return
    import logging

    from atp_proto.router.routing.learner import store

    log = logging.getLogger("atp.router")
    try:
        merged = store.merge_workers(cfg.routing_state, shared=bool(cfg.redis_url))
    except store.StateError as exc:
        log.warning("routing state not merged", extra={"error": str(exc)})  # workers say why
        return
    if merged:
        log.info("routing state merged", extra={"file": cfg.routing_state, "workers": merged})


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _listen_error(exc: BaseException) -> OSError | None:
    """The OSError a listener's bind raised, from inside the nurseries' exception groups
    (a port in use, a host that is not ours, a port below 1024): None for anything else."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            oserrors = [e for e in exc.exceptions if _listen_error(e) is not None]
            if not oserrors:
                return None
            exc = oserrors[0]
        else:
            exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


def _which_listener(err: OSError, cfg: Any) -> str:
    """``HOST:PORT`` of the listener that failed: the metrics one when the bind was made
    from the metrics server's task, else the WebSocket one."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_serve_metrics":
            return f"{cfg.metrics_host}:{cfg.metrics_port} (metrics)"
        if tb.tb_frame.f_code.co_filename.endswith("quic_server.py"):
            return f"{cfg.quic_host}:{cfg.quic_port} (QUIC, UDP)"
        tb = tb.tb_next
    return f"{cfg.ws_host}:{cfg.ws_port} (WebSocket)"


#: the flag that moves each listener (a busy port: where to pick another)
_LISTEN_FLAGS = {
    "(WebSocket)": "--ws HOST:PORT",
    "(metrics)": "--metrics HOST:PORT, or --metrics off",
    "(QUIC, UDP)": "--quic HOST:PORT, or --quic off",
}


def _strerror(err: OSError, where: str = "") -> str:
    """Why a listener could not bind, for a person; a busy port names the flag that moves
    ``where``'s listener (``... (metrics)``, ``... (WebSocket)``)."""
    import errno

    if err.errno == errno.EADDRINUSE:
        flag = next((f for kind, f in _LISTEN_FLAGS.items() if where.endswith(kind)), "")
        how = f"pick another port: {flag}" if flag else "pick another port"
        return f"address already in use (another process listens there; {how})"
    return (err.strerror or str(err)).lower()
