"""Router configuration: defaults < TOML file < environment < command-line flags.

Every problem is reported as :class:`ConfigError` with a message naming the setting and
where it came from, so ``atp serve`` can refuse to start with a clear sentence.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from atp_proto.adapters import registry as adapter_registry
from atp_proto.frames import BudgetWindow, Limits
from atp_proto.transports.quic_settings import QuicSettings, QuicSettingsError, parse_quic_table
from atp_proto.transports.tls import TLSConfig, TLSConfigError

from .admission import AdmissionConfig
from .quota import QuotaConfig, parse_quota_section

DEFAULT_ADAPTERS = {"echo": "builtin:echo", "persona": "builtin:persona"}


class ConfigError(ValueError):
    pass


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


@dataclass(frozen=True)
class RouterConfig:
    ws_host: str = "127.0.0.1"
    ws_port: int = 7443
    ws_path: str = "/ws"
    #: QUIC listener (spec §13.2; UDP): None = off. Needs a certificate: ``tls``
    #: (TLSConfig, after the TLS branch) or ``cert_file`` / ``key_file``.
    quic_host: str = "127.0.0.1"
    quic_port: int | None = None
    quic_retry: bool = True  #: address validation with Retry tokens
    #: the rest of ``[transport.quic]`` (idle timeout, datagram size, QUIC windows)
    quic: QuicSettings = field(default_factory=QuicSettings)
    cert_file: str | None = None
    key_file: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9464  #: None: no metrics endpoint
    adapters: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ADAPTERS))
    auth: bool = True
    jwt_key_file: str | None = None
    jwt_algorithm: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    allowed_tenants: tuple[str, ...] = ()
    max_sessions: int = 10_000
    grace_s: float = 10.0
    handshake_timeout_s: float = 10.0
    estimate_timeout_s: float = 2.0
    call_timeout_s: float = 120.0
    health_interval_s: float = 5.0
    write_stall_s: float = 30.0  #: a stream whose client grants no credit this long ends ETIMEOUT
    min_confidence: float = 0.0
    log_format: str = "text"
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    tenant_window: BudgetWindow = field(default_factory=BudgetWindow)
    # policy and identity (issue 13 item 1; docs/policy.md)
    policy_file: str | None = None  #: --policy FILE.rego (in-process, regopy)
    opa_url: str | None = None  #: --opa-url / OPA_URL (external OPA, REST data API)
    opa_timeout_s: float = 1.0
    routing_table: str | None = None  #: --routing-table FILE.toml
    policy_poll_s: float = 1.0  #: how often the policy / table files are checked for change
    jwks: str | None = None  #: --jwks FILE|URL: the token keys as a JWK Set
    oidc_issuer: str | None = None  #: --oidc-issuer URL: discovery gives jwks_uri; iss checked
    jwks_ttl_s: float = 300.0  #: how long a fetched key set is used before it is refetched
    jwks_refetch_s: float = 5.0  #: at most one refetch per this long (unknown kid, rotation)
    #: ``wss://`` (and QUIC) with this certificate and key; None: plain ``ws://``
    tls: TLSConfig | None = None
    #: the learner ranking the candidates (issue 13): "cheap-first" or "bandit"
    learner: str = "cheap-first"
    routing_state: str = ""  #: SQLite file the bandit's state persists in ("": memory only)
    routing_weights: str = ""  #: PLAN=QUALITY,COST,LATENCY[;...] (bandit reward weights)
    routing_seed: int = -1  #: the bandit's random seed (-1: from the OS; reproducible runs)
    #: the decision log (ATP-AUDIT-001): a JSON-lines file, "" = off (``--audit-log``)
    audit_log: str = ""
    audit_max_bytes: int = 64 * 1024 * 1024  #: rotate the decision log past this size
    hedge_rate: float = 0.1  #: at most this share of hedge-enabled streams hedge (ATP-STRAT-006)
    # scale-out (issue 14 item 5; README "Scale-out")
    #: per-tenant quotas (``[quota]``, :mod:`.quota`): in-process, or in Redis with redis_url
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    redis_url: str = ""  #: --redis URL: quotas and the learner's state shared ("" = none)
    redis_prefix: str = "atp:"  #: the keys' prefix in Redis (routers of one fleet share it)
    redis_timeout_s: float = 0.5  #: a Redis call's bound (then fail closed / local state)
    workers: int = 1  #: --workers N: router processes on one port (SO_REUSEPORT)
    #: bind the WebSocket listener with SO_REUSEPORT (set by the supervisor in each worker)
    reuse_port: bool = False
    worker_index: int = -1  #: which worker this process is (-1: not a worker)

    def validate(self) -> RouterConfig:
        if not self.ws_path.startswith("/"):
            raise ConfigError(f"ws path must start with '/', got {self.ws_path!r}")
        if self.max_sessions < 1:
            raise ConfigError("max_sessions must be at least 1")
        if self.grace_s < 0:
            raise ConfigError(f"the drain grace must not be negative, got {self.grace_s:g} s")
        for name, value in (
            ("call_timeout_s", self.call_timeout_s),
            ("estimate_timeout_s", self.estimate_timeout_s),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value:g}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format must be text or json, got {self.log_format!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError("min_confidence must be within 0..1")
        if self.limits.initial_window < Limits().initial_window:
            # ATP-SESS-016: a client may send before our CAPABILITIES reach it
            raise ConfigError(
                f"limits.initial_window must be at least {Limits().initial_window} "
                "(clients may open streams with the default before they see the router's)"
            )
        for name, url in self.adapters.items():
            check_adapter_url(name, url)
        if self.policy_file and self.opa_url:
            raise ConfigError("--policy and --opa-url exclude each other: pick one policy")
        if self.jwks and self.oidc_issuer:
            raise ConfigError("--jwks and --oidc-issuer exclude each other (OIDC finds the JWKS)")
        if self.oidc_issuer and not self.jwt_audience:
            raise ConfigError("--oidc-issuer needs --jwt-audience (the 'aud' this router accepts)")
        if self.opa_timeout_s <= 0 or self.policy_poll_s <= 0:
            raise ConfigError("opa_timeout_s and policy_poll_s must be positive")
        if self.audit_max_bytes < 1024:
            raise ConfigError("audit_max_bytes must be at least 1024")
        if not 0.0 <= self.hedge_rate <= 1.0:
            raise ConfigError("hedge_rate must be within 0..1")
        if self.redis_url:
            _check_redis_url(self.redis_url)
        if self.redis_timeout_s <= 0:
            raise ConfigError("redis_timeout_s must be positive")
        if not 1 <= self.workers <= 256:
            raise ConfigError("--workers must be within 1..256")
        try:
            self.quic.validate()
        except QuicSettingsError as exc:
            raise ConfigError(str(exc)) from None
        if self.quic_port is not None and not (self.cert_file and self.key_file) and not self.tls:
            raise ConfigError(
                "QUIC needs a certificate: [tls] or [transport.quic] cert and key, "
                "or --cert/--key (--dev-cert)"
            )
        for key, value in self.tenant_window.to_dict().items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"[tenant_window]: {key} must be a non-negative int")
        if self.tls is not None:
            try:  # a missing, unreadable or mismatched file refuses to start, in words
                self.tls.server_ssl_context()
            except TLSConfigError as exc:
                raise ConfigError(str(exc)) from None
        if self.learner not in ("cheap-first", "bandit"):
            raise ConfigError(f"learner must be cheap-first or bandit, got {self.learner!r}")
        if self.routing_weights:
            from .routing.learner.bandit import parse_weights

            try:
                parse_weights(self.routing_weights)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return self


def check_adapter_url(name: str, url: str) -> None:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"adapter name {name!r}: use letters, digits, '-' and '_'")
    try:
        adapter_registry.check_url(url)
    except ValueError as exc:
        raise ConfigError(f"adapter {name}: {exc}") from None


def parse_adapter_spec(spec: str, what: str = "--adapter") -> tuple[str, str]:
    """``NAME=URL`` (from --adapter, or an item of ``ADAPTER_ENDPOINTS``: ``what`` names
    the source in the error)."""
    name, sep, url = spec.partition("=")
    if not sep or not name.strip() or not url.strip():
        raise ConfigError(f"{what} expects NAME=URL, got {spec!r}")
    return name.strip(), url.strip()


def adapters_from_env(value: str) -> dict[str, str]:
    """``ADAPTER_ENDPOINTS`` as in the seed: a JSON list of URLs (``http://host:7070``
    meaning gRPC), or ``name=url,name=url``."""
    value = value.strip()
    out: dict[str, str] = {}
    if value.startswith("["):
        try:
            urls = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"ADAPTER_ENDPOINTS is not a JSON list: {exc}") from None
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ConfigError("ADAPTER_ENDPOINTS must be a JSON list of URL strings")
        for raw in urls:
            parts = urlsplit(raw)
            url = raw
            if parts.scheme in ("http", "https"):
                url = ("grpcs" if parts.scheme == "https" else "grpc") + raw[len(parts.scheme) :]
            name = (parts.hostname or "adapter").split(".")[0]
            base, n = name, 2
            while name in out:
                name, n = f"{base}-{n}", n + 1
            out[name] = url
    else:
        for item in filter(None, (s.strip() for s in value.split(","))):
            name, url = parse_adapter_spec(
                item, "ADAPTER_ENDPOINTS (a JSON list of URLs, or name=url,name=url)"
            )
            out[name] = url
    for name, url in out.items():
        try:
            check_adapter_url(name, url)
        except ConfigError as exc:
            raise ConfigError(f"ADAPTER_ENDPOINTS: {exc}") from None
    return out


_SECTIONS = {"limits": Limits, "admission": AdmissionConfig}

#: Scalar RouterConfig settings and their types, to check values read from a file.
_SCALAR_TYPES: dict[str, type] = {
    f.name: type(f.default)
    for f in fields(RouterConfig)
    if type(f.default) in (bool, int, float, str)
}


#: Settings a file's [router] table may hold under their own name (the rest have their
#: own key or table: ws, path, metrics, [auth], [adapters], [limits], ...).
_ROUTER_KEYS = frozenset(_SCALAR_TYPES) - {
    "ws_host",
    "ws_port",
    "ws_path",
    "metrics_host",
    "metrics_port",
    "auth",
    "jwt_key_file",
    "jwt_algorithm",
    "jwt_audience",
    "jwt_issuer",
    "reuse_port",
    "worker_index",
}


def _checked(where: str, name: str, value: Any) -> Any:
    """``value`` for setting ``name``, or ConfigError when its type is wrong."""
    if name == "allowed_tenants":
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    expected = _SCALAR_TYPES.get(name)
    if expected is None:
        return value
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{where} must be {expected.__name__}, got {value!r}")
    return value


def _typed(section: str, cls: type, data: Mapping[str, Any]) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(
            f"[{section}]: unknown setting(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(known)})"
        )
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from None


def load_file(path: str) -> dict[str, Any]:
    """Settings from a TOML file, flattened to RouterConfig field names."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    router = doc.pop("router", {})
    for key, value in router.items():
        if key == "ws":
            out["ws_host"], out["ws_port"] = parse_hostport(str(value), f"{path}: router.ws")
        elif key == "metrics":
            if value in ("", "off", False):
                out["metrics_port"] = None
            else:
                out["metrics_host"], out["metrics_port"] = parse_hostport(
                    str(value), f"{path}: router.metrics"
                )
        elif key == "path":
            out["ws_path"] = value
        elif key in _ROUTER_KEYS:
            out[key] = _checked(f"{path}: router.{key}", key, value)
        else:
            raise ConfigError(
                f"{path}: [router]: unknown setting {key!r} (known: "
                f"{', '.join(['ws', 'path', 'metrics', *sorted(_ROUTER_KEYS)])})"
            )
    if "adapters" in doc:
        adapters = doc.pop("adapters")
        if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
            raise ConfigError(f"{path}: [adapters] maps names to URL strings")
        out["adapters"] = adapters
    if "auth" in doc:
        auth = doc.pop("auth")
        mapping = {
            "enabled": "auth",
            "key_file": "jwt_key_file",
            "algorithm": "jwt_algorithm",
            "audience": "jwt_audience",
            "issuer": "jwt_issuer",
            "allowed_tenants": "allowed_tenants",
            "jwks": "jwks",
            "oidc_issuer": "oidc_issuer",
        }
        for key, value in auth.items():
            if key not in mapping:
                raise ConfigError(f"{path}: [auth]: unknown setting {key!r}")
            out[mapping[key]] = _checked(f"{path}: auth.{key}", mapping[key], value)
    if "policy" in doc:
        policy = doc.pop("policy")
        policy_keys = {
            "file": "policy_file",
            "opa_url": "opa_url",
            "opa_timeout_s": "opa_timeout_s",
            "routing_table": "routing_table",
            "poll_s": "policy_poll_s",
        }
        if not isinstance(policy, dict):
            raise ConfigError(f"{path}: [policy] must be a table")
        for key, value in policy.items():
            if key not in policy_keys:
                raise ConfigError(
                    f"{path}: [policy]: unknown setting {key!r} (known: {', '.join(policy_keys)})"
                )
            want: type | tuple[type, ...] = (int, float) if key.endswith("_s") else str
            if isinstance(value, bool) or not isinstance(value, want):
                raise ConfigError(f"{path}: policy.{key} has the wrong type: {value!r}")
            out[policy_keys[key]] = value
    for section, cls in _SECTIONS.items():
        if section in doc:
            out[section] = _typed(section, cls, doc.pop(section))
    if "tenant_window" in doc:
        out["tenant_window"] = _typed("tenant_window", BudgetWindow, doc.pop("tenant_window"))
    if "redis" in doc:  # [redis] url, prefix, timeout_s (router/shared/)
        section = doc.pop("redis")
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [redis] must be a table")
        for key, value in section.items():
            name = {"url": "redis_url", "prefix": "redis_prefix", "timeout_s": "redis_timeout_s"}
            if key not in name:
                raise ConfigError(
                    f"{path}: [redis]: unknown setting {key!r} (known: url, prefix, timeout_s)"
                )
            out[name[key]] = _checked(f"{path}: redis.{key}", name[key], value)
    if "quota" in doc:  # [quota] period_s, limits, [quota.tenants.NAME] (router/quota.py)
        try:
            out["quota"] = parse_quota_section(doc.pop("quota"))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if "tls" in doc:  # [tls] cert = "FILE", key = "FILE" (paths relative to the file's)
        out["tls"] = _tls_section(path, doc.pop("tls"))
    if "transport" in doc:  # [transport.quic]
        out.update(_transport_section(path, doc.pop("transport")))
    if doc:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(doc))}")
    base = os.path.dirname(os.path.abspath(path))
    for setting in FILE_PATH_SETTINGS:  # every path of the file: relative to its directory
        value = out.get(setting)
        if value and not (setting == "jwks" and "://" in value):
            out[setting] = os.path.join(base, value)
    return out


#: The settings a config file gives as paths (beside ``[tls]`` and ``[transport.quic]``
#: ``cert`` / ``key``), by RouterConfig field: the file's key for each. A relative path
#: is taken relative to the config file's directory, as every path of the file is
#: (README, "Configuration"); a ``jwks`` URL is left alone.
FILE_PATH_SETTINGS = {
    "jwt_key_file": "auth.key_file",
    "jwks": "auth.jwks",
    "policy_file": "policy.file",
    "routing_table": "policy.routing_table",
    "audit_log": "router.audit_log",
    "routing_state": "router.routing_state",
}


def _tls_section(path: str, data: Any) -> TLSConfig:
    if not isinstance(data, Mapping) or set(data) - {"cert", "key"} or "cert" not in data:
        raise ConfigError(f"{path}: [tls] takes cert = FILE and key = FILE, got {data!r}")
    base = os.path.dirname(os.path.abspath(path))
    files = {}
    for key in ("cert", "key"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: tls.{key} must be a file name, got {value!r}")
        files[key] = os.path.join(base, value) if value else None
    return TLSConfig(cert_file=files["cert"], key_file=files["key"])


def _transport_section(path: str, data: Any) -> dict[str, Any]:
    """``[transport.quic]`` (atp_proto/transports/quic_settings.py) as RouterConfig fields."""
    if not isinstance(data, Mapping) or set(data) - {"quic"}:
        raise ConfigError(f"{path}: [transport] holds the table [transport.quic], got {data!r}")
    try:
        quic = parse_quic_table(path, data.get("quic", {}))
    except QuicSettingsError as exc:
        raise ConfigError(str(exc)) from None
    out: dict[str, Any] = {}
    settings = quic["settings"]
    listen = quic.get("listen")
    if listen == "off":
        out["quic_port"] = None
        settings = replace(settings, disabled=True)
    elif listen is not None:
        out["quic_host"], out["quic_port"] = listen
    if "cert" in quic:
        out["cert_file"], out["key_file"] = quic["cert"], quic["key"]
    if "retry" in quic:
        out["quic_retry"] = quic["retry"]
    out["quic"] = settings
    return out


def from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    if env.get("ADAPTER_ENDPOINTS"):
        out["adapters"] = adapters_from_env(env["ADAPTER_ENDPOINTS"])
    if env.get("ATP_WS"):
        out["ws_host"], out["ws_port"] = parse_hostport(env["ATP_WS"], "ATP_WS")
    if env.get("ATP_METRICS"):
        out["metrics_host"], out["metrics_port"] = parse_hostport(env["ATP_METRICS"], "ATP_METRICS")
    if env.get("ATP_JWT_KEY_FILE"):
        out["jwt_key_file"] = env["ATP_JWT_KEY_FILE"]
    if env.get("ATP_REDIS_URL"):
        out["redis_url"] = env["ATP_REDIS_URL"]
    if env.get("OPA_URL"):
        out["opa_url"] = env["OPA_URL"]
    if env.get("ATP_LOG_FORMAT"):
        out["log_format"] = env["ATP_LOG_FORMAT"]
    return out


def build_config(
    *, file: str | None, env: Mapping[str, str] | None, flags: Mapping[str, Any]
) -> RouterConfig:
    """Merge the layers: defaults < file < env < flags (flags with value None are unset)."""
    cfg = RouterConfig()
    layers = [
        load_file(file) if file else {},
        from_env(env),
        {k: v for k, v in flags.items() if v is not None},
    ]
    known = {f.name for f in fields(RouterConfig)}
    for layer in layers:
        unknown = set(layer) - known
        if unknown:  # a programming error in a caller, but say it in words
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        cfg = replace(cfg, **layer)
    return cfg.validate()


def _check_redis_url(url: str) -> None:
    """``--redis``: a URL the client takes as meant (its parser ignores a DB that is not a
    number and uses DB 0, another fleet's maybe). The message never repeats the URL: it
    may hold a password.

    Raises:
        ConfigError: one line saying what is wrong.
    """
    usage = (
        "--redis expects redis://HOST:PORT[/DB], rediss://..., unix:///PATH, "
        "redis+cluster://HOST:PORT (a Redis Cluster node) or "
        "redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER_NAME[?db=N]"
    )
    if url.partition("://")[0] in ("redis+sentinel", "rediss+sentinel"):
        from .shared.urls import parse_sentinel  # no redis import: checked at start

        try:
            parse_sentinel(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{usage}: the URL does not parse") from None
    if parts.scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        raise ConfigError(usage)
    db = parts.path.strip("/")
    if parts.scheme.endswith("+cluster") and db not in ("", "0"):
        raise ConfigError(f"{usage}: a Redis Cluster has only DB 0")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"{usage}: the DB must be a number")
