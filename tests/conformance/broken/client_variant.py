"""A deliberately broken client: ``python client_variant.py NAME URL [testee args]`` runs
the Python client testee (conformance/testees/python_client.py) with one fault."""

from __future__ import annotations

import sys
from typing import Any

from router_variant import _frame, _wire, ignore_credit

from atp_proto.frames import Frame


def reuse_stream_id() -> None:  # the second stream goes out on the first one's id
    def binary(f: Frame) -> Frame:
        return _frame(f, stream_id=1) if f.stream_id == 3 else f

    _wire(binary, lambda o: dict(o, stream_id=1) if o.get("stream_id") == 3 else o)


def no_verify() -> None:  # every default TLS context verifies nothing (ATP-WS-013)
    import ssl

    orig = ssl.create_default_context

    def make(*args: Any, **kw: Any) -> ssl.SSLContext:
        ctx = orig(*args, **kw)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    ssl.create_default_context = make


VARIANTS = {
    "past-credit": ignore_credit,
    "reuse-stream-id": reuse_stream_id,
    "no-verify": no_verify,
}
# the client side of the spec points the independent client found unclear
from specgaps_variants import CLIENT_VARIANTS  # noqa: E402

VARIANTS.update(CLIENT_VARIANTS)
# the client side of the MUSTs no other variant broke (test_router_mutations.py)
from mutation_variants import CLIENT_VARIANTS as _MUTATION_CLIENT  # noqa: E402

VARIANTS.update(_MUTATION_CLIENT)

if __name__ == "__main__":
    VARIANTS[sys.argv.pop(1)]()
    from conformance.testees.python_client import main

    sys.exit(main())
