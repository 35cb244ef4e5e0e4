"""``python -m conformance ARGS`` = ``atp conformance ARGS`` (from a checkout or a wheel)."""

from __future__ import annotations

import sys

from atp_proto.cli import main

if __name__ == "__main__":
    sys.exit(main(["conformance", *sys.argv[1:]]))
