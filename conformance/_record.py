"""What a case saw, for the reports: every frame sent and received, hex and decoded.

Decoding for display uses the independent parser of :mod:`atp_proto.testing.frames`
(``struct`` + ``cbor2``), never the codec under test, and never fails: bytes it cannot
parse are shown as hex with the reason.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

from atp_proto.testing.frames import parse_frames
from conformance.model import CaseResult, CaseSpec, Exchange, Verdict

_TYPES = {0: "DATA", 1: "WINDOW_UPDATE", 2: "CAPABILITIES", 3: "BUDGET_UPDATE", 4: "ERROR"}
_FLAGS = (
    (0x01, "SYN"),
    (0x02, "ACK"),
    (0x04, "MORE"),
    (0x08, "FIN"),
    (0x10, "RST"),
    (0x20, "HB"),
    (0x40, "CONT"),
)
#: bytes of one message shown in a report at most (the rest is counted, not shown)
MAX_SHOWN = 4096


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value[:MAX_SHOWN]).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def describe(data: bytes) -> list[dict[str, Any]] | dict[str, str]:
    """The frames of one binary message as dicts (type and flags by name)."""
    try:
        frames = parse_frames(data)
    except Exception as exc:
        return {"undecodable": f"{type(exc).__name__}: {exc}"}
    out: list[dict[str, Any]] = []
    for f in frames:
        body: Any
        try:
            body = f.body()
        except Exception:
            body = {"b64": base64.b64encode(f.payload[:MAX_SHOWN]).decode()}
        out.append(
            {
                "v": f.version,
                "type": _TYPES.get(f.type, f.type),
                "flags": [n for bit, n in _FLAGS if f.flags & bit]
                + ([f"0x{f.flags & 0x80:02x}"] if f.flags & 0x80 else []),
                "stream_id": f.stream_id,
                "msg_seq": f.msg_seq,
                "frag_seq": f.frag_seq,
                "qos": f.qos,
                "ttl": f.ttl,
                "ext": _jsonable(f.ext),
                "payload": _jsonable(body),
            }
        )
    return out


class Recorder:
    """Collects a case's exchange and builds its result."""

    def __init__(self, case: CaseSpec) -> None:
        self.case = case
        self.start = time.monotonic()
        self.exchange: list[Exchange] = []

    def _at(self) -> float:
        return round((time.monotonic() - self.start) * 1000, 3)

    def sent(self, data: bytes | str, decoded: Any = None) -> None:
        self._add("sent", data, decoded)

    def received(self, data: bytes | str, decoded: Any = None) -> None:
        self._add("received", data, decoded)

    def _add(self, direction: str, data: bytes | str, decoded: Any) -> None:
        if isinstance(data, str):
            try:
                shown: Any = json.loads(data)
            except ValueError:
                shown = data[:MAX_SHOWN]
            self.exchange.append(Exchange(direction, self._at(), "", decoded or shown, "text"))
        else:
            note = f"{len(data)} bytes" + (" (shown in part)" if len(data) > MAX_SHOWN else "")
            self.exchange.append(
                Exchange(
                    direction,
                    self._at(),
                    data[:MAX_SHOWN].hex(),
                    decoded if decoded is not None else describe(data),
                    note,
                )
            )

    def note(self, text: str, decoded: Any = None) -> None:
        self.exchange.append(Exchange("note", self._at(), "", _jsonable(decoded), text))

    def result(
        self,
        verdict: Verdict,
        message: str = "",
        expected: str = "",
        violated: tuple[str, ...] = (),
    ) -> CaseResult:
        return CaseResult(
            self.case,
            verdict,
            message,
            expected,
            duration_ms=(time.monotonic() - self.start) * 1000,
            exchange=list(self.exchange),
            violated=violated or (self.case.requirements if verdict is Verdict.FAIL else ()),
        )

    def passed(self, expected: str = "") -> CaseResult:
        return self.result(Verdict.PASS, "", expected)

    def failed(
        self, message: str, expected: str = "", violated: tuple[str, ...] = ()
    ) -> CaseResult:
        """FAIL for a MUST, NON_STRICT for a SHOULD case, UNSUPPORTED for a MAY."""
        from conformance.model import Strength

        verdict = {
            Strength.MUST: Verdict.FAIL,
            Strength.SHOULD: Verdict.NON_STRICT,
            Strength.MAY: Verdict.UNSUPPORTED,
        }[self.case.strength]
        return self.result(verdict, message, expected, violated or self.case.requirements)
