"""``atp serve``'s start-up refusals that were left over (the real ``atp`` in a
subprocess, cwd the repository root): each is one line and exit 2, before the router
serves, and leaves nothing behind.

- ``--jwt-algorithm`` beside ``--jwks`` was ignored: HS256 with a key set (which gives
  public keys only), or ES256 with a set of RSA keys, started a router that verified
  RS256 tokens anyway.
- ``--dev-cert`` wrote its certificate before the other checks ran: a start refused for
  a missing ``--policy`` left ``$XDG_DATA_HOME/atp/`` behind.
- A config file's paths: ``[tls]`` and ``[transport.quic]`` were relative to the file,
  the others (``[auth] key_file`` / ``jwks``, ``[policy] file`` / ``routing_table``,
  ``[router] audit_log`` / ``routing_state``) to the working directory; a missing
  ``[policy] file`` said ``[Errno 2] No such file or directory: 'p.rego'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atp_proto.router import Router, RouterConfig
from atp_proto.router.config import FILE_PATH_SETTINGS, build_config
from atp_proto.transports.tls import generate_dev_cert
from tests.router._helpers_e2e import atp

SERVE = ("serve", "--ws", "127.0.0.1:0", "--metrics", "off", "--quic", "off")


def _line(argv: tuple[str, ...], env: dict[str, str] | None = None) -> str:
    """The one line of a refused start (exit 2; warnings aside)."""
    proc = atp(*argv, env=env, timeout=30)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and " WARNING " not in ln]
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    return lines[0]


def _jwk(private_key: Any, kid: str) -> dict[str, Any]:
    pub = private_key.public_key()
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(pub, rsa.RSAPublicKey) else None
    text = (algorithm or jwt.algorithms.ECAlgorithm).to_jwk(pub)
    return {**json.loads(text), "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def key_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("jwks")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    out = {}
    for name, keys in (
        ("rsa", [_jwk(rsa_key, "r1")]),
        ("both", [_jwk(rsa_key, "r1"), _jwk(ec_key, "e1")]),
    ):
        out[name] = tmp / f"{name}.json"
        out[name].write_text(json.dumps({"keys": keys}))
    return out


# ------------------------------------------------------------ --jwt-algorithm and a key set


def test_hs256_with_a_key_set_is_bad_usage(key_sets: dict[str, Path]) -> None:
    line = _line((*SERVE, "--jwks", str(key_sets["rsa"]), "--jwt-algorithm", "HS256"))
    assert line == (
        "atp serve: error: --jwt-algorithm HS256 with --jwks: a key set gives RS256/ES256 "
        "keys only (HS256 is for --jwt-key-file)"
    )
    oidc = ("--oidc-issuer", "https://id.example", "--jwt-audience", "atp")
    line = _line((*SERVE, *oidc, "--jwt-algorithm", "HS256"))
    assert line.startswith("atp serve: error: --jwt-algorithm HS256 with --oidc-issuer: ")


def test_an_algorithm_the_key_set_has_no_key_for_refuses_to_start(
    key_sets: dict[str, Path],
) -> None:
    path = str(key_sets["rsa"])
    line = _line((*SERVE, "--jwks", path, "--jwt-algorithm", "ES256"))
    assert line == (
        f"atp serve: error: --jwks {path}: no usable ES256 signing key in the JWK Set "
        "(it holds RS256 keys; --jwt-algorithm ES256)"
    )


def test_the_algorithm_pins_which_keys_of_the_set_verify(key_sets: dict[str, Path]) -> None:
    """With both kinds in the set, ``--jwt-algorithm ES256`` loads only the EC key (an
    RS256 token's kid is then not in the key set); without it both load."""
    both = str(key_sets["both"])
    for algorithm, kids in (("ES256", {"e1"}), ("RS256", {"r1"}), (None, {"r1", "e1"})):
        router = Router(RouterConfig(auth=True, jwks=both, jwt_algorithm=algorithm).validate())
        source = router.authenticator.keys  # type: ignore[union-attr]
        assert {kid for kid in ("r1", "e1") if source.cached_key(kid)} == kids, algorithm


# ------------------------------------------------------------ --dev-cert and a refused start


@pytest.mark.parametrize(
    "why",
    [
        ("--policy", "{tmp}/missing.rego"),
        ("--config", "{tmp}/atp.toml"),  # its [policy] file is missing
        ("--policy", "{tmp}/broken.rego"),  # read by the router itself, after the checks
        ("--adapter", "x=ftp://nowhere"),
    ],
)
def test_a_refused_start_leaves_no_dev_cert_behind(tmp_path: Path, why: tuple[str, str]) -> None:
    (tmp_path / "atp.toml").write_text('[policy]\nfile = "missing.rego"\n')
    (tmp_path / "broken.rego").write_text("package atp.policy\nx := \n")
    data = tmp_path / "data"  # not there yet: the run would create it and atp/ in it
    argv = (*SERVE, "--no-auth", "--dev-cert", *(a.replace("{tmp}", str(tmp_path)) for a in why))
    proc = atp(*argv, env={"XDG_DATA_HOME": str(data)}, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "dev certificate" not in proc.stderr
    assert not data.exists()


def test_a_refused_start_keeps_the_dev_cert_it_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "atp").mkdir(parents=True)
    cert, key, _ = generate_dev_cert(data / "atp")
    before = cert.read_bytes(), key.read_bytes()
    argv = (*SERVE, "--no-auth", "--dev-cert", "--policy", str(tmp_path / "missing.rego"))
    proc = atp(*argv, env={"XDG_DATA_HOME": str(data)}, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert (cert.read_bytes(), key.read_bytes()) == before


def test_a_refused_start_keeps_a_dev_cert_another_router_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``atp serve --dev-cert`` started together: A makes the certificate under the
    lock while B, which found none before, waits and then reuses it. B's start is then
    refused: B removes nothing (it removed A's certificate, key, lock and directory,
    found by a review). The other router is played by a real make between B's look and
    B's turn at the lock."""
    from atp_proto._cli import serve
    from atp_proto.transports import tls

    data = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    real = tls.make_or_reuse_dev_cert

    def beside_another(directory: Path) -> tuple[Path, Path, str, bool]:
        made_by_a = real(directory)  # router A, first at the lock
        assert made_by_a[3]
        return real(directory)  # router B: reuses A's

    monkeypatch.setattr(tls, "make_or_reuse_dev_cert", beside_another)
    b = serve._DevCert()
    cert, key = b.make()
    b.forget()  # B's start refused
    assert Path(cert).exists() and Path(key).exists()
    assert (data / "atp" / ".dev-cert.lock").exists()
    # alone, a refused start still removes what it made
    for p in (data / "atp").iterdir():
        p.unlink()
    (data / "atp").rmdir()
    data.rmdir()
    monkeypatch.setattr(tls, "make_or_reuse_dev_cert", real)
    alone = serve._DevCert()
    alone.make()
    alone.forget()
    assert not data.exists()


# ------------------------------------------------------------ the config file's paths


def test_every_path_of_the_config_file_is_relative_to_its_directory(tmp_path: Path) -> None:
    """One rule for every path key (README, "Configuration"); absolute paths and a JWKS
    URL are kept as written."""
    conf = tmp_path / "etc"
    conf.mkdir()
    path = conf / "atp.toml"
    path.write_text(
        '[auth]\nkey_file = "jwt.key"\njwks = "keys/jwks.json"\n'
        '[policy]\nfile = "p.rego"\nrouting_table = "/abs/t.toml"\n'
        '[router]\naudit_log = "log/audit.jsonl"\nrouting_state = "state.sqlite"\n'
    )
    cfg = build_config(file=str(path), env={}, flags={})
    assert {name: getattr(cfg, name) for name in FILE_PATH_SETTINGS} == {
        "jwt_key_file": str(conf / "jwt.key"),
        "jwks": str(conf / "keys" / "jwks.json"),
        "policy_file": str(conf / "p.rego"),
        "routing_table": "/abs/t.toml",
        "audit_log": str(conf / "log" / "audit.jsonl"),
        "routing_state": str(conf / "state.sqlite"),
    }
    path.write_text('[auth]\njwks = "https://id.example/jwks.json"\n')
    assert build_config(file=str(path), env={}, flags={}).jwks == "https://id.example/jwks.json"
    # a flag is the user's own path, relative to the working directory as ever
    flagged = build_config(file=str(path), env={}, flags={"policy_file": "p.rego"})
    assert flagged.policy_file == "p.rego"


@pytest.mark.parametrize(
    ("toml", "extra", "expected"),
    [
        (
            '[policy]\nfile = "p.rego"\n',
            (),
            "cannot read policy.file {conf}/p.rego (from {file}): no such file",
        ),
        (
            '[policy]\nrouting_table = "t.toml"\n',
            (),
            "cannot read policy.routing_table {conf}/t.toml (from {file}): no such file",
        ),
        (
            '[auth]\nkey_file = "jwt.key"\n',
            ("--auth",),
            "cannot read auth.key_file {conf}/jwt.key (from {file}): no such file",
        ),
        (
            '[auth]\njwks = "."\n',
            ("--auth",),
            "cannot read auth.jwks {conf}/. (from {file}): not a file",
        ),
        (
            '[router]\naudit_log = "logs/a.jsonl"\n',
            (),
            "cannot write router.audit_log {conf}/logs/a.jsonl (from {file}): no directory "
            "{conf}/logs",
        ),
        (
            '[router]\nlearner = "bandit"\nrouting_state = "st/s.sqlite"\n',
            (),
            "cannot write router.routing_state {conf}/st/s.sqlite (from {file}): no directory "
            "{conf}/st",
        ),
    ],
)
def test_a_missing_file_of_the_config_is_one_line(
    tmp_path: Path, toml: str, extra: tuple[str, ...], expected: str
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    file = conf / "atp.toml"
    file.write_text(toml)
    auth = () if extra == ("--auth",) else ("--no-auth",)
    line = _line((*SERVE, *auth, "--config", str(file)))
    assert line == "atp serve: error: " + expected.format(conf=conf, file=file)


def test_a_missing_key_file_from_the_environment_is_named_so(tmp_path: Path) -> None:
    missing = tmp_path / "jwt.key"
    line = _line(SERVE, env={"ATP_JWT_KEY_FILE": str(missing)})
    assert line == f"atp serve: error: cannot read ATP_JWT_KEY_FILE {missing}: no such file"


def test_a_policy_that_does_not_compile_is_one_line(tmp_path: Path) -> None:
    """regopy's compiler printed its diagnostics on file descriptor 1 (a dozen lines
    past ``sys.stdout``) and raised an s-expression, which was the error line."""
    policy = tmp_path / "broken.rego"
    policy.write_text("package atp.policy\nx := \n")
    proc = atp(*SERVE, "--no-auth", "--policy", str(policy), timeout=30)
    assert (proc.returncode, proc.stdout) == (2, "")
    lines = [ln for ln in proc.stderr.splitlines() if " WARNING " not in ln]
    assert lines == [f"atp serve: error: {policy}:2:3: Invalid assignment operator"]


def test_bench_routing_without_its_data_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a fresh clone (no ``../shared/routing-data/`` beside it) ``atp bench routing
    --quick`` said ``atp bench routing: no data file`` and the resolved path of
    ``../shared/routing-data/public.jsonl``, without "error:" nor that the records are not
    in the repository."""
    import argparse

    from atp_proto.cli import UsageError
    from benchmarks import _routing_run, bench_routing

    missing = tmp_path / "shared" / "routing-data" / "public.jsonl"
    monkeypatch.setattr(_routing_run, "DEFAULT_DATA", missing)
    parser = argparse.ArgumentParser()
    bench_routing.add_options(parser)
    with pytest.raises(UsageError) as err:
        bench_routing.run(parser.parse_args([]))
    assert str(err.value) == (
        f"no outcome records at {missing} (the default, beside the checkout; they are not "
        "in the repository): pass --data FILE.jsonl (README, 'Learned routing')"
    )


def test_a_missing_quic_certificate_of_the_config_is_not_a_listen_error(tmp_path: Path) -> None:
    """README's config example as it stands (its ``[transport.quic] cert = "quic.pem"``
    absent) said ``cannot listen on 0.0.0.0:7443 (QUIC, UDP): no such file or
    directory``."""
    conf = tmp_path / "etc"
    conf.mkdir()
    file = conf / "atp.toml"
    file.write_text('[transport.quic]\ncert = "quic.pem"\nkey = "quic.key"\n')
    serve = ("serve", "--ws", "127.0.0.1:0", "--metrics", "off", "--no-auth")
    line = _line((*serve, "--config", str(file)))
    assert line == (
        f"atp serve: error: cannot read transport.quic.cert {conf}/quic.pem (from {file}): "
        "no such file"
    )
