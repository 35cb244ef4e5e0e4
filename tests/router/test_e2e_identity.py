"""End to end: identity from a JWK Set and OIDC discovery (ATP-SEC-002/003/007/019).

A loopback identity provider (:mod:`._http_server`: discovery document + JWKS endpoint,
real sockets) with real RSA and EC P-256 keys; a real router on loopback verifies the
handshakes' tokens against it: key rotation (a new ``kid`` makes one refetch, a retired
key is refused), a bounded refetch under forged kids, and every kind of bad token.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
import trio
import trio_websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atp_proto.client import connect
from atp_proto.router import Router, RouterConfig
from atp_proto.router.auth import AuthError
from atp_proto.router.jwks import keys_from_jwks

from ._helpers_e2e import atp
from ._http_server import LoopbackHttp
from .conftest import ws_url

AUD = "atp-router"


def _jwk(private_key: Any, kid: str) -> dict[str, Any]:
    pub = private_key.public_key()
    if isinstance(private_key, rsa.RSAPrivateKey):
        doc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pub))
    else:
        doc = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(pub))
    return {**doc, "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "k1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "k2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "e1": ec.generate_private_key(ec.SECP256R1()),
        "forger": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


class Idp:
    """Discovery + JWKS on loopback; ``published`` are the kids in the set."""

    def __init__(self, keys: dict[str, Any], published: list[str]) -> None:
        self.keys = keys
        self.published = published
        self.http = LoopbackHttp(self.handle)
        self.issuer_override: str | None = None

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/.well-known/openid-configuration":
            return 200, {
                "issuer": self.issuer_override or self.http.url,
                "jwks_uri": self.http.url + "/jwks.json",
            }
        if path == "/jwks.json":
            return 200, {"keys": [_jwk(self.keys[k], k) for k in self.published]}
        return 404, {}

    def jwks_fetches(self) -> int:
        return sum(1 for _, p in self.http.requests if p == "/jwks.json")

    def token(self, kid: str | None, *, alg: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "sub": "alice",
            "tenant": "acme",
            "aud": AUD,
            "iss": self.http.url,
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        key = self.keys[kid if kid in self.keys else "k1"]
        alg = alg or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(body, key, algorithm=alg, headers=headers)


async def _idp(nursery: trio.Nursery, keys: dict[str, Any], published: list[str]) -> Idp:
    idp = Idp(keys, published)
    await nursery.start(idp.http.serve)
    return idp


async def _router(nursery: trio.Nursery, **fields: Any) -> Router:
    cfg = RouterConfig(
        ws_port=0, metrics_port=None, auth=True, adapters={"echo": "builtin:echo"}, **fields
    )
    router = Router(cfg.validate())
    await nursery.start(router.serve)
    return router


async def _status(router: Router, token: str) -> tuple[int, str]:
    try:
        async with connect(ws_url(router), token=token) as client:
            final = await client.ask("hello")
            assert final.content["answer"] == "hello"
            return 200, ""
    except Exception:
        pass
    with pytest.raises(trio_websocket.ConnectionRejected) as err:
        async with trio_websocket.open_websocket_url(
            ws_url(router), extra_headers=[("Authorization", f"Bearer {token}")]
        ):
            pass
    return err.value.status_code, (err.value.body or b"").decode()


async def test_oidc_discovery_accepts_rsa_and_ec_and_follows_key_rotation(
    nursery: trio.Nursery, keys: dict[str, Any]
) -> None:
    """[ATP-SEC-019, ATP-SEC-020] The router finds the keys through the issuer's discovery
    document, accepts RS256 and ES256 tokens of the set, fetches the set again once for
    a new kid (rotation) and refuses a token of a key the set no longer holds."""
    idp = await _idp(nursery, keys, ["k1", "e1"])
    router = await _router(nursery, oidc_issuer=idp.http.url, jwt_audience=AUD, jwks_refetch_s=0.2)
    assert await _status(router, idp.token("k1")) == (200, "")
    assert await _status(router, idp.token("e1")) == (200, "")
    assert idp.jwks_fetches() == 1  # cached: one fetch for both
    idp.published = ["k2"]  # rotation at the provider
    await trio.sleep(0.3)
    assert await _status(router, idp.token("k2")) == (200, "")
    assert idp.jwks_fetches() == 2
    await trio.sleep(0.3)
    status, body = await _status(router, idp.token("k1"))
    assert status == 401 and "kid" in body


async def test_unknown_kids_refetch_at_most_once_per_interval(
    nursery: trio.Nursery, keys: dict[str, Any]
) -> None:
    """[ATP-SEC-020] Forged kids cannot make the router hammer its identity provider:
    one refetch per interval, however many tokens name unknown keys."""
    idp = await _idp(nursery, keys, ["k1"])
    router = await _router(nursery, oidc_issuer=idp.http.url, jwt_audience=AUD, jwks_refetch_s=30)
    assert await _status(router, idp.token("k1")) == (200, "")
    for i in range(8):
        status, body = await _status(router, idp.token(f"nope-{i}"))
        assert status == 401 and "kid" in body
    assert idp.jwks_fetches() <= 2


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handmade(header: dict[str, Any], claims: dict[str, Any], sig: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(sig)}"


async def test_bad_tokens_are_refused(nursery: trio.Nursery, keys: dict[str, Any]) -> None:
    """[ATP-SEC-002, ATP-SEC-003, ATP-SEC-007, ATP-SEC-019] Against the key set: a token
    signed by another key under a known kid, ``alg: none``, HS256 signed with the public
    key (key confusion), wrong ``aud``, wrong ``iss``, expired, no kid in a set of two:
    all 401 before the upgrade."""
    import hashlib
    import hmac

    idp = await _idp(nursery, keys, ["k1", "e1"])
    router = await _router(nursery, oidc_issuer=idp.http.url, jwt_audience=AUD)
    now = int(time.time())
    claims = {"sub": "m", "tenant": "acme", "aud": AUD, "iss": idp.http.url, "exp": now + 300}
    forged = jwt.encode(claims, keys["forger"], algorithm="RS256", headers={"kid": "k1"})
    pem = (
        keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    signing_input = _handmade(header, claims).rsplit(".", 1)[0]
    confused = (
        signing_input + "." + _b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    )
    cases = {
        "forged": (forged, "invalid"),
        "none": (_handmade({"alg": "none", "kid": "k1"}, claims), "algorithm"),
        "confusion": (confused, "algorithm"),
        "audience": (idp.token("k1", aud="someone-else"), "audience"),
        "issuer": (idp.token("k1", iss="http://evil.example"), "issuer"),
        "expired": (idp.token("k1", exp=now - 3600), "expired"),
        "no-kid": (idp.token(None), "kid"),
    }
    for name, (token, word) in cases.items():
        status, body = await _status(router, token)
        assert (status, word in body) == (401, True), (name, status, body)


async def test_discovery_with_a_wrong_issuer_and_an_unreachable_provider(
    nursery: trio.Nursery, keys: dict[str, Any]
) -> None:
    """[ATP-SEC-019] A discovery document naming another issuer is not trusted, and an
    unreachable provider refuses handshakes with 503 (never lets a token in)."""
    idp = await _idp(nursery, keys, ["k1"])
    idp.issuer_override = "http://evil.example"
    router = await _router(nursery, oidc_issuer=idp.http.url, jwt_audience=AUD)
    assert (await _status(router, idp.token("k1")))[0] == 503
    for _ in range(5):  # a provider in trouble is not asked again at once
        assert (await _status(router, idp.token("k1")))[0] == 503
    assert len(idp.http.requests) == 1
    assert router.authenticator is not None
    with pytest.raises(AuthError) as err:  # nothing fetched: the sync entry cannot verify
        router.authenticator.authenticate(idp.token("k1"))
    assert err.value.status == 503
    gone = await _router(nursery, jwks="http://127.0.0.1:9/jwks.json")
    assert (await _status(gone, idp.token("k1")))[0] == 503


async def test_jwks_from_a_file(nursery: trio.Nursery, keys: dict[str, Any], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """[ATP-SEC-019] ``--jwks FILE``: read at start (a set with no usable key refuses to
    start); its keys verify tokens."""
    idp = Idp(keys, ["k1"])
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(keys["k1"], "k1")]}))
    router = await _router(nursery, jwks=str(path))
    now = int(time.time())
    token = jwt.encode(
        {"sub": "a", "tenant": "t", "exp": now + 60},
        keys["k1"],
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert await _status(router, token) == (200, "")
    assert router.authenticator is not None  # no I/O needed: the sync entry works too
    assert router.authenticator.authenticate(token).tenant == "t"
    del idp
    bad = tmp_path / "oct.json"
    bad.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}))
    with pytest.raises(ValueError, match="no usable"):
        Router(RouterConfig(auth=True, jwks=str(bad)).validate())


def test_key_set_keeps_only_pinned_asymmetric_keys(keys: dict[str, Any]) -> None:
    """[ATP-SEC-019] HMAC (oct) keys, keys whose ``alg`` disagrees with their type, other
    curves and encryption keys are dropped; RSA -> RS256, P-256 -> ES256."""
    p384 = ec.generate_private_key(ec.SECP384R1())
    doc = {
        "keys": [
            _jwk(keys["k1"], "r"),
            _jwk(keys["e1"], "e"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {**_jwk(keys["k2"], "mismatch"), "alg": "HS256"},
            {**_jwk(keys["k2"], "enc"), "use": "enc"},
            _jwk(p384, "p384"),
            "junk",
        ]
    }
    got = keys_from_jwks(doc)
    assert {k: v.algorithm_name for k, v in got.items()} == {"r": "RS256", "e": "ES256"}
    with pytest.raises(ValueError, match="not a JWK Set"):
        keys_from_jwks({"nokeys": 1})


def test_oidc_needs_an_audience() -> None:
    """[ATP-SEC-019] ``atp serve --oidc-issuer`` without ``--jwt-audience`` is bad usage."""
    r = atp("serve", "--oidc-issuer", "https://id.example", "--ws", "127.0.0.1:0")
    assert r.returncode == 2
    assert "--jwt-audience" in r.stderr and "Traceback" not in r.stderr


async def test_quic_sessions_verify_with_oidc_keys_before_any_websocket_session(
    nursery: trio.Nursery, keys: dict[str, Any], quic_cert: Any
) -> None:
    """[ATP-QUIC-008, ATP-SEC-019] QUIC authenticates from the first CAPABILITIES without
    awaiting (no key fetch there): the router fetches the key set at start and keeps it
    fresh, so the very first session of a router is a QUIC one and still gets in; a
    rotated key is learned by the refresher, a forged token is still refused."""
    idp = await _idp(nursery, keys, ["k1"])
    router = await _router(
        nursery,
        oidc_issuer=idp.http.url,
        jwt_audience=AUD,
        jwks_ttl_s=0.5,
        jwks_refetch_s=0.2,
        quic_port=0,
        cert_file=quic_cert.cert,
        key_file=quic_cert.key,
    )
    url = f"quic://127.0.0.1:{router.quic_port}"
    with trio.fail_after(10):
        async with connect(url, token=idp.token("k1"), ca_file=quic_cert.cert) as client:
            final = await client.ask("hello")
    assert final.content["answer"] == "hello"
    idp.published = ["k2"]  # rotation: k1 retired, k2 new
    with trio.fail_after(10):
        while True:  # the refresher learns k2 within a few ttl periods
            try:
                async with connect(url, token=idp.token("k2"), ca_file=quic_cert.cert) as c:
                    assert (await c.ask("again")).content["answer"] == "again"
                break
            except Exception:
                await trio.sleep(0.2)
    forged = jwt.encode(
        {
            "sub": "mallory",
            "tenant": "acme",
            "aud": AUD,
            "iss": idp.http.url,
            "exp": int(time.time()) + 60,
        },
        keys["forger"],
        algorithm="RS256",
        headers={"kid": "k2"},
    )
    with trio.fail_after(10), pytest.raises(Exception) as refused:
        async with connect(url, token=forged, ca_file=quic_cert.cert) as c:
            await c.ask("no")
    assert "ESEC" in repr(refused.value) or "signature" in str(refused.value).lower()
