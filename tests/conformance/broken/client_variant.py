"""A deliberately broken client: ``python client_variant.py NAME URL [testee args]`` runs
the Python client testee (conformance/testees/python_client.py) with one fault (or several
independent ones: ``a+b``)."""

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


def budget_update_ignored() -> None:
    """A BUDGET_UPDATE on an id never opened is dropped, as the core did before session 7
    (ATP-STREAM-016)."""
    from atp_proto.frames import FrameType
    from atp_proto.frames._receiving import ReceiveMixin

    original = ReceiveMixin._HANDLERS[FrameType.BUDGET_UPDATE]

    def handler(self: Any, frame: Frame, *args: Any) -> None:
        if frame.stream_id in self._streams:
            original(self, frame, *args)

    ReceiveMixin._HANDLERS[FrameType.BUDGET_UPDATE] = handler


def error_answered() -> None:
    """An ERROR on an id never opened is answered with an ERROR EPROTO (ATP-ERR-011)."""
    from atp_proto.frames import ErrorCode, FrameType, RemoteProtocolError
    from atp_proto.frames._receiving import ReceiveMixin

    original = ReceiveMixin._HANDLERS[FrameType.ERROR]

    def handler(self: Any, frame: Frame, *args: Any) -> None:
        sid = frame.stream_id
        if sid and sid not in self._streams and sid > self._highest_id:
            raise RemoteProtocolError(
                ErrorCode.EPROTO, "ERROR on a stream never opened", stream_id=sid
            )
        original(self, frame, *args)

    ReceiveMixin._HANDLERS[FrameType.ERROR] = handler


VARIANTS = {
    "budget-update-ignored": budget_update_ignored,
    "error-answered": error_answered,
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
# a streamed FINAL taken whatever its count (ATP-FINAL-004)
from final_variants import CLIENT_VARIANTS as _FINAL_CLIENT  # noqa: E402

VARIANTS.update(_FINAL_CLIENT)

# session 9's: sender rules of the client no variant broke before
from hollow_variants import CLIENT_VARIANTS as _HOLLOW_CLIENT  # noqa: E402

VARIANTS.update(_HOLLOW_CLIENT)

if __name__ == "__main__":
    for _one in sys.argv.pop(1).split("+"):  # "a+b": independent faults in one client
        VARIANTS[_one]()
    from conformance.testees.python_client import main

    sys.exit(main())
