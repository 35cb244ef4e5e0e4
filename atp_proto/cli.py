"""The ``atp`` command line. Each command lives in its own module under ``atp_proto._cli``
and registers itself here; imports are lazy so that ``atp --help`` stays fast.

Exit codes scripts can trust: 0 success, 1 the operation failed (an ERROR frame, a
failed benchmark goal of a full run, a failed conformance case), 2 bad usage or bad input
(a bad flag value, an unknown or impossible setting, an address that cannot be listened on).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("atp_proto._cli.demo", "run router + reference adapters + a client locally"),
    "serve": ("atp_proto._cli.serve", "run the ATP router"),
    "send": ("atp_proto._cli.send", "open one stream on a router and print what comes back"),
    "frames": ("atp_proto._cli.frames", "encode / decode frames (JSON <-> binary)"),
    "token": ("atp_proto._cli.token", "mint JWTs for local use"),
    "adapter": ("atp_proto._cli.adapter", "serve an adapter (vendor SDK) over gRPC"),
    "bench": ("atp_proto._cli.bench", "run benchmarks beside their baselines"),
    "feedback": ("atp_proto._cli.feedback", "report the quality of a finished stream's answer"),
    "routing": ("atp_proto._cli.routing", "train, show, export and import the learner's state"),
    "audit": ("atp_proto._cli.audit", "verify the router's hash-chained decision log"),
    "conformance": ("atp_proto._cli.conformance", "run the conformance suite; list, explain cases"),
}


class UsageError(Exception):
    """Bad input from the person at the keyboard: printed, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atp",
        description="ATP — Agent Transport Protocol: router, client and tools.",
        epilog="Run 'atp COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:  # a command not built yet in this checkout
            if exc.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def _version() -> str:
    from atp_proto import __version__

    return f"atp {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"atp: the '{args.command}' command is not available in this build", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except UsageError as exc:
        print(f"atp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run through the package's module so that UsageError is the class commands raise.
    from atp_proto.cli import main as _main

    sys.exit(_main())
