"""``atp token issue``: mint a JWT for local use."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from atp_proto.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="token_cmd", metavar="ACTION", required=True)
    issue = sub.add_parser("issue", help="print a signed token")
    issue.add_argument(
        "--key-file",
        metavar="FILE",
        help="HS256 secret or RS256/ES256 PEM *private* key (or env ATP_JWT_KEY)",
    )
    issue.add_argument("--algorithm", choices=["HS256", "RS256", "ES256"], default=None)
    issue.add_argument("--sub", default="local-user", help="subject (default local-user)")
    issue.add_argument("--tenant", default="local")
    issue.add_argument("--max-qos", choices=["gold", "silver", "bronze"], default="gold")
    issue.add_argument(
        "--task-type",
        action="append",
        metavar="TYPE",
        help="allowed task type (repeatable; default any)",
    )
    issue.add_argument("--ttl", type=int, default=3600, metavar="SECONDS")
    issue.add_argument("--aud", default=None)
    issue.add_argument("--iss", default=None)
    secret = sub.add_parser("secret", help="print a fresh random HS256 secret (hex, 32 bytes)")
    secret.set_defaults(token_cmd="secret")


def run(args: argparse.Namespace) -> int:
    from atp_proto.router.auth import issue_token

    if args.token_cmd == "secret":
        print(secrets.token_hex(32))
        return 0
    if args.key_file:
        try:
            key = Path(args.key_file).read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read {args.key_file}: {exc.strerror}") from None
    elif os.environ.get("ATP_JWT_KEY"):
        key = os.environ["ATP_JWT_KEY"].encode().strip()
    else:
        raise UsageError("no key: pass --key-file or set ATP_JWT_KEY")
    pem = key.startswith(b"-----BEGIN")
    alg = args.algorithm or ("HS256" if not pem else None)
    if alg is None:
        raise UsageError("with a PEM private key, pass --algorithm RS256 or ES256")
    if alg == "HS256" and len(key) < 32:
        raise UsageError("the HS256 secret must be at least 32 bytes")
    if args.ttl <= 0:
        raise UsageError("--ttl must be positive")
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
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot sign with that key: {exc}") from None
    sys.stdout.write(tok + "\n")
    return 0
