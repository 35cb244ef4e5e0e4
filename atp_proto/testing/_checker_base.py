"""The transport checker's vocabulary: the pair it drives, the peer's protocol, a check,
a binding, and the helpers the checks share (see :mod:`.transport_checker`)."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from atp_proto.frames import ErrorCode
from atp_proto.transports.base import ChannelData

__all__ = [
    "Binding",
    "Check",
    "Pair",
    "PairMaker",
    "Peer",
    "joined",
    "pattern",
    "receive_all",
    "send_unit",
    "until",
]


class Peer(Protocol):
    """The far end of a pair, as the checks read it. Channels are ATP stream ids (a
    message transport has one, 0)."""

    messages: list[bytes | str]  #: message transports: whole messages received, in order
    bytes_read: int

    @property
    def closes(self) -> list[int]:
        """Close codes received."""
        ...

    @property
    def fins(self) -> set[int]:
        """Channels the transport ended (per-stream transports)."""
        ...

    def received(self, channel: int) -> bytes: ...
    async def read_until(
        self, n_messages: int, chunk: int = 65536, delay: float = 0.0
    ) -> list[bytes | str]: ...
    async def read_until_bytes(self, channel: int, n_bytes: int) -> None: ...
    async def read_for(self, seconds: float) -> None: ...
    async def read_until_close_and_answer(self) -> None: ...
    async def send(self, channel: int, unit: bytes | str) -> None: ...
    async def send_parts(self, channel: int, parts: list[bytes | str]) -> None: ...
    async def stall(self) -> None: ...
    async def resume(self) -> None: ...
    async def vanish(self) -> None: ...


@dataclass
class Pair:
    transport: Any  #: the transport under test (``closed``; ``abort()`` if it has one)
    peer: Peer
    close_code: Callable[[ErrorCode], int]  #: the binding's close code of an ErrorCode
    channels: tuple[int, ...] = (0,)  #: channels open both ways (first: the control one)
    max_unit: int | None = None  #: the transport's receive limit on one unit
    #: a per-stream transport ends (FIN) a stream with its last item's ``end``; False: not
    #: by itself (QUIC's client end follows the router's FIN instead, ATP-QUIC-012)
    fin_on_end: bool = True

    @property
    def per_stream(self) -> bool:
        return bool(getattr(self.transport, "per_stream", False))


#: ``await make(max_unit=None)`` -> a fresh pair; the binding closes it at the end
PairMaker = Callable[..., Awaitable[Pair]]


@dataclass(frozen=True)
class Binding:
    """How to make pairs of one transport."""

    name: str
    make: PairMaker
    per_stream: bool = False


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[PairMaker], Awaitable[None]]
    messages_only: bool = False
    #: why a per-stream binding skips it
    why_not_per_stream: str = ""
    doc: str = field(default="", compare=False)

    def skip_reason(self, per_stream: bool) -> str | None:
        """Why a binding (per-stream or not) does not run this check; None: it must."""
        if self.messages_only and per_stream:
            return self.why_not_per_stream
        return None


def pattern(tag: int, size: int) -> bytes:
    """Bytes whose every 4-byte word says which unit and where: any torn or shifted
    framing shows up as a mismatch."""
    words = size // 8 + 1
    return b"".join(struct.pack("!II", tag, i) for i in range(words))[:size]


async def send_unit(pair: Pair, channel: int, data: bytes | str, end: bool = False) -> None:
    """One unit out through the transport: ``send`` (message transports, one channel) or
    ``send_streams`` (per-stream transports)."""
    if pair.per_stream:
        assert isinstance(data, bytes)
        await pair.transport.send_streams([(channel, data, end)])
    else:
        await pair.transport.send(data)


async def receive_all(pair: Pair, expected: dict[int, bytes]) -> dict[int, list[bytes | str]]:
    """Receive until every channel has its ``expected`` bytes; the units as received."""
    got: dict[int, list[bytes | str]] = {}

    def size(ch: int) -> int:
        return sum(len(u.encode() if isinstance(u, str) else u) for u in got.get(ch, []))

    while any(size(ch) < len(want) for ch, want in expected.items()):
        item = await pair.transport.receive()
        if isinstance(item, ChannelData):
            got.setdefault(item.channel, []).append(item.data)
        else:
            assert isinstance(item, (bytes, str)), f"unexpected {item!r}"
            got.setdefault(0, []).append(item)
    return got


def joined(units: list[bytes | str]) -> bytes:
    return b"".join(u.encode() if isinstance(u, str) else u for u in units)


async def until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not done():
            await trio.sleep(0.005)
    assert done(), f"waited {timeout:g} s in vain for {what}"
