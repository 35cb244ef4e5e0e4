"""One gRPC call on an HTTP/2 stream: the 5-byte length-prefix framing, the inbox of
received messages and the flow-control credit they give back when consumed.

Received DATA is acknowledged (WINDOW_UPDATE) only when the caller consumes the message it
carried, so a slow consumer stops the server at one stream window per call: memory stays
bounded. Credit goes back in batches of :data:`ACK_BATCH` bytes (h2 sends WINDOW_UPDATE
only once half a window is consumed anyway), and always before the caller waits. The
reader task (:class:`~._h2.H2Channel`) calls ``on_*``; the caller calls ``recv`` and
``close``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import unquote

import h2.errors
import trio

from .status import HTTP_TO_GRPC, GrpcStatus, RpcError, pushback_ms, retry_info_ms

if TYPE_CHECKING:
    from ._h2 import H2Channel

__all__ = ["ACK_BATCH", "Call"]

ACK_BATCH = 8192  #: bytes of consumed DATA given back to the server at once


class Call:
    """One HTTP/2 stream. Messages wait in ``inbox`` with the flow-control credit they
    return when consumed."""

    __slots__ = (
        "acked_on_close",
        "buf",
        "conn",
        "consumed",
        "ended",
        "headers_ok",
        "http_status",
        "inbox",
        "lot",
        "outcome",
        "pending_ack",
        "stream_id",
        "unacked",
        "window_lot",
    )

    def __init__(self, conn: H2Channel, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.inbox: deque[tuple[bytes, int]] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.window_lot = trio.lowlevel.ParkingLot()
        self.buf = bytearray()
        self.pending_ack = 0  # credit of a message still incomplete
        self.unacked = 0  # credit of consumed messages not yet given back
        self.outcome: RpcError | None = None  # set when the call ended (status OK too)
        self.ended = False  # the server finished the stream (or it was reset / lost)
        self.headers_ok = False
        self.http_status = 0
        self.consumed = 0
        self.acked_on_close = False

    # called by the reader -----------------------------------------------------------

    def on_data(self, data: bytes, flow_len: int) -> None:
        if not self.headers_ok:  # not a gRPC response (HTTP error): drop the body
            if flow_len:
                self.conn.ack(self.stream_id, flow_len)
            return
        buf = self.buf
        if not buf and len(data) > 5 and not data[0]:
            n = int.from_bytes(data[1:5], "big")
            if n == len(data) - 5 and n <= self.conn.max_message_size:  # the usual case
                self.inbox.append((data[5:], flow_len + self.pending_ack))
                self.pending_ack = 0
                if self.lot:
                    self.lot.unpark_all()
                return
        buf += data
        self.pending_ack += flow_len
        got = 0
        while len(buf) >= 5:
            n = int.from_bytes(buf[1:5], "big")
            if n > self.conn.max_message_size:  # whole or not: refused on its prefix
                self.fail(GrpcStatus.RESOURCE_EXHAUSTED, f"message of {n} bytes is too large")
                self.conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
                return
            if len(buf) < 5 + n:
                break
            if buf[0]:
                self.fail(
                    GrpcStatus.INTERNAL, "compressed message but no compression was negotiated"
                )
                self.conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
                return
            msg = bytes(buf[5 : 5 + n])
            del buf[: 5 + n]
            self.inbox.append((msg, 0))
            got += 1
        if got:
            # the credit of this DATA (and of earlier partial ones) returns when the
            # last message it completed is consumed
            msg, _ = self.inbox[-1]
            self.inbox[-1] = (msg, self.pending_ack)
            self.pending_ack = 0
            self.lot.unpark_all()
        elif self.pending_ack:
            # bytes of a message still incomplete: acknowledge now, or a message larger
            # than the window would deadlock (bounded by max_message_size)
            self.conn.ack(self.stream_id, self.pending_ack)
            self.pending_ack = 0

    def on_headers(self, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        status = grpc_status = None
        message = ""
        retry: int | None = None
        for k, v in headers:
            if k == b":status":  # h2 checks neither value: a malformed one fails this call
                status = _code(v)
            elif k == b"grpc-status":
                grpc_status = _code(v)
            elif k == b"grpc-message":
                message = unquote(v.decode("utf-8", "replace"))
            elif k == b"grpc-retry-pushback-ms":  # gRPC A6 server pushback
                retry = pushback_ms(v)
            elif k == b"grpc-status-details-bin" and retry is None:
                retry = retry_info_ms(v)  # google.rpc.RetryInfo (richer error model)
        if status is not None:
            self.http_status = status
            if status < 0:
                self.outcome = RpcError(GrpcStatus.INTERNAL, "malformed :status from the server")
                return
            if status != 200:
                code = HTTP_TO_GRPC.get(status, GrpcStatus.UNKNOWN)
                self.outcome = RpcError(code, f"HTTP status {status}")
                return
            self.headers_ok = True
        if grpc_status is not None and self.outcome is None:
            if grpc_status < 0:
                self.outcome = RpcError(
                    GrpcStatus.INTERNAL, "malformed grpc-status from the server"
                )
            else:
                self.outcome = RpcError(grpc_status, message, retry)

    def on_end(self) -> None:
        self.ended = True
        if self.outcome is None:
            if self.buf:
                self.outcome = RpcError(GrpcStatus.INTERNAL, "stream ended inside a message")
            else:
                self.outcome = RpcError(GrpcStatus.UNKNOWN, "server sent no grpc-status")
        self.lot.unpark_all()
        self.window_lot.unpark_all()

    def fail(self, status: int, message: str, *, transparent: bool = False) -> None:
        if not self.ended:
            self.ended = True
            if self.outcome is None or self.outcome.status == GrpcStatus.OK:
                self.outcome = RpcError(status, message, transparent=transparent)
            self.lot.unpark_all()
            self.window_lot.unpark_all()

    # called by the caller -----------------------------------------------------------

    async def recv(self) -> bytes | None:
        """The next message, or None at the end of an OK call.

        Raises:
            RpcError: the call failed.
        """
        while True:
            if self.inbox:
                msg, ack = self.inbox.popleft()
                if ack or self.unacked:
                    # credit goes back in batches (h2 sends WINDOW_UPDATE only once
                    # half a window is consumed anyway), and always before we wait
                    ack += self.unacked
                    if ack >= ACK_BATCH or not self.inbox:
                        self.unacked = 0
                        self.conn.ack(self.stream_id, ack)
                    else:
                        self.unacked = ack
                self.consumed += 1
                if self.consumed & 15 == 0:
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.checkpoint_if_cancelled()
                return msg
            if self.ended:
                assert self.outcome is not None
                await trio.lowlevel.checkpoint()
                if self.outcome.status == GrpcStatus.OK:
                    return None
                raise self.outcome
            await self.lot.park()

    def close(self) -> None:
        """Forget the call: reset it if the server has not finished it; give back the
        flow-control credit of messages never consumed."""
        conn = self.conn
        if not self.ended:
            self.ended = True
            if self.outcome is None:
                self.outcome = RpcError(GrpcStatus.CANCELLED, "cancelled")
            conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
        if not self.acked_on_close:
            self.acked_on_close = True
            unacked = sum(a for _, a in self.inbox) + self.pending_ack + self.unacked
            self.unacked = 0
            self.inbox.clear()
            if unacked:
                conn.ack(self.stream_id, unacked)
        conn.calls.pop(self.stream_id, None)
        conn.slot_lot.unpark_all()


def _code(value: bytes) -> int:
    """A ``:status`` or ``grpc-status`` value as a number; -1 when it is not 1 to 9 ASCII
    digits (``int()`` also takes signs, spaces and ``_``, and raises ValueError on more
    than 4300 digits, which in the reader would drop the connection)."""
    return int(value) if len(value) <= 9 and value.isdigit() else -1
