"""UDP segmentation offload of the QUIC socket layer (atp_proto/transports/_quic_udp.py):
GSO sends and GRO receives on real loopback sockets, against a receiver with GRO and a
plain one, and the fall-back when the kernel refuses a segmented send. Linux only (the
probe says no elsewhere, and these tests are skipped)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from atp_proto.transports._quic_udp import (
    Address,
    UdpEndpoint,
    open_udp_socket,
    probe_offload,
    split_truncated,
)

SO_NO_CHECK = 11  # Linux: no UDP checksum on send, which the kernel's GSO refuses (EINVAL)


def probe_kernel() -> tuple[bool, bool]:
    """(GSO, GRO) of this kernel, on a fresh UDP socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return probe_offload(sock)
    finally:
        sock.close()


GSO, GRO = probe_kernel()
needs_gso = pytest.mark.skipif(not (GSO and GRO), reason="no UDP GSO / GRO in this kernel")


class Burst:
    """What the sender takes of one connection: a fixed list of datagrams, once."""

    def __init__(self, datagrams: list[tuple[bytes, Address]]) -> None:
        self.datagrams = datagrams

    def take_datagrams(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.datagrams = self.datagrams, []
        return out


def _payloads(sizes: list[int], tag: int) -> list[bytes]:
    return [bytes([tag, i]) + bytes([i & 0xFF]) * (n - 2) for i, n in enumerate(sizes)]


async def _collect(ep: UdpEndpoint, want: int, got: list[tuple[bytes, Address]]) -> None:
    done = trio.Event()

    def on_batch(batch: list[tuple[bytes, Address]], now: float) -> None:
        got.extend(batch)
        if len(got) >= want:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ep.receive_loop, on_batch)
        await done.wait()
        nursery.cancel_scope.cancel()


async def _plain_collect(sock: socket.socket, want: int, got: list[bytes]) -> None:
    while len(got) < want:
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                got.append(sock.recvfrom(65536)[0])
            except BlockingIOError:
                break


async def _send_and_receive(sender: UdpEndpoint, sizes_a: list[int], sizes_b: list[int]) -> Any:
    """``sender`` sends runs to a GRO endpoint (A) and a plain socket (B), interleaved
    as one connection's datagrams would be; what each received, in order."""
    a = UdpEndpoint(open_udp_socket("127.0.0.1", 0))
    b = open_udp_socket("127.0.0.1", 0)
    try:
        to_a, to_b = a.address, b.getsockname()[:2]
        pa, pb = _payloads(sizes_a, 1), _payloads(sizes_b, 2)
        half = len(pa) // 2
        datagrams = [(d, to_a) for d in pa[:half]] + [(d, to_b) for d in pb]
        datagrams += [(d, to_a) for d in pa[half:]]
        got_a: list[tuple[bytes, Address]] = []
        got_b: list[bytes] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender.sender)
                nursery.start_soon(_collect, a, len(pa), got_a)
                nursery.start_soon(_plain_collect, b, len(pb), got_b)
                await trio.sleep(0)
                sender.mark(Burst(datagrams))
                while len(got_a) < len(pa) or len(got_b) < len(pb):
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        assert {src for _, src in got_a} == {sender.address}
        return [d for d, _ in got_a], pa, got_b, pb, a
    finally:
        a.close()
        b.close()


# runs the sender must cut: equal sizes with a shorter last one, a larger datagram
# starting a new run, more than fit in one GSO send (61 x 1,200 > GSO_MAX_BYTES), a
# lone datagram
SIZES_A = [8000] * 5 + [300] + [8000, 9000, 9000] + [1200] * 60 + [1200, 500]
SIZES_B = [1200] * 3 + [77]


@needs_gso
async def test_gso_sends_reach_a_gro_receiver_and_a_plain_one_unchanged() -> None:
    """Every datagram arrives once, whole and in order at both receivers; the sender made
    fewer system calls than datagrams (GSO), the GRO receiver fewer reads than datagrams
    (it got several glued together and cut them by the kernel's size)."""
    sender = UdpEndpoint(open_udp_socket("127.0.0.1", 0))
    try:
        assert sender.gso and sender.gro
        got_a, pa, got_b, pb, a = await _send_and_receive(sender, SIZES_A, SIZES_B)
    finally:
        sender.close()
    assert got_a == pa and got_b == pb
    assert sender.datagrams_sent == len(pa) + len(pb)
    assert sender.send_calls < sender.datagrams_sent // 3
    assert a.datagrams_received == len(pa) and a.receive_calls < len(pa)


@needs_gso
async def test_a_refused_gso_send_turns_gso_off_and_sends_one_by_one() -> None:
    """A socket without send checksums (SO_NO_CHECK): the kernel refuses a segmented send
    (EINVAL), as a device path without checksum offload does (EIO). GSO goes off for the
    socket and every datagram still arrives, in order."""
    sock = open_udp_socket("127.0.0.1", 0)
    sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    sender = UdpEndpoint(sock)
    try:
        assert sender.gso
        got_a, pa, got_b, pb, _ = await _send_and_receive(sender, SIZES_A, SIZES_B)
    finally:
        sender.close()
    assert not sender.gso
    assert got_a == pa and got_b == pb
    assert sender.send_calls == sender.datagrams_sent == len(pa) + len(pb)


async def test_offload_off_is_one_call_per_datagram() -> None:
    """``offload=False`` (or a kernel without it): plain sendto / recvfrom, the same
    datagrams."""
    sender = UdpEndpoint(open_udp_socket("127.0.0.1", 0), offload=False)
    try:
        assert not (sender.gso or sender.gro)
        got_a, pa, got_b, pb, _ = await _send_and_receive(sender, SIZES_A, SIZES_B)
    finally:
        sender.close()
    assert got_a == pa and got_b == pb
    assert sender.send_calls == sender.datagrams_sent == len(pa) + len(pb)


# -- a read the buffer cut (MSG_TRUNC; session 7) ---------------------------------------
#
# The GRO receive split a cut read by the kernel's segment size as if it were whole: the
# last piece, part of a datagram, went to aioquic as a datagram. Only whole segments go on
# now; the cut one is counted in ``datagrams_truncated``.


def test_split_truncated_keeps_the_whole_segments_only() -> None:
    seg = bytes(range(100))
    assert split_truncated(seg * 3 + seg[:40], 100) == ([seg, seg, seg], 1)
    assert split_truncated(seg * 2, 100) == ([seg, seg], 0)  # cut between two segments
    assert split_truncated(seg[:60], 100) == ([], 1)  # shorter than one segment
    assert split_truncated(seg, 0) == ([], 1)  # no GRO size: one datagram, cut


async def _receive_until_marker(
    sender: UdpEndpoint, receiver: UdpEndpoint, bursts: list[list[bytes]], marker: bytes
) -> list[bytes]:
    """``sender`` sends each burst as one connection's datagrams (a GSO run each), then
    ``marker`` alone; what ``receiver`` handed on until the marker, in order."""
    got: list[bytes] = []
    seen = trio.Event()

    def on_batch(batch: list[tuple[bytes, Address]], now: float) -> None:
        for data, _ in batch:
            got.append(data)
            if data == marker:
                seen.set()

    to = receiver.address
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.sender)
            nursery.start_soon(receiver.receive_loop, on_batch)
            await trio.sleep(0)
            for burst in bursts:
                sender.mark(Burst([(d, to) for d in burst]))
                await trio.sleep(0.05)  # one pass per burst: each its own GSO send
            sender.mark(Burst([(marker, to)]))
            await seen.wait()
            nursery.cancel_scope.cancel()
    return got


@needs_gso
async def test_a_gro_read_cut_by_a_small_buffer_drops_and_counts_its_cut_segment() -> None:
    """Runs of 5 x 8,000 bytes reach a GRO socket as one 40,000-byte read each; a 20,000
    byte buffer holds two whole segments and half a third: the two go on, the half is
    dropped and counted, the last two the kernel discarded. A run cut exactly between
    segments (24,000: three whole) loses none of what was read."""
    sender = UdpEndpoint(open_udp_socket("127.0.0.1", 0))
    receiver = UdpEndpoint(open_udp_socket("127.0.0.1", 0), recv_size=20_000)
    exact = UdpEndpoint(open_udp_socket("127.0.0.1", 0), recv_size=24_000)
    try:
        assert sender.gso and receiver.gro
        runs = [_payloads([8000] * 5, tag) for tag in (1, 2)]
        got = await _receive_until_marker(sender, receiver, runs, b"end")
        got_exact = await _receive_until_marker(sender, exact, runs[:1], b"end")
    finally:
        for ep in (sender, receiver, exact):
            ep.close()
    assert got == [*runs[0][:2], *runs[1][:2], b"end"]
    assert receiver.datagrams_truncated == 2
    assert got_exact == [*runs[0][:3], b"end"] and exact.datagrams_truncated == 0


async def test_a_plain_read_cut_by_a_small_buffer_drops_and_counts_the_datagram() -> None:
    """Without GRO a datagram larger than the read is dropped (it was handed on cut, as
    recvfrom silently cuts); the ones that fit go on."""
    sender = UdpEndpoint(open_udp_socket("127.0.0.1", 0), offload=False)
    receiver = UdpEndpoint(open_udp_socket("127.0.0.1", 0), offload=False, recv_size=2000)
    try:
        small = _payloads([1500, 3000, 1999, 2000, 2001], 3)
        got = await _receive_until_marker(sender, receiver, [small], b"end")
    finally:
        sender.close()
        receiver.close()
    assert got == [small[0], small[2], small[3], b"end"]
    assert receiver.datagrams_truncated == 2
