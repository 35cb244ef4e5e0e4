"""``atp token issue``: mint a JWT for local use."""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from atp_proto.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="token_cmd", metavar="ACTION", required=True)
    issue = sub.add_parser(
        "issue",
        help="print a signed token",
        description="Print a JWT signed with the router's key, for local use: claims sub, exp, "
        "tenant, max_qos, task_types, and aud / iss when the router checks them.",
    )
    issue.add_argument(
        "--key-file",
        metavar="FILE",
        help="HS256 secret or RS256/ES256 PEM *private* key (or env ATP_JWT_KEY)",
    )
    issue.add_argument(
        "--algorithm",
        choices=["HS256", "RS256", "ES256"],
        default=None,
        help="signing algorithm (default HS256; a PEM key needs RS256 or ES256)",
    )
    issue.add_argument("--sub", default="local-user", help="subject (default local-user)")
    issue.add_argument("--tenant", default="local", help="the tenant claim (default local)")
    issue.add_argument(
        "--max-qos",
        choices=["gold", "silver", "bronze"],
        default="gold",
        help="the highest lane the token's streams get (default gold)",
    )
    issue.add_argument(
        "--task-type",
        action="append",
        metavar="TYPE",
        help="allowed task type (repeatable; default any)",
    )
    issue.add_argument(
        "--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)"
    )
    issue.add_argument("--aud", default=None, help="audience: the router's [auth] audience")
    issue.add_argument("--iss", default=None, help="issuer: the router's [auth] issuer")
    secret = sub.add_parser(
        "secret",
        help="print a fresh random HS256 secret (hex, 32 bytes)",
        description="Print a fresh random HS256 secret (hex, 32 bytes), for ATP_JWT_KEY or "
        "a --jwt-key-file shared by the router and 'atp token issue'.",
    )
    secret.set_defaults(token_cmd="secret")


def run(args: argparse.Namespace) -> int:
    import jwt

    from atp_proto.router.auth import issue_token

    if args.token_cmd == "secret":
        print(secrets.token_hex(32))
        return 0
    if args.key_file:
        from atp_proto._cli._files import input_file

        try:
            key = input_file(args.key_file, "--key-file").read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --key-file {args.key_file}: {exc.strerror}") from None
    elif os.environ.get("ATP_JWT_KEY"):
        key = os.environ["ATP_JWT_KEY"].encode().strip()
    else:
        raise UsageError("no key: pass --key-file or set ATP_JWT_KEY")
    pem = key.startswith(b"-----BEGIN")
    alg = args.algorithm or ("HS256" if not pem else None)
    if alg is None:
        raise UsageError(_which_algorithm(key))
    if alg == "HS256" and len(key) < 32:
        raise UsageError("the HS256 secret must be at least 32 bytes")
    if alg != "HS256" and not pem:
        raise UsageError(
            f"--algorithm {alg} signs with a PEM private key; the key given is not PEM "
            "(an HS256 secret? then drop --algorithm)"
        )
    if alg == "HS256" and pem:
        raise UsageError("the key is a PEM key: pass --algorithm RS256 or ES256, not HS256")
    if args.ttl <= 0:
        raise UsageError("--ttl must be positive")
    if alg != "HS256":
        _check_private_key(key, alg)
    try:
        tok = issue_token(
            key if alg == "HS256" else key.decode(),
            algorithm=alg,
            subject=args.sub,
            tenant=args.tenant,
            max_qos=args.max_qos,
            task_types=args.task_type,
            ttl_s=args.ttl,
            audience=args.aud,
            issuer=args.iss,
        )
    except (ValueError, TypeError, NotImplementedError, jwt.PyJWTError) as exc:
        raise UsageError(f"cannot sign {alg} with that key: {exc}") from None
    sys.stdout.write(tok + "\n")
    return 0


def _which_algorithm(pem: bytes) -> str:
    """What to pass for a PEM key given without ``--algorithm``: the one its kind signs
    with, or that a public key cannot sign (it said "with a PEM private key" for both)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        if b"PUBLIC KEY" in pem:
            return "--key-file holds a public key: tokens are signed with its private key"
        return "--key-file is not an unencrypted PEM private key"
    if isinstance(private, rsa.RSAPrivateKey):
        return "with an RSA private key, pass --algorithm RS256"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return "with an EC private key, pass --algorithm ES256"
    return "with a PEM private key, pass --algorithm RS256 or ES256"


def _check_private_key(pem: bytes, alg: str) -> None:
    """Refuse, as bad usage, a PEM key that cannot sign ``alg`` (a public key, an RSA key for
    ES256, ...), before PyJWT fails on it with an exception about internals."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        kind = "a public key" if b"PUBLIC KEY" in pem else "not an unencrypted PEM private key"
        raise UsageError(f"--algorithm {alg} needs a PEM private key; this is {kind}") from exc
    wanted = rsa.RSAPrivateKey if alg == "RS256" else ec.EllipticCurvePrivateKey
    if not isinstance(private, wanted):
        have = type(private).__name__.removeprefix("_").replace("PrivateKey", "")
        raise UsageError(
            f"--algorithm {alg} needs an {'RSA' if alg == 'RS256' else 'EC'} key, not {have}"
        )
