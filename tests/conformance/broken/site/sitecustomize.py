"""Loaded by every Python process started with this folder on PYTHONPATH: applies the
broken-router variant named by $CONF_BROKEN_VARIANT (tests/conformance/broken/router_variant.py)
before ``atp serve`` starts, so the variant runs as a real ``atp serve`` process."""

import os
import sys

_name = os.environ.get("CONF_BROKEN_VARIANT")
if _name:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if _name.startswith("quic-"):  # the QUIC binding's variants (quic_variant.py)
        from quic_variant import VARIANTS
    else:
        from router_variant import VARIANTS

    for _one in _name.split("+"):  # "a+b": two independent faults in one process
        VARIANTS[_one]()
