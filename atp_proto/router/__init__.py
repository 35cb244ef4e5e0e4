"""The ATP router: sessions over WebSocket, auth, admission and QoS lanes, the stream
routing (estimate, admit, fan out, merge, escalate), metrics and graceful drain."""

# The names below load on first use (PEP 562), so that importing one submodule (say
# ``atp_proto.router.audit`` for ``atp audit verify``) does not import the whole package: a
# command-line tool pays only for what it runs.
from __future__ import annotations

from typing import TYPE_CHECKING

from atp_proto._lazy import lazy_names

if TYPE_CHECKING:
    from .auth import AuthConfig, Authenticator, AuthError, Principal, issue_token
    from .config import ConfigError, RouterConfig, build_config
    from .server import Router

_EXPORTS = {
    "AuthConfig": ".auth",
    "Authenticator": ".auth",
    "AuthError": ".auth",
    "Principal": ".auth",
    "issue_token": ".auth",
    "ConfigError": ".config",
    "RouterConfig": ".config",
    "build_config": ".config",
    "Router": ".server",
}

__all__ = [
    "AuthConfig",
    "AuthError",
    "Authenticator",
    "ConfigError",
    "Principal",
    "Router",
    "RouterConfig",
    "build_config",
    "issue_token",
]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())
