"""The ATP router: sessions over WebSocket, auth, admission and QoS lanes, the stream
routing (estimate, admit, fan out, merge, escalate), metrics and graceful drain."""

from .auth import AuthConfig, Authenticator, AuthError, Principal, issue_token
from .config import ConfigError, RouterConfig, build_config
from .server import Router

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
