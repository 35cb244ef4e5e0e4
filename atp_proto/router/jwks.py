"""Identity beyond a static key: a JWK Set (file or URL) and OIDC discovery.

``atp serve --jwks FILE|URL`` verifies tokens with the keys of a JWK Set (RFC 7517);
``--oidc-issuer URL`` finds that set through OpenID Connect discovery
(``URL/.well-known/openid-configuration``: its ``issuer`` must be URL, its ``jwks_uri``
gives the keys) and requires the token's ``iss`` to be the issuer and its ``aud`` the
configured audience (``--jwt-audience``: required with OIDC, where one issuer serves
many clients).

Algorithms stay pinned (ATP-SEC-002, ATP-SEC-007, ATP-SEC-019): a key's algorithm
comes from the key set (RSA -> RS256, EC P-256 -> ES256, its ``alg`` when given, which
must agree), never from the token's header; symmetric (``oct``) keys and anything else
are not loaded, so neither ``none`` nor HS256 with a public key can verify. The token's
``kid`` only picks a key *inside* the set.

The set is cached for ``ttl_s`` (refetched when older, the stale set kept when a
refetch fails). A ``kid`` the set does not hold triggers one refetch (key rotation), at
most one per ``min_refetch_s``, so a stream of forged kids cannot make the router hammer
its identity provider. Fetches run in a worker thread (stdlib urllib) with a timeout;
answers are bounded in size.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import trio
from jwt import PyJWK

from ._fetch import fetch_limiter, read_body
from .auth import AuthError, Principal, decode_token, principal_from_claims

__all__ = ["JWKS_ALGORITHMS", "JwksAuthenticator", "JwksSource", "OidcDiscovery", "keys_from_jwks"]

log = logging.getLogger("atp.router")

#: The algorithms a key set may give keys for (asymmetric only).
JWKS_ALGORITHMS = ("RS256", "ES256")
MAX_DOC_BYTES = 1 << 20
MAX_KEYS = 64


def _is_url(location: str) -> bool:
    return urlsplit(location).scheme in ("http", "https")


def _fetch_json(location: str, timeout_s: float) -> Any:
    """GET a JSON document from a URL, or read it from a file (in a worker thread)."""
    if _is_url(location):
        req = urllib.request.Request(location, headers={"Accept": "application/json"})
        deadline = time.monotonic() + timeout_s
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = read_body(resp, MAX_DOC_BYTES, deadline)
    else:
        raw = Path(location).read_bytes()[: MAX_DOC_BYTES + 1]
    if len(raw) > MAX_DOC_BYTES:
        raise ValueError(f"larger than {MAX_DOC_BYTES} bytes")
    try:
        return json.loads(raw)
    except RecursionError:  # "[[[[...": no JWK Set, no discovery document
        raise ValueError("JSON nested too deep") from None


def _fetch_problem(exc: BaseException) -> str:
    """Why a fetch failed, for the log: urllib's ``<urlopen error [Errno -2] Name or service
    not known>`` as ``name or service not known``, an HTTP error as ``HTTP 404 Not Found``."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        text = getattr(reason, "strerror", None) or str(reason)
        return text[:1].lower() + text[1:]
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _algorithm(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a JWK may verify, from its type; None: not a key we load."""
    kty = jwk.get("kty")
    if kty == "RSA":
        alg = "RS256"
    elif kty == "EC" and jwk.get("crv") == "P-256":
        alg = "ES256"
    else:
        return None  # oct (HMAC), OKP, other curves: never
    if jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
        return None
    return alg


def keys_from_jwks(doc: Any, algorithms: Sequence[str] = JWKS_ALGORITHMS) -> dict[str, PyJWK]:
    """``kid -> key`` of the usable keys of a JWK Set (a key without ``kid`` is ``""``).

    Raises:
        ValueError: not a JWK Set, or no usable key in it.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK Set (no "keys" list)')
    out: dict[str, PyJWK] = {}
    other: set[str] = set()  #: usable algorithms of keys not asked for
    for jwk in doc["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict):
            continue
        alg = _algorithm(jwk)
        if alg is None:
            continue
        if alg not in algorithms:
            other.add(alg)
            continue
        try:
            out[str(jwk.get("kid", ""))] = PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
    if not out:
        held = f" (it holds {'/'.join(sorted(other))} keys)" if other else ""
        raise ValueError(f"no usable {'/'.join(algorithms)} signing key in the JWK Set{held}")
    return out


class JwksSource:
    """A cached JWK Set from a file or URL."""

    def __init__(
        self,
        location: str,
        *,
        ttl_s: float = 300.0,
        min_refetch_s: float = 5.0,
        timeout_s: float = 3.0,
        algorithms: Sequence[str] = JWKS_ALGORITHMS,
    ) -> None:
        self.location = location
        self.ttl_s = ttl_s
        self.min_refetch_s = min_refetch_s
        self.timeout_s = timeout_s
        self.algorithms = tuple(algorithms)
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  #: last successful fetch
        self._tried_at: float | None = None  #: last attempt
        self._lock = trio.Lock()
        #: the fetch's thread (its own limiter: a server that never ends its answer
        #: holds this one thread, not one of the default limiter's: _fetch)
        self._threads = fetch_limiter(1)
        self.fetches = 0

    def load_now(self) -> None:
        """Read the set synchronously (a file at start-up: errors are config errors).

        Raises:
            ValueError: unreadable or no usable key.
        """
        try:
            self._install(
                keys_from_jwks(_fetch_json(self.location, self.timeout_s), self.algorithms)
            )
        except OSError as exc:
            why = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror or exc
            raise ValueError(f"--jwks {self.location}: {str(why).lower()}") from None
        except ValueError as exc:
            raise ValueError(f"--jwks {self.location}: {exc}") from None

    def _install(self, keys: dict[str, PyJWK]) -> None:
        self._keys = keys
        self._fetched_at = self._tried_at = time.monotonic()
        self.fetches += 1

    async def _refresh(self, why: str) -> None:
        started = time.monotonic()
        async with self._lock:
            if self._tried_at is not None and self._tried_at >= started:
                return  # another task refreshed while we waited
            self._tried_at = time.monotonic()
            try:
                with trio.fail_after(self.timeout_s + 0.5):
                    doc = await trio.to_thread.run_sync(
                        _fetch_json,
                        self.location,
                        self.timeout_s,
                        abandon_on_cancel=True,
                        limiter=self._threads,
                    )
                self._install(keys_from_jwks(doc, self.algorithms))
                log.info("JWKS fetched (%s): %d key(s)", why, len(self._keys))
            except (OSError, ValueError, trio.TooSlowError) as exc:
                log.warning(
                    "JWKS fetch (%s) failed, keeping %d key(s): %s",
                    why,
                    len(self._keys),
                    _fetch_problem(exc),
                )

    async def key(self, kid: str | None) -> PyJWK:
        """The key for ``kid`` (refreshing a stale set, refetching once for a new kid).

        Raises:
            AuthError: 503 when no key could ever be fetched, 401 for an unknown kid.
        """
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self.ttl_s
        if stale and (self._tried_at is None or now - self._tried_at >= self.min_refetch_s):
            await self._refresh("expired" if self._fetched_at else "first use")
        if not self._keys:
            raise AuthError(503, "the token keys (JWKS) cannot be fetched; try again later")
        found = self._pick(kid)
        if found is None and (
            self._tried_at is None or time.monotonic() - self._tried_at >= self.min_refetch_s
        ):
            await self._refresh("unknown kid")
            found = self._pick(kid)
        if found is None:
            raise AuthError(401, "token key id (kid) is not in the key set")
        return found

    async def refresh_if_stale(self) -> None:
        """Fetch the set when it is older than ``ttl_s`` (or was never fetched), at most
        once per ``min_refetch_s``."""
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self.ttl_s
        if stale and (self._tried_at is None or now - self._tried_at >= self.min_refetch_s):
            await self._refresh("expired" if self._fetched_at else "first use")

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def cached_key(self, kid: str | None) -> PyJWK | None:
        """The key for ``kid`` in the set fetched last, without fetching."""
        return self._pick(kid)

    def _pick(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            # no kid: only a set of one key is unambiguous
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


class OidcDiscovery:
    """``ISSUER/.well-known/openid-configuration`` -> the issuer's :class:`JwksSource`."""

    def __init__(self, issuer: str, *, timeout_s: float = 3.0, **jwks_options: Any) -> None:
        if not _is_url(issuer):
            raise ValueError(f"--oidc-issuer: expected an http(s) URL, got {issuer!r}")
        self.issuer = issuer
        self.timeout_s = timeout_s
        self._options = {"timeout_s": timeout_s, **jwks_options}
        self.source: JwksSource | None = None
        self._lock = trio.Lock()
        self._threads = fetch_limiter(1)  #: as JwksSource's
        self._failed_at: float | None = None  #: a failed discovery is retried this much later
        self._retry_s = float(jwks_options.get("min_refetch_s", 5.0))

    async def jwks(self) -> JwksSource:
        """The key source (discovered once; a failed discovery is retried at most once
        per ``min_refetch_s``).

        Raises:
            AuthError: 503 when the discovery document cannot be had or is wrong.
        """
        if self.source is not None:
            return self.source
        async with self._lock:
            if self.source is not None:
                return self.source
            if self._failed_at is not None and time.monotonic() - self._failed_at < self._retry_s:
                raise AuthError(503, "the identity provider cannot be reached")
            self._failed_at = time.monotonic()  # cleared when the discovery succeeds
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                with trio.fail_after(self.timeout_s + 0.5):
                    doc = await trio.to_thread.run_sync(
                        _fetch_json,
                        url,
                        self.timeout_s,
                        abandon_on_cancel=True,
                        limiter=self._threads,
                    )
            except (OSError, ValueError, trio.TooSlowError) as exc:
                log.warning("OIDC discovery at %s failed: %s", url, _fetch_problem(exc))
                raise AuthError(503, "the identity provider cannot be reached") from None
            if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
                log.warning("OIDC discovery at %s: issuer is not %s", url, self.issuer)
                raise AuthError(503, "the identity provider's discovery document is wrong")
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or not _is_url(uri):
                raise AuthError(503, "the identity provider's discovery document has no jwks_uri")
            self.source = JwksSource(uri, **self._options)
            self._failed_at = None
            return self.source


class JwksAuthenticator:
    """Verifies tokens with a key set (``--jwks``) or an OIDC issuer's (``--oidc-issuer``)."""

    def __init__(
        self,
        keys: JwksSource | OidcDiscovery,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
        allowed_tenants: Iterable[str] | None = None,
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = keys.issuer if isinstance(keys, OidcDiscovery) else issuer
        self.leeway_s = leeway_s
        self.allowed_tenants = frozenset(allowed_tenants) if allowed_tenants else None

    def authenticate(self, token: str | None) -> Principal:
        """Verify ``token`` with the keys already fetched (no I/O: for a caller that
        cannot await; :meth:`authenticate_async` fetches, refreshes and rotates).

        Raises:
            AuthError: as :meth:`authenticate_async`; 503 when no key was fetched yet.
        """
        kid = self._kid(token)
        source = self.keys.source if isinstance(self.keys, OidcDiscovery) else self.keys
        key = source.cached_key(kid) if source is not None else None
        if key is None:
            if source is None or not source.has_keys:
                raise AuthError(503, "the token keys (JWKS) are not fetched yet; try again")
            raise AuthError(401, "token key id (kid) is not in the key set")
        return self._verify(token or "", key)

    async def keep_fresh(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Fetch the key set now and refresh it as it goes stale, for ever (a task of the
        router; started once the first fetch was tried, so that a router announces
        itself with its keys). The synchronous :meth:`authenticate` — what a QUIC
        session's first CAPABILITIES is checked with, as it cannot await — then finds the
        keys fetched, and a rotated key within about one ``ttl_s``. Never raises: a
        failed fetch keeps the keys it had (and is logged by the source)."""
        started = False
        while True:
            try:
                source = (
                    await self.keys.jwks() if isinstance(self.keys, OidcDiscovery) else self.keys
                )
                await source.refresh_if_stale()
                period = source.ttl_s
            except AuthError:
                period = self.keys.min_refetch_s if isinstance(self.keys, JwksSource) else 1.0
            if not started:
                task_status.started()
                started = True
            await trio.sleep(max(0.1, min(period, 60.0)))

    async def authenticate_async(self, token: str | None) -> Principal:
        """Verify ``token`` against the set's key for its ``kid``.

        Raises:
            AuthError: 401 for a missing, malformed, unknown-kid, badly signed or expired
                token; 403 for a tenant not allowed; 503 when no key can be fetched.
        """
        kid = self._kid(token)
        source = await self.keys.jwks() if isinstance(self.keys, OidcDiscovery) else self.keys
        key = await source.key(kid)
        return self._verify(token or "", key)

    @staticmethod
    def _kid(token: str | None) -> str | None:
        if not token:
            raise AuthError(401, "missing bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid token: not a well-formed JWT") from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError(401, "token key id (kid) must be a string")
        return kid

    def _verify(self, token: str, key: PyJWK) -> Principal:
        claims = decode_token(
            token,
            key.key,
            [key.algorithm_name],  # from the key set, never from the token
            audience=self.audience,
            issuer=self.issuer,
            leeway_s=self.leeway_s,
        )
        return principal_from_claims(claims, self.allowed_tenants)
