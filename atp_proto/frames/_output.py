"""The connection's output: one queue of encoded frames tagged with their ATP stream,
and the two views of it that the bindings write (ATP-WS-011, ATP-QUIC-005/006).

Every frame the core sends is encoded when queued (so a text reply carries the alias its
stream had then) and appended as ``(stream_id, data, end_stream)``. A WebSocket binding
takes :meth:`Output.coalesced`: consecutive binary frames joined into as few messages as
fit the peer's message limit, each text frame alone, whatever their streams. A QUIC binding
takes :meth:`Output.per_stream`: each ATP stream's frames on its own QUIC stream (stream 0
on the control stream), with ``end_stream`` after its last frame. Both keep queue order,
and both drain the whole queue.
"""

from __future__ import annotations

from ._errors import LocalProtocolError
from ._types import ErrorCode

__all__ = ["WS_MESSAGE_SLACK", "Output"]

#: A binary WebSocket message may be this much larger than max_frame_size (ATP-WS-011):
#: room for a frame's header and ext, and for coalescing small frames.
WS_MESSAGE_SLACK = 65536


class Output:
    """Queued frames, encoded, in order (see the module docstring)."""

    __slots__ = ("items", "size")

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes | str, bool]] = []
        self.size = 0  #: bytes queued (text counted in chars)

    def push(self, stream_id: int, data: bytes | str, end_stream: bool) -> None:
        self.items.append((stream_id, data, end_stream))
        self.size += len(data)

    def _take(self) -> list[tuple[int, bytes | str, bool]]:
        items = self.items
        self.items = []
        self.size = 0
        return items

    def coalesced(self, cap: int) -> list[bytes | str]:
        """The WebSocket view: binary frames joined up to ``cap`` bytes per message (a
        frame larger than the cap goes alone; a frame is never split), text frames one
        ``str`` each.

        Fast path (the router's writer, once per pass): everything queued fits one
        message and is binary, so it is one join, without looking at each frame; a text
        frame makes the join fail before anything is taken, and the general path
        decides. The same result as :meth:`coalesced_general` (a differential test in
        tests/frames holds them to it)."""
        items = self.items
        if not items:
            return []
        if self.size <= cap:
            try:
                data = b"".join([item for _, item, _ in items])  # type: ignore[misc]
            except TypeError:  # a text frame is queued
                pass
            else:
                self.items = []
                self.size = 0
                return [data]
        return self.coalesced_general(cap)

    def coalesced_general(self, cap: int) -> list[bytes | str]:
        """:meth:`coalesced` without its fast path."""
        out: list[bytes | str] = []
        binary: list[bytes] = []
        size = 0
        for _, item, _ in self._take():
            if isinstance(item, str):
                if binary:
                    out.append(b"".join(binary) if len(binary) > 1 else binary[0])
                    binary, size = [], 0
                out.append(item)
            else:
                if binary and size + len(item) > cap:  # ATP-WS-011
                    out.append(b"".join(binary) if len(binary) > 1 else binary[0])
                    binary, size = [], 0
                binary.append(item)
                size += len(item)
        if binary:
            out.append(b"".join(binary) if len(binary) > 1 else binary[0])
        return out

    def per_stream(self) -> list[tuple[int, bytes, bool]]:
        """The QUIC view: ``(stream_id, bytes, end_stream)``, consecutive frames of one
        stream joined, in queue order (a run of one frame is passed on as it is, not
        copied). One pass over the queue, its items unpacked once: the writer takes a
        few hundred frames per pass on a busy router, so this is a per-frame cost
        (~0.08 us a frame, was ~0.25; tests/frames/test_output_fast_path.py holds it to
        the plain algorithm).

        Raises:
            LocalProtocolError: a JSON text frame is queued (ATP-QUIC-003); nothing is
                taken then, nothing queued is lost.
        """
        out: list[tuple[int, bytes, bool]] = []
        append = out.append
        run: list[bytes] = []
        run_sid = -1
        run_end = False
        for sid, data, end in self.items:
            if isinstance(data, str):
                raise LocalProtocolError(
                    ErrorCode.EPROTO, "a JSON frame cannot go on a per-stream transport"
                )
            if sid != run_sid:
                if run:
                    append((run_sid, b"".join(run) if len(run) > 1 else run[0], run_end))
                run = [data]
                run_sid = sid
            else:
                run.append(data)
            run_end = end
        if run:
            append((run_sid, b"".join(run) if len(run) > 1 else run[0], run_end))
        self.items = []
        self.size = 0
        return out
