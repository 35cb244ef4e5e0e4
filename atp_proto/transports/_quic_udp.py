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
  it would block.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable
from typing import Protocol

import trio

__all__ = ["Address", "Sendable", "UdpEndpoint", "open_udp_socket"]

Address = tuple[str, int]

#: datagrams read per wake-up before the connections act on them
RECV_BATCH = 256
RECV_SIZE = 65536


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


class UdpEndpoint:
    """A UDP socket, its receive loop (:meth:`receive_loop`) and its sender (:meth:`sender`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._dirty: dict[Sendable, None] = {}
        self._wake = trio.Event()
        self.closed = False

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
        sock = self.sock
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, {}
            now = trio.current_time()
            for conn in dirty:
                for data, addr in conn.take_datagrams(now):
                    while True:
                        try:
                            sock.sendto(data, addr)
                            break
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(sock)
                        except OSError as exc:  # unreachable peer, ICMP refusals: UDP drops
                            if exc.errno == errno.EINTR:
                                continue
                            break

    async def receive_loop(
        self, on_batch: Callable[[list[tuple[bytes, Address]], float], None]
    ) -> None:
        """Read datagrams until cancelled; hand each ready batch to ``on_batch``."""
        sock = self.sock
        recv = sock.recvfrom
        while True:
            await trio.lowlevel.wait_readable(sock)
            batch: list[tuple[bytes, Address]] = []
            while len(batch) < RECV_BATCH:
                try:
                    data, addr = recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ECONNREFUSED from an earlier send: nothing to read
                    continue
                batch.append((data, (str(addr[0]), int(addr[1]))))
            if batch:
                on_batch(batch, trio.current_time())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
