"""``atp serve``'s checks of its flags beside each other and of the files they name
(atp_proto/_cli/serve.py ``config_from_args`` calls them): bad usage, exit 2, one line,
before the router starts (README, "Exit codes")."""

from __future__ import annotations

import argparse
from typing import Any

from atp_proto.cli import UsageError

__all__ = ["check_combinations", "check_input_files"]


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
