"""Type stub of the C accelerator ``_ccbor.c`` (strict CBOR, ATP-FRAME-005/006)."""

from collections.abc import Mapping
from typing import Any

from ._types import Payload

def loads(data: Payload, max_depth: int, ext: bool, /) -> Any: ...
def dumps(obj: Any, max_depth: int, finite: bool, /) -> bytes: ...
def header(
    type: int,
    flags: int,
    stream_id: int,
    msg_seq: int,
    frag_seq: int,
    qos: int,
    ttl: int,
    version: int,
    /,
) -> int | None: ...
def frame_encode(frame: tuple[Any, ...], /) -> bytes | None: ...
def frame_at(
    cls: type[Any],
    buf: bytes,
    pos: int,
    fast_max: int,
    type_at: tuple[int | None, ...],
    qos_at: tuple[int | None, ...],
    empty: Mapping[str, Any],
    /,
) -> Any: ...
