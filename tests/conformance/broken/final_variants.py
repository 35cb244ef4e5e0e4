"""Broken variants of a FINAL that does not repeat a streamed answer (spec §15.5,
ATP-FINAL-001…004), loaded into router_variant.VARIANTS and client_variant.VARIANTS: a
real ``atp serve`` (or the Python client testee) wrong in exactly one way, which the case
citing the MUST must catch (tests/conformance/test_final_streamed.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def partials_held_back() -> None:  # every second PARTIAL of a stream is held back (never
    # sent), and the FINAL still leaves the answer out, counting the chunks the adapter
    # gave (ATP-FINAL-002: the answer must then be sent in full)
    from atp_proto.session import output

    orig = output.Output.send_partial
    count: dict[int, int] = {}

    def send_partial(self: Any, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        n = count.get(id(self), 0)
        count[id(self)] = n + 1
        if n % 2 == 1 and ext is None:
            return
        orig(self, body, ext=ext)

    output.Output.send_partial = send_partial  # type: ignore[method-assign]


def always_streamed() -> None:  # the answer left out whether or not the client asked
    # (ATP-FINAL-003)
    from atp_proto.router.routing import run

    orig = run.meta_final_streamed

    def streamed(meta: Mapping[str, Any], stream_id: int = 0) -> bool:
        orig(meta, stream_id)
        return True

    run.meta_final_streamed = streamed


def key_means_streamed() -> None:  # "full" said out loud read as "streamed"
    # (ATP-FINAL-003: the key's presence is not the value)
    from atp_proto.router.routing import run

    orig = run.meta_final_streamed

    def streamed(meta: Mapping[str, Any], stream_id: int = 0) -> bool:
        orig(meta, stream_id)
        return "final_answer" in meta

    run.meta_final_streamed = streamed


def value_unchecked() -> None:  # any meta.final_answer but "streamed" read as "full"
    # (ATP-FINAL-001: EPROTO naming the key)
    from atp_proto.router.routing import run

    run.meta_final_streamed = lambda meta, stream_id=0: meta.get("final_answer") == "streamed"


def count_unchecked() -> None:  # the client takes a streamed FINAL whatever its
    # streamed.chunks says (ATP-FINAL-004: a mismatch is a failed stream, EPROTO)
    from atp_proto import messages

    orig = messages.AnswerAssembler.final

    def final(self: Any, fin: Any, stream_id: int = 0) -> Any:
        c = fin.content
        if isinstance(c, Mapping) and isinstance(c.get("adapter"), str):
            have = len(self._texts.get(c["adapter"], []))
            if isinstance(c.get("streamed"), Mapping):
                c = {**c, "streamed": {"chunks": have}}
                fin = messages.Final(c, fin.confidence, fin.telemetry, fin.payload)
        return orig(self, fin, stream_id)

    messages.AnswerAssembler.final = final  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], None]] = {
    "final-partials-held-back": partials_held_back,
    "final-always-streamed": always_streamed,
    "final-key-means-streamed": key_means_streamed,
    "final-value-unchecked": value_unchecked,
}
CLIENT_VARIANTS: dict[str, Callable[[], None]] = {
    "client-streamed-count-unchecked": count_unchecked,
}
