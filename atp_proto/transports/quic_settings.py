"""The router's QUIC tuning: the ``[transport.quic]`` table of ``atp serve --config``.

What ``atp serve`` takes as flags for QUIC (``--quic HOST:PORT``, ``--quic-cert``,
``--quic-key``) a config file gives in the same table, beside the settings that have no
flag::

    [transport.quic]
    listen = "0.0.0.0:7443"     # UDP; "off": no QUIC (default: beside WebSocket with a cert)
    cert = "quic.pem"           # default: the [tls] certificate (paths: relative to the file)
    key = "quic.key"
    retry = true                # address validation with Retry tokens (RFC 9000 §8.1)
    idle_timeout_s = 65.0       # QUIC idle timeout; default: the session's idle timeout + 5 s
    handshake_timeout_s = 10.0  # default: [router] handshake_timeout_s
    max_datagram_size = 1200    # UDP payload we send; default: 8000 on loopback, else 1200
    max_data = 4194304          # QUIC connection flow-control window (bytes)
    max_stream_data = 1048576   # QUIC per-stream flow-control window (bytes)
    udp_offload = true          # Linux UDP GSO / GRO where the kernel has them

ATP's own limits stay in ``[limits]``: the number of concurrent streams (``max_streams``)
and the credit windows (``initial_window``) apply over QUIC as over WebSocket; QUIC's flow
control comes on top (spec §13.2). Flags win over the file. This module does not import
aioquic, so reading a configuration stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["QuicSettings", "QuicSettingsError", "parse_quic_table"]

#: the smallest UDP payload QUIC allows (RFC 9000 §14) and the largest UDP can carry
MIN_DATAGRAM = 1200
MAX_DATAGRAM = 65_527
#: flow-control windows: at least one 16 KiB frame, at most 1 GiB
MIN_WINDOW = 16 * 1024
MAX_WINDOW = 1 << 30


class QuicSettingsError(ValueError):
    """A ``[transport.quic]`` value is wrong (the message names it, for a person)."""


@dataclass(frozen=True)
class QuicSettings:
    """QUIC settings of the router with no flag of their own (None: derived, see module)."""

    idle_timeout_s: float | None = None
    handshake_timeout_s: float | None = None
    #: the file said ``listen = "off"``: no QUIC even with a certificate (a ``--quic``
    #: flag still wins)
    disabled: bool = False
    max_datagram_size: int | None = None
    max_data: int = 4 * 1024 * 1024
    max_stream_data: int = 1024 * 1024
    #: UDP segmentation offload (GSO on send, GRO on receive) where the kernel has it;
    #: False: one system call per datagram (see atp_proto/transports/_quic_udp.py)
    udp_offload: bool = True

    def validate(self) -> QuicSettings:
        """This, or QuicSettingsError naming the first wrong value."""
        for name in ("idle_timeout_s", "handshake_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise QuicSettingsError(f"transport.quic.{name} must be positive, got {value!r}")
        size = self.max_datagram_size
        if size is not None and not MIN_DATAGRAM <= size <= MAX_DATAGRAM:
            raise QuicSettingsError(
                f"transport.quic.max_datagram_size must be within {MIN_DATAGRAM}..{MAX_DATAGRAM}"
                f", got {size}"
            )
        for name in ("max_data", "max_stream_data"):
            value = getattr(self, name)
            if not MIN_WINDOW <= value <= MAX_WINDOW:
                raise QuicSettingsError(
                    f"transport.quic.{name} must be within {MIN_WINDOW}..{MAX_WINDOW}, got {value}"
                )
        if self.max_stream_data > self.max_data:
            raise QuicSettingsError(
                "transport.quic.max_stream_data must not exceed max_data "
                f"({self.max_stream_data} > {self.max_data})"
            )
        return self

    def idle_timeout(self, session_idle_ms: int) -> float:
        """The QUIC idle timeout (s): the setting, else the session's idle timeout + 5 s
        (at least 10 s), so that ATP's idle rule (ETIMEOUT, ATP-TIME-004) ends a session
        before QUIC silently drops it."""
        if self.idle_timeout_s is not None:
            return self.idle_timeout_s
        return max(session_idle_ms / 1000 + 5, 10.0)


_FLOATS = ("idle_timeout_s", "handshake_timeout_s")
_INTS = ("max_datagram_size", "max_data", "max_stream_data")
_BOOLS = ("udp_offload",)
_KEYS = ("listen", "cert", "key", "retry", *_FLOATS, *_INTS, *_BOOLS)


def parse_quic_table(path: str, data: Any) -> dict[str, Any]:
    """``[transport.quic]`` of config file ``path`` as settings: ``listen`` as
    ``("HOST", PORT)`` or ``"off"``, ``cert`` / ``key`` as paths (relative to the file's
    folder), ``retry`` as bool, ``settings`` a validated :class:`QuicSettings`.

    Raises:
        QuicSettingsError: an unknown key, a wrong type or value (the message names it).
    """
    if not isinstance(data, Mapping):
        raise QuicSettingsError(f"{path}: [transport.quic] must be a table, got {data!r}")
    unknown = set(data) - set(_KEYS)
    if unknown:
        raise QuicSettingsError(
            f"{path}: [transport.quic]: unknown setting(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(_KEYS)})"
        )
    out: dict[str, Any] = {}
    if "listen" in data:
        out["listen"] = _listen(path, data["listen"])
    base = os.path.dirname(os.path.abspath(path))
    for key in ("cert", "key"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value:
                raise QuicSettingsError(f"{path}: transport.quic.{key} must be a file name")
            out[key] = os.path.join(base, value)
    if ("cert" in out) != ("key" in out):
        raise QuicSettingsError(f"{path}: transport.quic.cert and key go together")
    if "retry" in data:
        if not isinstance(data["retry"], bool):
            raise QuicSettingsError(f"{path}: transport.quic.retry must be true or false")
        out["retry"] = data["retry"]
    fields: dict[str, Any] = {}
    for key in _FLOATS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise QuicSettingsError(f"{path}: transport.quic.{key} must be a number")
            fields[key] = float(value)
    for key in _INTS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise QuicSettingsError(f"{path}: transport.quic.{key} must be an integer")
            fields[key] = value
    for key in _BOOLS:
        if key in data:
            if not isinstance(data[key], bool):
                raise QuicSettingsError(f"{path}: transport.quic.{key} must be true or false")
            fields[key] = data[key]
    try:
        out["settings"] = QuicSettings(**fields).validate()
    except QuicSettingsError as exc:
        raise QuicSettingsError(f"{path}: {exc}") from None
    return out


def _listen(path: str, value: Any) -> tuple[str, int] | str:
    if value == "off" or value is False:
        return "off"
    text = str(value) if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise QuicSettingsError(
            f'{path}: transport.quic.listen: expected "HOST:PORT" or "off", got {value!r}'
        )
    return host.strip("[]") or "127.0.0.1", int(port)
