"""One UDP socket driven from trio for aioquic: the receive loop and the sender task.

Both QUIC ends (:mod:`.quic_server`, :mod:`.quic_client`) sit on a :class:`UdpEndpoint`.
It heeds the pitfalls measured with aioquic on trio (``../shared/DESIGN.md``):

* one clock: every ``now`` given to aioquic is ``trio.current_time()``;
* one receive loop per socket, reading *every* datagram that is ready before it lets the
  connections act on them (one ``on_batch`` call per wake-up, not one per datagram);
* one sender task per socket: a connection that has something to send is only *marked*
  (:meth:`UdpEndpoint.mark`), and the sender drains ``datagrams_to_send`` of every marked
  connection in one pass — so many ATP frames queued in one task step leave coalesced in
  full packets, with one wake-up per batch;
* the socket is a non-blocking stdlib socket used directly (``recvfrom`` / ``sendto``
  without a trio checkpoint per datagram), waiting through ``trio.lowlevel`` only when
  it would block;
* on Linux, UDP segmentation offload both ways when the kernel has it (probed on the
  socket, :func:`probe_offload`): the sender hands a connection's run of equal-size
  datagrams to one ``sendmsg`` with a ``UDP_SEGMENT`` size (GSO: one system call for up
  to :data:`GSO_MAX_SEGMENTS` datagrams; the kernel, or the NIC, cuts them), and the
  socket has ``UDP_GRO`` on, so one ``recvmsg`` may return several datagrams of a flow
  glued together, cut again here by the size the kernel reports. A read the buffer was too
  small for (``MSG_TRUNC``) keeps only its whole segments: the cut one is dropped and
  counted (``datagrams_truncated``); the kernel discarded those past it (QUIC
  retransmits what they carried). A peer sees ordinary datagrams either way. A
  send the path refuses (``EIO``: no checksum offload on the device; ``EINVAL``: a size
  over the path's MTU) turns GSO off for the socket and goes out datagram by datagram.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
from collections.abc import Callable
from typing import Protocol

import trio

__all__ = [
    "Address",
    "Sendable",
    "UdpEndpoint",
    "open_udp_socket",
    "probe_offload",
    "split_truncated",
]

Address = tuple[str, int]

#: datagrams read per wake-up before the connections act on them
RECV_BATCH = 256
#: bytes of one read: a whole UDP datagram (at most 65,507 bytes) always fits, and so does
#: a GRO read of the kernel's usual 64 KB; a larger one comes back cut (MSG_TRUNC)
RECV_SIZE = 65536
#: the largest UDP payload (IPv4): a read of this size cannot cut a datagram
_MAX_UDP_PAYLOAD = 65_507
_MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)

#: Linux's UDP socket options (linux/udp.h); the stdlib has no names for them
UDP_SEGMENT = 103
UDP_GRO = 104
#: the most datagrams one GSO send may carry (the kernel's UDP_MAX_SEGMENTS) and their
#: bytes at most (below UDP/IPv4's 65,507)
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65_000
#: errors of a GSO send that mean the path cannot segment: GSO off, send one by one
_GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.EOPNOTSUPP})
#: offload where the kernel has it (False: plain sendto / recvfrom everywhere)
OFFLOAD = True
_GRO_ANC = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")


def split_truncated(data: bytes, seg: int) -> tuple[list[bytes], int]:
    """The intact datagrams of a read the buffer cut (MSG_TRUNC: the kernel held more than
    ``data``), and how many it cut (0 or 1). ``seg``: the kernel's GRO segment size (0:
    none, the read is one datagram). All segments but a read's last are ``seg`` bytes, so
    one read in full ends before the cut and is intact; the one the cut falls inside is
    dropped. Those after it are gone without a trace (the kernel discards the rest of the
    read), and QUIC retransmits what they carried."""
    n = len(data)
    if seg <= 0 or seg > n:
        return [], 1  # one datagram, or a read shorter than one segment: cut
    whole = n - n % seg
    return [data[o : o + seg] for o in range(0, whole, seg)], int(whole < n)


class Sendable(Protocol):
    """What the sender needs of one QUIC connection."""

    def take_datagrams(self, now: float) -> list[tuple[bytes, Address]]: ...


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (port 0: any)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def probe_offload(sock: socket.socket) -> tuple[bool, bool]:
    """(GSO, GRO) usable on UDP socket ``sock``; GRO is switched on when it is. Linux
    only (4.18+ for GSO, 5.0+ for GRO); anything else, or an error, is (False, False)."""
    if not sys.platform.startswith("linux") or not _GRO_ANC:
        return False, False
    try:
        sock.getsockopt(socket.IPPROTO_UDP, UDP_SEGMENT)
        gso = True
    except OSError:
        gso = False
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
        gro = True
    except OSError:
        gro = False
    return gso, gro


class UdpEndpoint:
    """A UDP socket, its receive loop (:meth:`receive_loop`) and its sender (:meth:`sender`).

    ``offload``: use GSO / GRO where the kernel has them (see the module); ``recv_size``:
    the bytes of one read. The counters (``datagrams_sent``, ``send_calls``,
    ``datagrams_received``, ``receive_calls``) say what the offload saved;
    ``datagrams_truncated`` counts the datagrams a read cut (MSG_TRUNC), dropped."""

    def __init__(
        self, sock: socket.socket, *, offload: bool = True, recv_size: int = RECV_SIZE
    ) -> None:
        self.sock = sock
        self._dirty: dict[Sendable, None] = {}
        self._wake = trio.Event()
        self.closed = False
        self.gso, self.gro = probe_offload(sock) if offload and OFFLOAD else (False, False)
        self.datagrams_sent = 0
        self.send_calls = 0
        self.datagrams_received = 0
        self.receive_calls = 0
        self.datagrams_truncated = 0
        self.recv_size = recv_size

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def mark(self, conn: Sendable) -> None:
        """``conn`` may have datagrams to send: the sender takes them on its next pass."""
        self._dirty[conn] = None
        self._wake.set()

    def send_now(self, data: bytes, addr: Address) -> None:
        """Send one datagram outside any connection (Retry, version negotiation,
        stateless reset); dropped when the socket is full, as UDP may."""
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    async def sender(self) -> None:
        """The one sender task of the socket."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, {}
            now = trio.current_time()
            for conn in dirty:
                datagrams = conn.take_datagrams(now)
                if self.gso and len(datagrams) > 1:
                    await self._send_segmented(datagrams)
                else:
                    for data, addr in datagrams:
                        await self._send_one(data, addr)

    async def _send_one(self, data: bytes, addr: Address) -> None:
        sock = self.sock
        self.datagrams_sent += 1
        self.send_calls += 1
        while True:
            try:
                sock.sendto(data, addr)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:  # unreachable peer, ICMP refusals: UDP drops
                if exc.errno != errno.EINTR:
                    return

    async def _send_segmented(self, datagrams: list[tuple[bytes, Address]]) -> None:
        """``datagrams`` in runs for GSO: consecutive ones to one address, all of the
        first one's size but the last, which may be shorter (what the kernel cuts)."""
        i, n = 0, len(datagrams)
        while i < n:
            first, addr = datagrams[i]
            size = len(first)
            run = [first]
            total = size
            i += 1
            while i < n and len(run) < GSO_MAX_SEGMENTS:
                data, to = datagrams[i]
                length = len(data)
                if to != addr or length > size or total + length > GSO_MAX_BYTES:
                    break
                run.append(data)
                total += length
                i += 1
                if length < size:
                    break
            if len(run) == 1 or not self.gso:
                for data in run:
                    await self._send_one(data, addr)
            elif not await self._send_run(run, size, addr):
                self.gso = False  # the path cannot segment: from now on one by one
                for data in run:
                    await self._send_one(data, addr)

    async def _send_run(self, run: list[bytes], size: int, addr: Address) -> bool:
        """One GSO ``sendmsg`` of ``run``; False when the path refused segmentation."""
        sock = self.sock
        anc = [(socket.IPPROTO_UDP, UDP_SEGMENT, _U16.pack(size))]
        while True:
            try:
                sock.sendmsg(run, anc, 0, addr)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                if exc.errno in _GSO_REFUSED:
                    return False
                break  # unreachable peer, ICMP refusals: UDP drops
        self.datagrams_sent += len(run)
        self.send_calls += 1
        return True

    async def receive_loop(
        self, on_batch: Callable[[list[tuple[bytes, Address]], float], None]
    ) -> None:
        """Read datagrams until cancelled; hand each ready batch to ``on_batch``."""
        if self.gro:
            await self._receive_loop_gro(on_batch)
            return
        sock = self.sock
        size = self.recv_size
        if size < _MAX_UDP_PAYLOAD:  # a read may cut a datagram: its flags tell
            await self._receive_loop_checked(on_batch)
            return
        recv = sock.recvfrom
        while True:
            await trio.lowlevel.wait_readable(sock)
            batch: list[tuple[bytes, Address]] = []
            calls = 0
            while len(batch) < RECV_BATCH:
                calls += 1
                try:
                    data, addr = recv(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ECONNREFUSED from an earlier send: nothing to read
                    continue
                batch.append((data, (str(addr[0]), int(addr[1]))))
            self.receive_calls += calls
            if batch:
                self.datagrams_received += len(batch)
                on_batch(batch, trio.current_time())

    async def _receive_loop_checked(
        self, on_batch: Callable[[list[tuple[bytes, Address]], float], None]
    ) -> None:
        """:meth:`receive_loop` without GRO and a read smaller than a datagram may be: a
        datagram the read cut (MSG_TRUNC) is dropped and counted."""
        sock = self.sock
        recv = sock.recvmsg
        size = self.recv_size
        while True:
            await trio.lowlevel.wait_readable(sock)
            batch: list[tuple[bytes, Address]] = []
            calls = 0
            while len(batch) < RECV_BATCH:
                calls += 1
                try:
                    data, _anc, flags, addr = recv(size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ECONNREFUSED from an earlier send: nothing to read
                    continue
                if flags & _MSG_TRUNC:
                    self.datagrams_truncated += 1
                    continue
                batch.append((data, (str(addr[0]), int(addr[1]))))
            self.receive_calls += calls
            if batch:
                self.datagrams_received += len(batch)
                on_batch(batch, trio.current_time())

    async def _receive_loop_gro(
        self, on_batch: Callable[[list[tuple[bytes, Address]], float], None]
    ) -> None:
        """:meth:`receive_loop` with ``UDP_GRO`` on: a read may hold several datagrams
        of one sender, each ``gso_size`` bytes (the kernel's control message) but the
        last. A read cut by the buffer (MSG_TRUNC) keeps its whole segments only
        (:func:`split_truncated`)."""
        sock = self.sock
        recv = sock.recvmsg
        size = self.recv_size
        anc_size = _GRO_ANC
        gro_type, udp = UDP_GRO, socket.IPPROTO_UDP
        unpack = _I32.unpack_from
        while True:
            await trio.lowlevel.wait_readable(sock)
            batch: list[tuple[bytes, Address]] = []
            calls = 0
            while len(batch) < RECV_BATCH:
                calls += 1
                try:
                    data, anc, flags, addr = recv(size, anc_size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ECONNREFUSED from an earlier send: nothing to read
                    continue
                src = (str(addr[0]), int(addr[1]))
                seg = 0
                for level, kind, cdata in anc:
                    if kind == gro_type and level == udp and len(cdata) >= 4:
                        seg = unpack(cdata)[0]
                if flags & _MSG_TRUNC:
                    whole, cut = split_truncated(data, seg)
                    self.datagrams_truncated += cut
                    batch.extend((d, src) for d in whole)
                elif 0 < seg < len(data):
                    batch.extend((data[o : o + seg], src) for o in range(0, len(data), seg))
                else:
                    batch.append((data, src))
            self.receive_calls += calls
            if batch:
                self.datagrams_received += len(batch)
                on_batch(batch, trio.current_time())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
