"""An independent QUIC peer for the tests: aioquic's own asyncio API, in a thread.

Nothing here imports :mod:`atp_proto.transports` or :mod:`atp_proto.frames`: the frames
are built and parsed by hand (:mod:`atp_proto.testing.frames`, ``struct`` + ``cbor2``) and
the QUIC side is ``aioquic.asyncio.connect`` with a protocol that records what arrives
(:mod:`atp_proto.testing.quic_recorder`, aioquic only: test scaffolding shared with the
transport checker's QUIC pair, not our transport code). A
trio test runs a script with :func:`run_peer` (``trio.to_thread.run_sync``), so the
router under test and this peer share no event loop and no code on the QUIC path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

from atp_proto.testing.frames import RawFrame, parse_frames
from atp_proto.testing.quic_recorder import StreamRecorder

T = TypeVar("T")

__all__ = ["Recorder", "run_peer"]


class Recorder(StreamRecorder):
    """Records what arrives (:class:`StreamRecorder`), with the scripts' helpers."""

    # the script's helpers ------------------------------------------------------------

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()

    def next_stream(self) -> int:
        return self._quic.get_next_available_stream_id()

    def frames(self, stream_id: int) -> list[RawFrame]:
        return parse_frames(bytes(self.data.get(stream_id, b"")))

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError("the peer waited in vain")
            await asyncio.sleep(0.005)

    async def closed(self, timeout: float = 10.0) -> int | None:
        await self.until(lambda: self.close_code is not None, timeout)
        return self.close_code


def run_peer(
    port: int,
    cafile: str,
    script: Callable[[Recorder], Awaitable[T]],
    *,
    alpn: str = "atp/1",
    max_datagram_size: int | None = None,
) -> T:
    """Connect to ``127.0.0.1:port`` with aioquic's asyncio client and run ``script``
    (blocking: call it through ``trio.to_thread.run_sync``)."""

    async def main() -> T:
        conf = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name="localhost")
        if max_datagram_size:
            conf.max_datagram_size = max_datagram_size
        conf.load_verify_locations(cafile=cafile)
        async with connect(
            "127.0.0.1", port, configuration=conf, create_protocol=Recorder, wait_connected=True
        ) as proto:
            assert isinstance(proto, Recorder)
            return await script(proto)

    return asyncio.run(main())
