"""Authentication: JWTs with pinned algorithms, taken from where browsers can put them.

A token may arrive in the ``Authorization: Bearer`` header, the ``access_token`` query
parameter, or a ``bearer.<token>`` WebSocket subprotocol (browsers cannot set headers).
Claims give the tenant (``tenant``), the highest QoS lane (``max_qos``) and the task types
allowed (``task_types``; absent means any). Tokens are never logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import jwt

from atp_proto.frames import QoS

#: Algorithms we accept at all. ``none`` and anything else are refused (ATP-SEC).
SUPPORTED_ALGORITHMS = ("HS256", "RS256", "ES256")
SUBPROTOCOL_PREFIX = "bearer."
ATP_SUBPROTOCOL = "atp.v1"


class AuthError(Exception):
    """A refused handshake: ``status`` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end of a session, from the token's claims."""

    subject: str
    tenant: str
    max_qos: QoS = QoS.GOLD
    task_types: frozenset[str] | None = None  #: None: any task type
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def allows(self, task_type: str) -> bool:
        return self.task_types is None or task_type in self.task_types

    def cap_qos(self, qos: QoS) -> QoS:
        """Lanes are ordered gold (1) < silver (2) < bronze (3): the cap is a floor."""
        return QoS(max(int(qos), int(self.max_qos)))


ANONYMOUS = Principal(subject="anonymous", tenant="local")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    key: str | bytes
    algorithm: str
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 30.0
    allowed_tenants: frozenset[str] | None = None

    @classmethod
    def load(
        cls,
        *,
        key_file: str | None = None,
        key_env: str = "ATP_JWT_KEY",
        algorithm: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        allowed_tenants: Iterable[str] | None = None,
    ) -> AuthConfig:
        """Key from a file (PEM public key or secret) or the environment.

        Raises:
            ValueError: no key, a weak HMAC secret, or an algorithm that does not match.
        """
        if key_file:
            try:
                raw = Path(key_file).read_bytes()
            except OSError as exc:
                why = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
                raise ValueError(
                    f"cannot read JWT key file {key_file}: {str(why).lower()}"
                ) from None
        elif os.environ.get(key_env):
            raw = os.environ[key_env].encode()
        else:
            raise ValueError(
                f"auth is on but no key: pass --jwt-key-file or set {key_env} (or use --no-auth)"
            )
        raw = raw.strip()
        is_pem = raw.startswith(b"-----BEGIN")
        if algorithm is None:
            algorithm = _guess_algorithm(raw) if is_pem else "HS256"
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(
                f"JWT algorithm {algorithm!r} is not allowed (use one of "
                f"{', '.join(SUPPORTED_ALGORITHMS)})"
            )
        if algorithm == "HS256":
            if is_pem:
                raise ValueError("HS256 with a PEM key is refused (key confusion); use RS256/ES256")
            if len(raw) < 32:
                raise ValueError("the HS256 secret must be at least 32 bytes")
            key: str | bytes = raw
        else:
            if not is_pem:
                raise ValueError(f"{algorithm} needs a PEM public key")
            key = raw.decode()
        return cls(
            key=key,
            algorithm=algorithm,
            audience=audience,
            issuer=issuer,
            allowed_tenants=frozenset(allowed_tenants) if allowed_tenants else None,
        )


def _guess_algorithm(pem: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        pub = load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError(f"the JWT key is not a PEM public key: {exc}") from None
    if isinstance(pub, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "ES256"
    raise ValueError("the JWT public key must be RSA (RS256) or EC P-256 (ES256)")


class Authenticator:
    """Verifies tokens against one pinned algorithm."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config

    def authenticate(self, token: str | None) -> Principal:
        """Verify ``token`` and build the principal.

        Raises:
            AuthError: 401 for a missing/invalid/expired token, 403 for a valid token
                that may not use this router.
        """
        if not token:
            raise AuthError(401, "missing bearer token")
        cfg = self.config
        claims = decode_token(
            token,
            cfg.key,
            [cfg.algorithm],
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway_s=cfg.leeway_s,
        )
        return principal_from_claims(claims, cfg.allowed_tenants)


class TokenVerifier(Protocol):
    """What the handshake asks: a static key (:class:`Authenticator`) or a key set
    (:class:`atp_proto.router.jwks.JwksAuthenticator`, which may fetch keys)."""

    def authenticate(self, token: str | None) -> Principal: ...


async def authenticate(verifier: TokenVerifier, token: str | None) -> Principal:
    """``verifier.authenticate_async`` when it has one (it may fetch keys), else
    ``authenticate``.

    Raises:
        AuthError: as :meth:`Authenticator.authenticate`.
    """
    averify = getattr(verifier, "authenticate_async", None)
    if averify is not None:
        principal: Principal = await averify(token)
        return principal
    return verifier.authenticate(token)


def decode_token(
    token: str,
    key: Any,
    algorithms: list[str],
    *,
    audience: str | None,
    issuer: str | None,
    leeway_s: float,
) -> dict[str, Any]:
    """The verified claims of ``token`` (``exp`` and ``sub`` required; ATP-SEC-002/003).

    Raises:
        AuthError: 401 naming what is wrong (never the token).
    """
    options = {"require": ["exp", "sub"], "verify_aud": audience is not None}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            leeway=leeway_s,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "token expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthError(401, "token not yet valid (nbf)") from None
    except jwt.InvalidAudienceError:
        raise AuthError(401, "token audience mismatch") from None
    except jwt.InvalidIssuerError:
        raise AuthError(401, "token issuer mismatch") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(
            401, f"token algorithm not accepted (only {', '.join(algorithms)})"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(401, f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError(401, "invalid token: the signature does not verify") from None
    except jwt.DecodeError:
        raise AuthError(401, "invalid token: not a well-formed JWT") from None
    except jwt.PyJWTError as exc:  # other claim checks: PyJWT's one-line reason
        raise AuthError(401, f"invalid token: {exc}") from None
    return claims


def principal_from_claims(
    claims: Mapping[str, Any], allowed_tenants: frozenset[str] | None = None
) -> Principal:
    tenant = claims.get("tenant", "default")
    if not isinstance(tenant, str) or not tenant:
        raise AuthError(401, "the tenant claim must be a string")
    if allowed_tenants is not None and tenant not in allowed_tenants:
        raise AuthError(403, f"tenant {tenant!r} may not use this router")
    max_qos = claims.get("max_qos", "gold")
    lanes = {q.label: q for q in QoS if q is not QoS.UNSPECIFIED}
    if max_qos not in lanes:
        raise AuthError(401, "max_qos claim must be gold, silver or bronze")
    task_types = claims.get("task_types")
    if task_types is not None and (
        not isinstance(task_types, list) or not all(isinstance(t, str) for t in task_types)
    ):
        raise AuthError(401, "task_types claim must be a list of strings")
    return Principal(
        subject=str(claims.get("sub", "")),
        tenant=tenant,
        max_qos=lanes[max_qos],
        task_types=frozenset(task_types) if task_types is not None else None,
        claims=dict(claims),
    )


def extract_token(
    target: str,
    headers: Sequence[tuple[bytes, bytes]] | Mapping[str, str],
    subprotocols: Sequence[str],
) -> tuple[str | None, str | None]:
    """Find the bearer token of a WebSocket handshake.

    Returns ``(token, subprotocol_to_echo)``: when the token came as a ``bearer.<token>``
    subprotocol, the server must select a subprotocol the client offered, so we echo
    ``atp.v1`` if offered, else the bearer one.
    """
    items: Iterable[tuple[str, str]]
    if isinstance(headers, Mapping):
        items = headers.items()
    else:
        items = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
    for name, value in items:
        if name.lower() == "authorization":
            scheme, _, cred = value.partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                return cred.strip(), _atp_subprotocol(subprotocols)
    query = parse_qs(urlsplit(target).query)
    if query.get("access_token"):
        return query["access_token"][0], _atp_subprotocol(subprotocols)
    for proto in subprotocols:
        if proto.startswith(SUBPROTOCOL_PREFIX) and len(proto) > len(SUBPROTOCOL_PREFIX):
            chosen = ATP_SUBPROTOCOL if ATP_SUBPROTOCOL in subprotocols else proto
            return proto[len(SUBPROTOCOL_PREFIX) :], chosen
    return None, _atp_subprotocol(subprotocols)


def _atp_subprotocol(subprotocols: Sequence[str]) -> str | None:
    return ATP_SUBPROTOCOL if ATP_SUBPROTOCOL in subprotocols else None


def issue_token(
    key: str | bytes,
    *,
    algorithm: str = "HS256",
    subject: str = "local-user",
    tenant: str = "local",
    max_qos: str = "gold",
    task_types: Sequence[str] | None = None,
    ttl_s: int = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    not_before_s: int = 0,
) -> str:
    """Mint a token (``atp token issue``; tests)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "tenant": tenant,
        "max_qos": max_qos,
        "iat": now,
        "exp": now + ttl_s,
    }
    if not_before_s:
        claims["nbf"] = now + not_before_s
    if task_types:
        claims["task_types"] = list(task_types)
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm)
