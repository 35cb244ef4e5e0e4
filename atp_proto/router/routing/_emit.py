"""A stream's output as the stages use it: notices, the first frame's ext, and the
write-stall bound (a client that stops reading must not hold an admission slot forever)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from atp_proto.frames import ErrorCode
from atp_proto.messages import partial_body

from ._model import StreamFailed
from ._output import StreamOutput

__all__ = ["Emitter"]


class Emitter:
    """Per stream: the output, the count of PARTIALs sent, the client's waits."""

    __slots__ = ("chunk_no", "client_wait_s", "first_ext", "output", "stall_s")

    def __init__(self, output: StreamOutput, stall_s: float) -> None:
        self.output = output
        self.stall_s = stall_s
        #: said on the stream's first DATA frame (ATP-SEC-015: a lowered lane)
        self.first_ext: dict[str, Any] | None = None
        self.chunk_no = 0
        self.client_wait_s = 0.0

    def take_first_ext(self) -> dict[str, Any] | None:
        ext, self.first_ext = self.first_ext, None
        return ext

    def notice(self, content: Mapping[str, Any], confidence: float) -> None:
        """A PARTIAL that is not an adapter's text (failover, escalation)."""
        self.output.send_partial(partial_body(content, confidence), ext=self.take_first_ext())
        self.chunk_no += 1

    async def wait_writable(self) -> None:
        """Wait for the client's credit / the session's room, at most ``stall_s``.

        Raises:
            StreamFailed: ETIMEOUT when the client took no output for that long.
        """
        if self.output.can_write():
            return
        start = trio.current_time()
        with trio.move_on_after(self.stall_s) as scope:
            await self.output.writable()
        self.client_wait_s += trio.current_time() - start
        if scope.cancelled_caught:
            raise StreamFailed(
                ErrorCode.ETIMEOUT,
                f"the client took no output for {self.stall_s:g} s (no credit granted)",
            )
