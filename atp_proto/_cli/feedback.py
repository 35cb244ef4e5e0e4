"""``atp feedback DECISION_ID QUALITY``: report the quality of a finished stream's answer to
the router (ATP-FEED-001/002), by the decision id its FINAL carried
(``telemetry.decision_id``; ``atp send --json`` prints it).

    atp feedback 9f2c4e1a0b7d3c55 0.8 --url http://127.0.0.1:9464 --token "$ATP_TOKEN"
    atp feedback 9f2c4e1a0b7d3c55 0.8 --url https://router:9464 --ca dev-cert.pem ...

Exit 0: taken; 1: refused (unknown or expired id, bad token) or the router is unreachable;
2: bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import ssl
import sys

from atp_proto.cli import UsageError

_TRUST_HINT = " (trust its certificate with --ca FILE, or --insecure for local use)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("decision_id", metavar="DECISION_ID", help="telemetry.decision_id of a FINAL")
    p.add_argument("quality", metavar="QUALITY", help="quality of the answer, 0..1")
    p.add_argument(
        "--url",
        default="http://127.0.0.1:9464",
        help="the router's HTTP port (its --metrics address; https:// when it has TLS; "
        "default http://127.0.0.1:9464)",
    )
    p.add_argument("--token", help="JWT, where the router authenticates (or env ATP_TOKEN)")
    p.add_argument(
        "--source", default="client", help="who judged it: client (default), evaluator, ..."
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="HTTP timeout (default 10)"
    )
    p.add_argument(
        "--ca",
        metavar="FILE",
        help="https://: trust this CA or certificate (PEM), e.g. `atp serve --dev-cert`'s",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="https://: do not verify the router's certificate (local use only)",
    )
    p.add_argument("--json", action="store_true", help="print the router's answer as JSON")


def run(args: argparse.Namespace) -> int:
    import trio

    from atp_proto.client import FeedbackRefused, feedback

    try:
        quality = float(args.quality)
    except ValueError:
        raise UsageError(f"QUALITY must be a number within 0..1, got {args.quality!r}") from None
    if not math.isfinite(quality) or not 0.0 <= quality <= 1.0:
        raise UsageError(f"QUALITY must be within 0..1, got {args.quality}")
    token = args.token or os.environ.get("ATP_TOKEN") or None
    ssl_context = None
    if args.url.startswith("https://"):
        import warnings

        from atp_proto.transports.tls import InsecureTLSWarning, TLSConfig, TLSConfigError

        if args.ca and args.insecure:
            raise UsageError("--ca and --insecure contradict each other: pick one")
        if args.ca:
            from atp_proto._cli._files import input_file

            input_file(args.ca, "--ca")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureTLSWarning)  # said in one line below
            try:
                ssl_context = TLSConfig(
                    ca_file=args.ca, insecure=args.insecure
                ).client_ssl_context()
            except TLSConfigError as exc:
                raise UsageError(f"--ca: {exc}") from None
        if args.insecure:
            print(
                "atp feedback: --insecure: the router's certificate is not verified",
                file=sys.stderr,
            )
    elif args.ca or args.insecure:
        raise UsageError("--ca and --insecure are for https:// URLs")
    try:
        result = trio.run(
            lambda: feedback(
                args.url,
                args.decision_id,
                quality,
                token=token,
                source=args.source,
                timeout=args.timeout,
                ssl_context=ssl_context,
            )
        )
    except ssl.SSLError as exc:  # before ValueError: a refused certificate is one of both
        verify = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else None
        hint = "" if args.ca or args.insecure else _TRUST_HINT
        what = f"TLS certificate refused: {verify}{hint}" if verify else f"TLS failed: {exc.reason}"
        print(f"atp feedback: error: cannot reach {args.url}: {what}", file=sys.stderr)
        return 1
    except ValueError as exc:
        text = str(exc)
        if text.startswith("Port out of range"):  # urllib's words, without the URL
            text = f"--url {args.url}: the port must be within 1..65535"
        raise UsageError(text) from None
    except FeedbackRefused as exc:
        if args.json:
            print(json.dumps({"accepted": False, "status": exc.status, "error": exc.message}))
        print(f"atp feedback: error: refused ({exc.status}): {exc.message}", file=sys.stderr)
        return 1
    except (OSError, trio.TooSlowError) as exc:
        from atp_proto._cli._reasons import REFUSED, refused

        why = REFUSED.replace("a router", "the router's metrics port") if refused(exc) else exc
        print(
            f"atp feedback: error: cannot reach {args.url}: {why or 'timed out'}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(result.body))
    else:
        print(f"feedback taken for {args.decision_id} (quality {quality:g})")
    return 0
