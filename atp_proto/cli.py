"""The ``atp`` command line. Each command lives in its own module under ``atp_proto._cli``
and registers itself here; imports are lazy so that ``atp --help`` stays fast.

Exit codes scripts can trust: 0 success, 1 the operation failed (an ERROR frame, a
failed benchmark goal of a full run, a failed conformance case), 2 bad usage or bad input
(a bad flag value, an unknown or impossible setting, an address that cannot be listened on,
an option that would do nothing beside the others, a file to read that is missing, a place
to write that cannot be written: the last three said before any work,
``atp_proto._cli._files``). Every error line starts with the innermost subcommand
(:func:`prog_of`).
Errors are one line on stderr, never a traceback: bad usage that argparse finds (a missing
or unknown option, a bad value, a missing subcommand) too, through :class:`ArgumentParser`,
which every command's parser is (``add_subparsers`` makes its nested parsers of the same class).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

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


#: the namespace attribute naming the innermost (sub)parser that parsed the command line
_PROG = "_usage_prog"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with bad usage said in one line for a person instead of the usage block:
    ``atp routing show: error: the following arguments are required: --state (see atp
    routing show --help)``, exit status 2.

    - Options nobody knows are blamed on the innermost subcommand that was parsed (argparse
      blames the top-level ``atp``), so the hint points at the help that lists them.
    - A command with subcommands needs one (``add_subparsers`` defaults to
      ``required=True``), and the error lists them.
    """

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, _concise(self._with_choices(message)))

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("required", True)
        return super().add_subparsers(**kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # Set before parsing: a subparser parses into its own namespace, copied into ours
        # afterwards, so the innermost parser's name is the one left.
        namespace = argparse.Namespace() if namespace is None else namespace
        setattr(namespace, _PROG, self.prog)
        return super().parse_known_args(args, namespace)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = getattr(parsed, _PROG, self.prog)
            usage_error(prog, f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _with_choices(self, message: str) -> str:
        """A missing subcommand's error, with the subcommands to choose from."""
        for action in self._actions:
            if (
                isinstance(action, argparse._SubParsersAction)
                and action.metavar
                and message.endswith(f"required: {action.metavar}")
            ):
                return f"missing {action.metavar}: one of {', '.join(action.choices)}"
        return message


_CHOICE = re.compile(r"argument (\S+): invalid choice: '(.*)' \(choose from (.*)\)", re.S)
_TYPED = re.compile(r"argument (\S+): invalid (\w+) value: '(.*)'", re.S)
_ARGUMENT = re.compile(r"argument (\S+): (.*)", re.S)
_KINDS = {"int": "an integer", "float": "a number"}


def _concise(message: str) -> str:
    """argparse's words for a bad value, shorter and alike whatever the Python version
    (3.12.8 dropped the quotes around the choices): ``--transport x: one of ws, quic``,
    ``--workers x: not an integer``, ``--rate: must be a positive number, got 0``
    instead of ``argument --transport: invalid choice: 'x' (choose from 'ws', 'quic')``."""
    if m := _CHOICE.fullmatch(message):
        choices = ", ".join(c.strip().strip("'") for c in m[3].split(","))
        return f"{m[1]} {m[2]}: one of {choices}"
    if m := _TYPED.fullmatch(message):
        return f"{m[1]} {m[3]}: not {_KINDS.get(m[2], 'a valid ' + m[2])}"
    if m := _ARGUMENT.fullmatch(message):
        return f"{m[1]}: {m[2]}"
    return message


def prog_of(args: argparse.Namespace) -> str:
    """The innermost (sub)command of a parsed command line as argparse names it in its own
    errors (``atp token issue``): every error a command prints starts with it, so that a
    command says one prefix whoever finds the fault, argparse or the command."""
    prog = getattr(args, _PROG, None)
    return prog if isinstance(prog, str) else f"atp {getattr(args, 'command', '')}".strip()


def usage_error(prog: str, message: str) -> NoReturn:
    """Print ``PROG: error: MESSAGE (see PROG --help)`` on one line and exit 2."""
    text = " ".join(message.split())  # argparse messages may wrap
    print(f"{prog}: error: {text} (see {prog} --help)", file=sys.stderr)
    raise SystemExit(2)


def build_parser(only: str | None = None) -> ArgumentParser:
    """The whole command tree; with ``only`` (a command's name), that command's options
    alone: the other commands are listed but their modules not imported, so that a
    command starts without importing every other command's module."""
    parser = ArgumentParser(
        prog="atp",
        description="ATP — Agent Transport Protocol: router, client and tools.",
        epilog="Run 'atp COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=_version())
    # not required: a bare ``atp`` prints the help (main)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=False)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if only is not None and name != only:
            continue
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
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # bad usage (2), --help / --version (0): a status to return
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"atp: the '{args.command}' command is not available in this build", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    prog = prog_of(args)
    try:
        return int(module.run(args) or 0)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if _stdout_gone():  # `atp ... | head`: the reader left, not an error
            return 0
        print(f"{prog}: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        # The system refused something a command needed (a file, a directory, a socket)
        # where the command did not expect it: say what, in one line, not a traceback.
        print(f"{prog}: error: {_os_error(exc)}", file=sys.stderr)
        return 1


def _os_error(exc: OSError) -> str:
    """``strerror: filename`` of an OSError, else its text."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror.lower()}: {exc.filename}"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _stdout_gone() -> bool:
    """True when stdout is a pipe whose reader has left; stdout is then pointed at
    /dev/null, so that the interpreter's own flush at exit does not complain (Python's
    documented recipe). A broken pipe elsewhere (a socket) is not this."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
    return gone


if __name__ == "__main__":
    # Run through the package's module so that UsageError is the class commands raise.
    from atp_proto.cli import main as _main

    sys.exit(_main())
