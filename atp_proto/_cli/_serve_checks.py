"""``atp serve``'s checks of its flags beside each other and of the files they name
(atp_proto/_cli/serve.py ``config_from_args`` calls them): bad usage, exit 2, one line,
before the router starts (README, "Exit codes")."""

from __future__ import annotations

import argparse
from typing import Any

from atp_proto.cli import UsageError

__all__ = ["check_combinations", "check_config_files", "check_input_files", "check_tls_files"]


def check_combinations(args: argparse.Namespace, cfg: Any) -> None:
    """Flags that would do nothing beside the rest of the configuration (every layer
    merged) are bad usage, not silently ignored: the operator meant something by them.

    Raises:
        UsageError: naming the flag and what it needs.
    """
    if args.restart_limit is not None and cfg.workers <= 1:
        # one router has no supervisor: its restarts are a service manager's (systemd's
        # StartLimitBurst), which --restart-limit copies for the workers
        raise UsageError(
            "--restart-limit needs --workers N (N > 1): one router process has no supervisor "
            "to restart it (use the service manager's restart limit)"
        )
    if cfg.learner != "bandit":
        for flag, value in (
            ("--routing-state", args.routing_state),
            ("--routing-weights", args.routing_weights),
            ("--routing-seed", args.routing_seed),
        ):
            if value is not None:
                raise UsageError(f"{flag} is for --learner bandit (the learner is {cfg.learner})")
    worker = getattr(args, "worker_index", None) is not None
    # a worker of --workers N other than worker 0 is given --quic off by the supervisor
    # (worker 0 owns the UDP port) beside the user's --quic-cert: not the user's mistake
    if args.quic == "off" and (args.quic_cert or args.quic_key) and not worker:
        raise UsageError("--quic-cert/--quic-key with --quic off: drop one")
    if cfg.auth and (cfg.jwks or cfg.oidc_issuer) and args.jwt_key_file:
        given = "--jwks" if cfg.jwks else "--oidc-issuer"
        raise UsageError(f"--jwt-key-file and {given} exclude each other: the key set verifies")
    if cfg.auth and (cfg.jwks or cfg.oidc_issuer) and cfg.jwt_algorithm == "HS256":
        # a key set gives public keys only (atp_proto/router/jwks.py): HS256 would verify
        # nothing, or, were an HMAC key ever loaded from it, a token signed with a public key
        flag = "--jwt-algorithm HS256" if args.jwt_algorithm else "auth.algorithm = HS256"
        given = "--jwks" if cfg.jwks else "--oidc-issuer"
        raise UsageError(
            f"{flag} with {given}: a key set gives RS256/ES256 keys only (HS256 is for "
            "--jwt-key-file)"
        )


def check_input_files(args: argparse.Namespace) -> None:
    """Every file named by a flag exists and opens: ``cannot read --policy FILE: no such
    file``, exit 2, the same words for each (before, some said a Python errno, and a
    missing ``--quic-cert`` said it could not listen)."""
    from atp_proto._cli._files import input_file

    jwks = args.jwks if args.jwks and "://" not in args.jwks else None
    for flag, value in (
        ("--config", args.config),
        ("--policy", args.policy),
        ("--routing-table", args.routing_table),
        ("--jwt-key-file", args.jwt_key_file),
        ("--jwks", jwks),
        ("--cert", args.cert),
        ("--key", args.key),
        ("--quic-cert", args.quic_cert),
        ("--quic-key", args.quic_key),
    ):
        if value:
            input_file(value, flag)


def check_tls_files(args: argparse.Namespace) -> None:
    """The config file's ``[tls]`` ``cert`` / ``key``, when no flag replaces them, checked
    as the other files it names: ``cannot read tls.cert /etc/atp/c.pem (from atp.toml): no
    such file``, exit 2 (it said "TLS certificate file /etc/atp/c.pem: no such file",
    naming neither the setting nor the file that set it). Before the configuration is
    built, which loads the certificate.

    Raises:
        UsageError: naming the setting, the file and what is wrong.
        ConfigError: the config file itself is broken (as building the configuration says).
    """
    if not args.config or args.cert or args.dev_cert:
        return
    from atp_proto._cli._files import input_file
    from atp_proto.router.config import load_file

    tls = load_file(args.config).get("tls")
    for name, key in (("cert_file", "tls.cert"), ("key_file", "tls.key")):
        value = getattr(tls, name, None)
        if value:
            input_file(value, label=f"{key} {value} (from {args.config})")


def check_config_files(args: argparse.Namespace, cfg: Any) -> None:
    """The files the configuration names beyond the flags (``--config``'s
    ``[auth] key_file`` / ``jwks``, ``[policy] file`` / ``routing_table``, ``[router]
    audit_log`` / ``routing_state``, ``[transport.quic] cert`` / ``key``, and
    ``ATP_JWT_KEY_FILE``) checked as the flags' are,
    one line, exit 2, before the router starts: ``cannot read policy.file /etc/p.rego
    (from atp.toml): no such file`` (a missing ``[policy] file`` said a Python errno).

    Raises:
        UsageError: naming the setting, the file and what is wrong.
    """
    import os

    from atp_proto._cli._files import input_file
    from atp_proto.router.config import FILE_PATH_SETTINGS

    flags = {
        "jwt_key_file": args.jwt_key_file,
        "jwks": args.jwks,
        "policy_file": args.policy,
        "routing_table": args.routing_table,
        "audit_log": args.audit_log,
        "routing_state": args.routing_state,
    }
    read = {  # what this configuration reads (a setting it does not read is not checked)
        "jwt_key_file": cfg.auth and not (cfg.jwks or cfg.oidc_issuer),
        "jwks": cfg.auth,
        "policy_file": not cfg.opa_url,
        "routing_table": True,
        "audit_log": True,
        "routing_state": cfg.learner == "bandit",
    }
    paths = dict(FILE_PATH_SETTINGS)
    quic_on = args.quic != "off" and not cfg.quic.disabled
    if cfg.cert_file and quic_on and not (args.quic_cert or args.cert or args.dev_cert):
        # [transport.quic] cert / key: a missing one said "cannot listen on ... (QUIC,
        # UDP): no such file or directory" once the listener tried to load it
        paths.update(cert_file="transport.quic.cert", key_file="transport.quic.key")
        flags.update(cert_file=None, key_file=None)
        read.update(cert_file=True, key_file=True)
    for name, key in paths.items():
        value = getattr(cfg, name)
        if not value or flags[name] or not read[name] or (name == "jwks" and "://" in value):
            continue  # unset, given by a flag (checked already), not read, or a URL
        if name == "jwt_key_file" and os.environ.get("ATP_JWT_KEY_FILE") == value:
            label = f"ATP_JWT_KEY_FILE {value}"
        else:
            label = f"{key} {value} (from {args.config})"
        if name in ("audit_log", "routing_state"):  # written: its directory must be there
            parent = os.path.dirname(os.path.abspath(value))
            if not os.path.isdir(parent):
                raise UsageError(f"cannot write {label}: no directory {parent}")
            continue
        input_file(value, label=label)
