"""The hostile peer's case registry and verdicts (the cases: hostile_cases_*.py).

Every case gets a fresh :class:`~.hostile_session.Session` (CAPABILITIES sent) and a seeded
``random.Random``, breaks one thing, and says what the specification requires:

* ``stream(sid, codes)`` — a stream error: ERROR with one of ``codes`` on ``sid``, and then
  a valid stream on the same session still completes (ATP-ERR-001, ATP-ERR-005);
* ``conn(codes)`` — a connection error: ERROR on stream 0 with one of ``codes``, then the
  transport closes (ATP-ERR-002, ATP-SESS-004);
* ``ok(sid)`` — nothing to refuse: the stream completes with its FINAL (ignored input:
  ATP-FRAME-010, ATP-FLAG-001, ATP-EXT-001, ...).

Codes are written from the spec where it names one; where two rules could apply (listed
in the report as ambiguities) the case accepts both. Cases take ``kind`` ("ws"/"quic")
into account: the JSON mapping and WebSocket message bounds are WebSocket only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .hostile_session import Session, syn
from .hostile_wire import CODES, ERROR, FIN, Closed

__all__ = ["CASES", "Case", "case", "conn", "ok", "opened", "run_case", "stream"]

EP, SEQR, EWIN, BIG = {"EPROTO"}, {"ESEQ_RETRY"}, {"EWINDOW"}, {"ETOOBIG"}


@dataclass
class Case:
    name: str
    fn: Callable[[Session, random.Random], None]
    kinds: tuple[str, ...] = ("ws", "quic")
    weight: float = 1.0


CASES: list[Case] = []


def case(kinds: tuple[str, ...] = ("ws", "quic"), weight: float = 1.0) -> Callable[..., Any]:
    def deco(
        fn: Callable[[Session, random.Random], None],
    ) -> Callable[[Session, random.Random], None]:
        CASES.append(Case(fn.__name__.removeprefix("c_"), fn, kinds, weight))
        return fn

    return deco


# -- verdicts -------------------------------------------------------------------------
def stream(s: Session, sid: int, codes: set[str], rule: str, *, probe: bool = True) -> None:
    if sid not in s.streams:
        s.track(sid)
    got = s.ended(sid)
    if got not in codes:
        s.violations.append(f"{rule}: stream {sid} ended {got!r}, spec: {sorted(codes)}")
        return
    if probe and s.closed is None:
        end = s.probe()
        if end != "fin":
            s.violations.append(
                f"ATP-ERR-001: session after a stream error ({rule}): probe {end!r}"
            )
    elif probe:
        s.violations.append(f"ATP-ERR-001: {rule} closed the session ({s.closed})")


def conn(s: Session, codes: set[str], rule: str) -> None:
    s.wait_closed(6.0)
    if s.closed is None:
        s.violations.append(f"{rule}: session still open after a connection error")
        return
    errs = s.session_errors
    if not errs:
        if s.link.kind == "quic" and s.closed.code is not None:
            want = {0x100 + i for i, c in enumerate(CODES) if c in codes}
            if s.closed.code not in want:
                s.violations.append(f"{rule}: QUIC close {s.closed.code:#x}, spec: {sorted(codes)}")
            return
        s.violations.append(f"{rule}/ATP-ERR-002: closed without ERROR on stream 0 ({s.closed})")
    elif errs[-1] not in codes:
        s.violations.append(f"{rule}: connection ERROR {errs[-1]}, spec: {sorted(codes)}")


def ok(s: Session, sid: int, rule: str, *, probe: bool = False) -> None:
    got = s.ended(sid)
    if got != "fin":
        s.violations.append(f"{rule}: stream {sid} ended {got!r}, spec: FINAL")
    if probe and s.closed is None and s.probe() != "fin":
        s.violations.append(f"{rule}: probe after ignored input did not complete")


def opened(s: Session, adapter: str = "slow", **kw: Any) -> int:
    """A stream opened with a valid SYN (on the slow adapter: it stays open a while)."""
    sid = s.new_sid()
    s.track(sid)
    s.link.send([syn(sid, "hold me open " * 6, adapter, **kw)])
    return sid


def run_case(c: Case, s: Session, rng: random.Random) -> list[str]:
    c.fn(s, rng)
    return s.violations


EXT_BAD = [
    b"\xc1\xa0",  # a tag
    b"\xbf\xff",  # indefinite map
    b"\xa2\x61a\x01\x61a\x02",  # duplicate key
    b"\xa1\x61a\xf9\x7e\x00",  # NaN
    b"\xa1\x61a\xf9\x7c\x00",  # infinity
    b"\xa0\x00",  # trailing bytes
    b"\x81\x01",  # not a map
    b"\xa1\x01\x01",  # a non-text key
    b"\xa1\x61a",  # truncated
    b"\xa1\x61a\x9f\xff",  # indefinite array inside
]


def _json_syn(alias: Any, **over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "v": 1,
        "stream_id": alias,
        "msg_seq": 1,
        "flags": ["SYN"],
        "qos": "gold",
        "ttl": 8,
        "meta": {"task_type": "qa", "adapters": ["echo"]},
        "payload": {"type": "agent.task", "content": {"prompt": "json"}},
    }
    f.update(over)
    return f


def _json_end(s: Session, alias: str, timeout: float = 8.0) -> str | None:
    """How the text stream just opened ended ("fin" or the ERROR code; None: it did not
    within ``timeout``). One text stream at a time: a stream-0 ERROR (no ``stream_num``)
    is the session's."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline and s.closed is None:
        try:
            frames = s.link.recv(0.5)
        except TimeoutError:
            continue
        except Closed as c:
            s.closed = c
            break
        for f in frames:
            if f.type == ERROR:
                err = f.ext.get("error", {})
                if not isinstance(err, dict) or err.get("code") not in CODES:
                    s.violations.append(f"ATP-ERR-001: text ERROR {err!r}")
                    continue
                if f.sid == 0 and "stream_num" not in f.ext:
                    s.session_errors.append(str(err.get("code")))
                    continue
                got.append(str(err.get("code")))
            elif f.flags & FIN:
                got.append("fin")
    return got[0] if got else None
