"""The values the routing stages pass each other, and the stream error they raise."""

from __future__ import annotations

from dataclasses import dataclass, field

from atp_proto.adapters import Adapter, AdapterError, CostEstimate
from atp_proto.frames import ATPError, ErrorCode

__all__ = ["Candidate", "Outcome", "StreamFailed", "adapter_failure"]

#: ATP codes an adapter failure may end a stream with (ATP-ADAPT-011); any other
#: code is reported as EAGENTDOWN.
_ADAPTER_CODES = {
    ErrorCode.EAGENTDOWN,
    ErrorCode.EWINDOW_AGENT,
    ErrorCode.ETIMEOUT,
    ErrorCode.EPROTO,
    ErrorCode.ESEC,
}
#: ... and those of them a retry may cure: they carry retry_after_ms (§11, ATP-ERR-004);
#: the others (ETIMEOUT, EPROTO, ESEC) never do (ATP-ERR-009).
_RETRYABLE = {ErrorCode.EAGENTDOWN: 1000, ErrorCode.EWINDOW_AGENT: 1000}


class StreamFailed(ATPError):
    """Routing ends the stream with this ERROR (code, message, retry hint)."""

    def __init__(
        self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(code, message, retry_after_ms=retry_after_ms)


def adapter_failure(last: AdapterError | None, message: str) -> StreamFailed:
    """The stream error when no adapter took over: the mapped code of the last failure
    (ATP-ADAPT-011), with the adapter's retry hint when the code admits a retry (a
    default one for EAGENTDOWN / EWINDOW_AGENT, ATP-ERR-004) and none otherwise."""
    code = ErrorCode.EAGENTDOWN
    if last is not None and str(last.code) in _ADAPTER_CODES:
        code = ErrorCode(str(last.code))
    default = _RETRYABLE.get(code)
    if default is None:
        return StreamFailed(code, message)
    hint = last.retry_after_ms if last is not None else None
    return StreamFailed(code, message, hint if hint and hint > 0 else default)


@dataclass
class Candidate:
    """An adapter the stream may use, with its guard-banded estimate once preflight ran."""

    name: str
    adapter: Adapter
    estimate: CostEstimate | None = None
    guarded_tokens: float = 0.0
    guarded_usd: float = 0.0
    error: str = ""
    failure: AdapterError | None = None


@dataclass
class Outcome:
    """What one adapter call gave: its text, confidence and usage, or its failure."""

    adapter: str
    text: list[str] = field(default_factory=list)
    confidence: float = 0.0
    tokens: int = 0
    usd_micros: int = 0
    finished: bool = False
    error: AdapterError | None = None
    latency_ms: float = 0.0  #: from the call's start to its end (the learner observes it)
    cancelled: bool = False  #: a hedge race's loser, cancelled by the router (ATP-STRAT-006)

    @property
    def answer(self) -> str:
        return "".join(self.text)
