"""Enumerations and small value types of the ATP v1 wire format (spec/atp-v1.md).

The ground floor of the core: every other module imports from here, this imports nothing
of the package.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeGuard

#: Payload bytes as held by a frame: ``bytes`` when built locally, a read-only
#: ``memoryview`` into the receive buffer when decoded (no copy).
Payload = bytes | memoryview

VERSION = 1


class FrameType(enum.IntEnum):
    """Frame types (spec §"Frame types"). Unknown values are ignored on receipt (ATP-EXT)."""

    DATA = 0x00
    WINDOW_UPDATE = 0x01
    CAPABILITIES = 0x02
    BUDGET_UPDATE = 0x03
    ERROR = 0x04


class Flags(enum.IntFlag):
    """Header flags. Reserved bits are sent as 0 and ignored on receipt."""

    SYN = 0x01
    ACK = 0x02
    MORE = 0x04
    FIN = 0x08
    RST = 0x10
    HB = 0x20
    CONT = 0x40


KNOWN_FLAGS = Flags(0x7F)

# Flag bits as plain ints: ``int & IntFlag`` runs IntFlag's Python-level operator (~1 µs),
# so the hot paths test these instead.
SYN_BIT: Final = int(Flags.SYN)
ACK_BIT: Final = int(Flags.ACK)
MORE_BIT: Final = int(Flags.MORE)
FIN_BIT: Final = int(Flags.FIN)
RST_BIT: Final = int(Flags.RST)
HB_BIT: Final = int(Flags.HB)
CONT_BIT: Final = int(Flags.CONT)
#: A DATA frame with any of these takes the receive path's general branch.
SLOW_BITS: Final = SYN_BIT | RST_BIT | CONT_BIT


class Encoding(enum.Enum):
    """How a stream's (or the session's) frames are encoded on the wire.

    ``BINARY`` is the 24-byte header + CBOR framing (ATP-FRAME); ``JSON`` the text mapping
    of a WebSocket text message (ATP-JSON), which only the WebSocket binding offers
    (a QUIC stream refuses it by construction, ATP-QUIC-003).
    """

    BINARY = "binary"
    JSON = "json"

    __hash__ = object.__hash__  # by identity: looked up per frame


def is_uint(value: object) -> TypeGuard[int]:
    """A non-negative int that is not a bool (CBOR/JSON integers as the spec counts them)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


#: Wire order used when listing flag names (JSON "flags" array).
FLAG_ORDER: tuple[Flags, ...] = (
    Flags.SYN,
    Flags.ACK,
    Flags.MORE,
    Flags.FIN,
    Flags.RST,
    Flags.HB,
    Flags.CONT,
)


class QoS(enum.IntEnum):
    """QoS lane carried in the header. UNSPECIFIED inherits the stream's lane."""

    UNSPECIFIED = 0
    GOLD = 1
    SILVER = 2
    BRONZE = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class ErrorCode(enum.StrEnum):
    """Error codes carried in ERROR frames (spec §"Errors")."""

    EPROTO = "EPROTO"
    ESEQ_RETRY = "ESEQ_RETRY"
    EWINDOW = "EWINDOW"
    EBUDGET = "EBUDGET"
    ETIMEOUT = "ETIMEOUT"
    EAGENTDOWN = "EAGENTDOWN"
    ESEC = "ESEC"
    ECONSENSUS = "ECONSENSUS"
    EPREEMPT = "EPREEMPT"
    EDRAINING = "EDRAINING"
    EWINDOW_AGENT = "EWINDOW_AGENT"
    ETOOBIG = "ETOOBIG"
    EINTERNAL = "EINTERNAL"


U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
MAX_STREAM_ID = 0x7FFF_FFFF
MAX_WINDOW = 0x7FFF_FFFF


@dataclass(frozen=True, slots=True)
class Limits:
    """Every size and count a peer controls, with the spec's defaults (spec §"Limits")."""

    max_frame_size: int = 1 << 20  #: ext + payload of one frame
    max_ext_size: int = 64 << 10
    max_message_size: int = 4 << 20  #: reassembled payload of one message
    max_streams: int = 100  #: concurrent streams per connection
    max_depth: int = 16  #: nesting depth of ext / JSON values
    initial_window: int = 256 << 10  #: credit in bytes granted to the peer per stream
    max_text_size: int = 1 << 20  #: one JSON text message
    max_hb_payload: int = 64
    max_alias_len: int = 128  #: JSON string stream id
    heartbeat_ms: int = 15_000
    idle_timeout_ms: int = 60_000

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"limit {name} must be a non-negative int, got {value!r}")
        if not 1 <= self.initial_window <= MAX_WINDOW:
            raise ValueError("initial_window must be in 1..2^31-1")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """A stream's budget window (SYN "window"). None means unlimited."""

    max_parallel: int | None = None
    max_tokens: int | None = None
    max_usd_micros: int | None = None

    def merged(self, update: BudgetWindow) -> BudgetWindow:
        """This window with the fields named in ``update`` replaced (WINDOW_UPDATE "window")."""
        return BudgetWindow(
            self.max_parallel if update.max_parallel is None else update.max_parallel,
            self.max_tokens if update.max_tokens is None else update.max_tokens,
            self.max_usd_micros if update.max_usd_micros is None else update.max_usd_micros,
        )

    def clamp(self, other: BudgetWindow) -> BudgetWindow:
        """Field-wise minimum of two windows (effective window = min of client, tenant, adapter)."""

        def lo(a: int | None, b: int | None) -> int | None:
            if a is None:
                return b
            if b is None:
                return a
            return min(a, b)

        return BudgetWindow(
            lo(self.max_parallel, other.max_parallel),
            lo(self.max_tokens, other.max_tokens),
            lo(self.max_usd_micros, other.max_usd_micros),
        )

    def to_dict(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.max_parallel is not None:
            out["max_parallel"] = self.max_parallel
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.max_usd_micros is not None:
            out["max_usd_micros"] = self.max_usd_micros
        return out
