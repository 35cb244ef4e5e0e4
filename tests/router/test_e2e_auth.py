"""End to end: JWT authentication of the WebSocket handshake (ATP-SEC, ATP-WS).

Real router on loopback, real keys (HS256 secret, RS256 and ES256 key pairs made with
cryptography), tokens presented the three ways a client can: the Authorization header,
the ``access_token`` query parameter and a ``bearer.<token>`` subprotocol. Every refusal
happens before the upgrade, as an HTTP status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import trio
import trio_websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atp_proto.client import connect
from atp_proto.router import issue_token
from atp_proto.router.logs import JsonFormatter, TextFormatter

from ._helpers_e2e import atp, http_get, metric_value
from .conftest import ws_url

SYN = {
    "stream_id": "st1",
    "msg_seq": 1,
    "flags": ["SYN"],
    "qos": "gold",
    "meta": {"task_type": "qa"},
    "payload": {"type": "agent.task", "content": {"prompt": "hello"}},
}


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    private_pem: str
    public_pem: str
    public_file: Path
    private_file: Path


def _pems(private_key) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    priv = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    pub = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return priv, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    d = tmp_path_factory.mktemp("jwt-keys")
    out = {}
    for alg, key in (
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("RS256-other", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        priv, pub = _pems(key)
        (d / f"{alg}.pub.pem").write_text(pub)
        (d / f"{alg}.key.pem").write_text(priv)
        out[alg] = KeyPair(alg, priv, pub, d / f"{alg}.pub.pem", d / f"{alg}.key.pem")
    return out


async def _text_roundtrip(ws: trio_websocket.WebSocketConnection) -> dict:
    await ws.send_message(json.dumps(SYN))
    while True:
        reply = json.loads(await ws.get_message())
        if "FIN" in reply.get("flags", []) or reply.get("type") == "ERROR":
            return reply


async def _refusal(url: str, **kwargs) -> trio_websocket.ConnectionRejected:  # type: ignore[no-untyped-def]
    with pytest.raises(trio_websocket.ConnectionRejected) as err:
        async with trio_websocket.open_websocket_url(url, **kwargs):
            pytest.fail("the handshake should have been refused")
    return err.value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handmade_token(header: dict, claims: dict, hmac_key: bytes | None) -> str:
    """A JWT built by hand (PyJWT refuses to make the malicious ones)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = (
        _b64(hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest())
        if hmac_key is not None
        else ""
    )
    return f"{signing_input}.{sig}"


def _claims(**extra: object) -> dict:
    now = int(time.time())
    return {"sub": "mallory", "tenant": "acme", "iat": now, "exp": now + 600, **extra}


# ---------------------------------------------------------------------- accepted


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
async def test_each_algorithm_via_authorization_header(
    start_router, jwt_env, keys, alg: str
) -> None:
    """[ATP-WS-006, ATP-SEC-001, ATP-SEC-002] ATP-SEC: HS256 (secret from ATP_JWT_KEY), RS256 and ES256 (PEM public key file)
    tokens in ``Authorization: Bearer`` open a session whose principal is the token's."""
    if alg == "HS256":
        router = await start_router(auth=True)
        token = issue_token(jwt_env.encode(), tenant="acme", subject="alice")
    else:
        kp = keys[alg]
        router = await start_router(auth=True, jwt_key_file=str(kp.public_file))
        token = issue_token(kp.private_pem, algorithm=alg, tenant="acme", subject="alice")
    assert router.authenticator is not None
    assert router.authenticator.config.algorithm == alg
    async with connect(ws_url(router), token=token) as client:
        final = await client.ask("hello")
        (session,) = router.sessions.values()
        assert session.principal.tenant == "acme"
        assert session.principal.subject == "alice"
    assert final.content["ok"]


async def test_token_in_query_parameter(start_router, keys) -> None:
    """[ATP-WS-006, ATP-WS-003] ATP-SEC / ATP-WS: ``?access_token=`` (browsers cannot set headers); the query does
    not disturb the path match."""
    kp = keys["ES256"]
    router = await start_router(auth=True, jwt_key_file=str(kp.public_file))
    token = issue_token(kp.private_pem, algorithm="ES256")
    async with trio_websocket.open_websocket_url(ws_url(router, f"?access_token={token}")) as ws:
        assert ws.subprotocol is None
        final = await _text_roundtrip(ws)
    assert final["flags"] == ["FIN"]


async def test_token_in_bearer_subprotocol(start_router, keys) -> None:
    """[ATP-WS-006, ATP-WS-007] ATP-SEC / ATP-WS: a ``bearer.<token>`` subprotocol authenticates; the router
    selects ``atp.v1`` when offered (so the token is not echoed), otherwise the bearer
    protocol itself (a server must select one of the offered protocols)."""
    kp = keys["RS256"]
    router = await start_router(auth=True, jwt_key_file=str(kp.public_file))
    token = issue_token(kp.private_pem, algorithm="RS256")
    async with trio_websocket.open_websocket_url(
        ws_url(router), subprotocols=["atp.v1", f"bearer.{token}"]
    ) as ws:
        assert ws.subprotocol == "atp.v1"
        assert (await _text_roundtrip(ws))["flags"] == ["FIN"]
    async with trio_websocket.open_websocket_url(
        ws_url(router), subprotocols=[f"bearer.{token}"]
    ) as ws:
        assert ws.subprotocol == f"bearer.{token}"
        assert (await _text_roundtrip(ws))["flags"] == ["FIN"]


# ---------------------------------------------------------------------- refused


REFUSALS = [
    # (case, expected status, a word of the response body)
    ("missing", 401, "missing"),
    ("bad-signature", 401, "invalid"),
    ("expired", 401, "expired"),
    ("not-before", 401, "nbf"),
    ("wrong-audience", 401, "audience"),
    ("wrong-issuer", 401, "issuer"),
    ("alg-none", 401, "algorithm"),
    ("hs256-key-confusion", 401, "algorithm"),
    ("garbage", 401, "invalid"),
    ("tenant-not-allowed", 403, "tenant"),
]


@pytest.mark.parametrize(("case", "status", "word"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refused_before_upgrade(
    start_router, keys, case: str, status: int, word: str
) -> None:
    """[ATP-WS-006, ATP-SEC-001, ATP-SEC-002, ATP-SEC-003] ATP-SEC: every bad token is refused with an HTTP status before the upgrade: 401
    (with ``WWW-Authenticate: Bearer``) for missing / badly signed / expired / immature /
    wrong aud or iss / ``alg: none`` / an HS256 token signed with the RS256 router's public
    key (key confusion); 403 for a valid token whose tenant is not allowed. No session
    is created."""
    kp = keys["RS256"]
    router = await start_router(
        auth=True,
        jwt_key_file=str(kp.public_file),
        jwt_audience="atp-router",
        jwt_issuer="https://issuer.example",
        allowed_tenants=("acme",),
    )
    good = {"audience": "atp-router", "issuer": "https://issuer.example", "tenant": "acme"}

    def sign(**overrides: object) -> str:
        return issue_token(kp.private_pem, algorithm="RS256", **{**good, **overrides})  # type: ignore[arg-type]

    token: str | None
    if case == "missing":
        token = None
    elif case == "bad-signature":
        token = issue_token(keys["RS256-other"].private_pem, algorithm="RS256", **good)  # type: ignore[arg-type]
    elif case == "expired":
        token = sign(ttl_s=-300)  # well past the 30 s leeway
    elif case == "not-before":
        token = sign(not_before_s=600)
    elif case == "wrong-audience":
        token = sign(audience="someone-else")
    elif case == "wrong-issuer":
        token = sign(issuer="https://evil.example")
    elif case == "alg-none":
        token = _handmade_token(
            {"alg": "none", "typ": "JWT"},
            _claims(aud="atp-router", iss="https://issuer.example"),
            None,
        )
    elif case == "hs256-key-confusion":
        token = _handmade_token(
            {"alg": "HS256", "typ": "JWT"},
            _claims(aud="atp-router", iss="https://issuer.example"),
            kp.public_pem.encode(),
        )
    elif case == "garbage":
        token = "not.a.jwt"
    else:
        token = sign(tenant="globex")
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else None
    rejected = await _refusal(ws_url(router), extra_headers=headers)
    assert rejected.status_code == status
    body = (rejected.body or b"").decode()
    assert word in body.lower(), body
    hdrs = {k.lower(): v for k, v in rejected.headers or ()}
    if status == 401:
        assert hdrs.get(b"www-authenticate", b"").startswith(b"Bearer")
    assert not router.sessions
    assert router.metrics.handshakes_refused.get(str(status)) == 1
    assert router.metrics.sessions_total.get() == 0


async def test_hs256_router_refuses_rs256_token(start_router, jwt_env, keys) -> None:
    """[ATP-SEC-002] ATP-SEC: the algorithm is pinned the other way round too."""
    router = await start_router(auth=True)
    token = issue_token(keys["RS256"].private_pem, algorithm="RS256")
    rejected = await _refusal(
        ws_url(router), extra_headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    assert rejected.status_code == 401


# ---------------------------------------------------------------------- claims


async def test_max_qos_claim_caps_the_lane(start_router, jwt_env) -> None:
    """[ATP-SEC-004] ATP-SEC / ATP-QOS: a token with ``max_qos: bronze`` asking for gold is served in
    the bronze lane (observed in atp_streams_total on /metrics)."""
    router = await start_router(auth=True)
    capped = issue_token(jwt_env.encode(), max_qos="bronze")
    full = issue_token(jwt_env.encode(), max_qos="gold")
    async with connect(ws_url(router), token=capped) as client:
        await client.ask("hello", qos="gold")
        await client.ask("hello", qos="silver")
    async with connect(ws_url(router), token=full) as client:
        await client.ask("hello", qos="gold")
    assert router.metrics_port is not None
    status, text = await http_get(router.metrics_port, "/metrics")
    assert status == 200
    assert metric_value(text, "atp_streams_total", lane="bronze", outcome="ok") == 2
    assert metric_value(text, "atp_streams_total", lane="gold", outcome="ok") == 1
    assert metric_value(text, "atp_streams_total", lane="silver", outcome="ok") is None


# ---------------------------------------------------------------------- CLI


@pytest.mark.parametrize("alg", ["HS256", "ES256", "RS256"])
async def test_cli_token_issue_verifies(start_router, jwt_env, keys, alg: str) -> None:
    """[ATP-SEC-002, ATP-SEC-003] ``atp token issue`` prints one token that verifies with the matching key, carries
    the requested claims, and opens a session on a router pinned to that algorithm."""
    args = ["token", "issue", "--tenant", "acme", "--max-qos", "silver", "--sub", "cli"]
    args += ["--task-type", "qa", "--aud", "atp-router", "--iss", "me", "--ttl", "120"]
    if alg == "HS256":
        env = {"ATP_JWT_KEY": jwt_env}
        verify_key: str | bytes = jwt_env.encode()
        router = await start_router(auth=True, jwt_audience="atp-router", jwt_issuer="me")
    else:
        kp = keys[alg]
        args += ["--key-file", str(kp.private_file), "--algorithm", alg]
        env = {}
        verify_key = kp.public_pem
        router = await start_router(
            auth=True, jwt_key_file=str(kp.public_file), jwt_audience="atp-router", jwt_issuer="me"
        )
    done = await trio.to_thread.run_sync(lambda: atp(*args, env=env))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    token = lines[0]
    claims = jwt.decode(token, verify_key, algorithms=[alg], audience="atp-router", issuer="me")
    assert claims["sub"] == "cli" and claims["tenant"] == "acme"
    assert claims["max_qos"] == "silver" and claims["task_types"] == ["qa"]
    assert 100 <= claims["exp"] - claims["iat"] <= 120
    assert jwt.get_unverified_header(token)["alg"] == alg
    async with connect(ws_url(router), token=token) as client:
        assert (await client.ask("hi", task_type="qa")).content["ok"]


async def test_cli_token_issue_without_key_is_usage_error() -> None:
    """[ATP-SEC-006] ``atp token issue`` with no key exits 2 with one line saying so."""
    done = await trio.to_thread.run_sync(lambda: atp("token", "issue"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "key" in done.stderr


# ---------------------------------------------------------------------- logs


async def test_tokens_never_logged(start_router, keys, caplog: pytest.LogCaptureFixture) -> None:
    """[ATP-SEC-005, ATP-ERR-006] ATP-SEC: neither a refused nor an accepted token appears in the router's logs, in
    any of the three places a token can come from, formatted as text or as JSON (extra
    fields included)."""
    caplog.set_level(logging.DEBUG, logger="atp")
    kp = keys["ES256"]
    router = await start_router(auth=True, jwt_key_file=str(kp.public_file), jwt_audience="aud")
    good = issue_token(kp.private_pem, algorithm="ES256", audience="aud")
    bad = issue_token(kp.private_pem, algorithm="ES256", audience="other")
    tokens = [good, bad]
    # refused: header, query, subprotocol
    await _refusal(ws_url(router), extra_headers=[(b"authorization", f"Bearer {bad}".encode())])
    await _refusal(ws_url(router, f"?access_token={bad}"))
    await _refusal(ws_url(router), subprotocols=[f"bearer.{bad}"])
    # accepted: header, query, subprotocol
    async with connect(ws_url(router), token=good) as client:
        await client.ask("hello")
    async with trio_websocket.open_websocket_url(ws_url(router, f"?access_token={good}")) as ws:
        await _text_roundtrip(ws)
    async with trio_websocket.open_websocket_url(
        ws_url(router), subprotocols=["atp.v1", f"bearer.{good}"]
    ) as ws:
        await _text_roundtrip(ws)
    with trio.move_on_after(2):
        while router.sessions:
            await trio.sleep(0.02)
    records = [r for r in caplog.records if r.name.startswith("atp")]
    assert any(r.getMessage() == "handshake refused" for r in records)
    assert any(r.getMessage() == "session open" for r in records)
    formatters = [TextFormatter("%(message)s"), JsonFormatter()]
    for record in records:
        for fmt in formatters:
            line = fmt.format(record)
            for token in tokens:
                assert token not in line
                assert token.split(".")[2] not in line  # not even the signature
