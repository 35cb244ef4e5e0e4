"""``atp frames``: encode and decode frames by hand, for debugging traffic.

::

    atp frames seeds --name syn | atp frames encode | atp frames decode
    atp frames decode capture.bin --json
    echo '{"stream_id":"st1","msg_seq":1,"flags":["SYN"],"payload":"hi"}' | atp frames encode

``encode`` reads JSON text frames (one object, an array of objects, JSON Lines, or several
objects one after another) and writes their binary encoding back to back, as one WebSocket
binary message would carry them. String stream ids are aliases mapped by one
:class:`~atp_proto.frames.JsonMapping`, so "st1" becomes 1 (spec §"JSON text mapping").
The binary encoding has no place for ``session_id``; it is dropped.

``decode`` reads hex, raw binary or JSON and prints every field with its name, plus the
byte offsets of header, ext and payload. Bad input is one line on stderr naming the frame
and the byte offset, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from atp_proto.cli import UsageError
from conformance.vectors import seed_frames

# The seed's example frames (seeds/002, section 3), verbatim. Normative: they MUST decode.
# One copy, in the language-neutral vectors (conformance/vectors/seed.json, package data).
SEEDS: Final = seed_frames()
SEED_SYN: Final = SEEDS["syn"]
SEED_PARTIAL: Final = SEEDS["partial"]
SEED_FINAL: Final = SEEDS["final"]

_HEX_DIGITS: Final = frozenset(string.hexdigits)
_WHITESPACE: Final = frozenset(string.whitespace)
_DUMP_LIMIT: Final = 256  # payload bytes shown in a hex dump unless --full


# -- arguments --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_frames_parser=parser)
    sub = parser.add_subparsers(dest="frames_command", metavar="ACTION")

    enc = sub.add_parser(
        "encode",
        help="JSON frame(s) -> binary (hex or raw)",
        description="Read JSON text frames (an object, an array, JSON Lines or objects one "
        "after another) and write their binary encoding back to back. Hex by default.",
    )
    enc.add_argument("file", nargs="?", default="-", metavar="FILE", help="input ('-': stdin)")
    fmt = enc.add_mutually_exclusive_group()
    fmt.add_argument("--hex", action="store_true", help="write hex, one line per frame (default)")
    fmt.add_argument("--raw", action="store_true", help="write raw bytes")
    enc.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    enc.set_defaults(_frames_run=_run_encode)

    dec = sub.add_parser(
        "decode",
        help="binary (hex or raw) or JSON frame(s) -> readable fields",
        description="Read hex (whitespace allowed), raw binary (frames back to back) or JSON "
        "text frames and print every field. The input kind is detected unless given.",
    )
    dec.add_argument("file", nargs="?", default="-", metavar="FILE", help="input ('-': stdin)")
    kind = dec.add_mutually_exclusive_group()
    kind.add_argument("--hex", action="store_true", help="input is hex")
    kind.add_argument("--raw", action="store_true", help="input is raw binary")
    kind.add_argument("--json-input", action="store_true", help="input is JSON text frame(s)")
    dec.add_argument(
        "--json", action="store_true", help="print a JSON array of frames (JSON text mapping)"
    )
    dec.add_argument(
        "--full", action="store_true", help=f"dump whole payloads (default: first {_DUMP_LIMIT} B)"
    )
    dec.set_defaults(_frames_run=_run_decode)

    seeds = sub.add_parser(
        "seeds",
        help="print the seed's example SYN / PARTIAL / FINAL frames (JSON)",
        description="Print the seed's example frames verbatim, ready to pipe into "
        "'atp frames encode'.",
    )
    seeds.add_argument(
        "--name", choices=[*SEEDS, "all"], default="all", help="which frame (default: all)"
    )
    seeds.set_defaults(_frames_run=_run_seeds)


def run(args: argparse.Namespace) -> int:
    handler = getattr(args, "_frames_run", None)
    if handler is None:
        args._frames_parser.print_help(sys.stderr)
        return 2
    try:
        result: int = handler(args)
    except BrokenPipeError:  # `atp frames decode ... | head`: the reader left, not an error
        _silence_stdout()
        return 0
    return result


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# -- input / output ---------------------------------------------------------------------


def _read_input(name: str) -> bytes:
    if name == "-":
        stdin = sys.stdin
        buf = getattr(stdin, "buffer", None)
        return buf.read() if buf is not None else stdin.read().encode()
    from atp_proto._cli._files import input_file

    try:
        return input_file(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None


def _write_bytes(data: bytes) -> None:
    sys.stdout.flush()
    buf = getattr(sys.stdout, "buffer", None)
    if buf is not None:
        buf.write(data)
        buf.flush()
    else:  # a text-only stream (rare): latin-1 keeps every byte value
        sys.stdout.write(data.decode("latin-1"))


def _json_values(text: str) -> Iterator[tuple[int, Any]]:
    """Every JSON value in ``text`` (one, an array's items, JSON Lines, or concatenated),
    with the line it starts on."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= end:
            return
        try:
            value, new_pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            raise UsageError("input JSON is nested too deeply") from None
        except ValueError as exc:  # a duplicate key or NaN (ATP-JSON-006)
            raise UsageError(f"input is not valid for ATP: {exc}") from None
        line = text.count("\n", 0, pos) + 1
        if isinstance(value, list):
            for item in value:
                yield line, item
        else:
            yield line, value
        pos = new_pos


def _unique_keys(items: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(items)
    if len(d) != len(items):
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise ValueError(f'duplicate key "{key}"')
            seen.add(key)
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _frames_from_json(data: bytes) -> list[Any]:
    from atp_proto.frames import JsonMapping, RemoteProtocolError, validate_frame

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"input is not UTF-8 text (byte offset {exc.start})") from None
    mapping = JsonMapping()
    frames = []
    for n, (line, obj) in enumerate(_json_values(text), 1):
        where = f"frame {n} (line {line})"
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: a frame must be a JSON object, got {type(obj).__name__}")
        try:
            frame = mapping.from_obj(obj)
            if frame is not None:
                validate_frame(frame)
        except RemoteProtocolError as exc:
            raise UsageError(f"{where}: {exc.code}: {exc.message}") from None
        if frame is None:
            raise UsageError(f"{where}: unknown frame type {obj.get('type')!r}")
        frames.append(frame)
    if not frames:
        raise UsageError("no frames in the input")
    return frames


# -- encode -----------------------------------------------------------------------------


def _run_encode(args: argparse.Namespace) -> int:
    from atp_proto._cli._files import output_file
    from atp_proto.frames import LocalProtocolError, encode_frame

    if args.out:  # before the input is read: stdin may be a long pipe
        output_file(args.out, "--out")
    frames = _frames_from_json(_read_input(args.file))
    chunks = []
    for n, frame in enumerate(frames, 1):
        try:
            chunks.append(encode_frame(frame))
        except LocalProtocolError as exc:
            raise UsageError(f"frame {n}: {exc.message}") from None
    if args.raw:
        data = b"".join(chunks)
        if args.out:
            _write_file(args.out, data)
        elif sys.stdout.isatty():
            raise UsageError("refusing to write raw bytes to a terminal (use --out or a pipe)")
        else:
            _write_bytes(data)
    else:
        text = "".join(c.hex() + "\n" for c in chunks)
        if args.out:
            _write_file(args.out, text.encode("ascii"))
        else:
            sys.stdout.write(text)
    return 0


def _write_file(name: str, data: bytes) -> None:
    try:
        Path(name).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {name}: {exc.strerror or exc}") from None


# -- decode -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decoded:
    frame: Any  # atp_proto.frames.Frame (imported lazily)
    offset: int
    ext_len: int


def _detect(data: bytes) -> str:
    stripped = data.lstrip()
    if stripped[:1] in (b"{", b"[") or stripped[:3] == b"\xef\xbb\xbf":
        return "json"
    # A binary frame starts with the version byte 0x01, so printable text is never binary:
    # treat it as hex, whose parser then names the first character that is not a hex digit.
    if stripped and all(0x20 <= b < 0x7F or chr(b) in _WHITESPACE for b in data):
        return "hex"
    return "raw"


def _unhex(data: bytes) -> bytes:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise UsageError(f"hex input has a non-ASCII byte at offset {exc.start}") from None
    start = len(text) - len(text.lstrip())
    if text[start : start + 2].lower() == "0x":  # one leading 0x is allowed
        start += 2
    else:
        start = 0
    digits = []
    for i, ch in enumerate(text[start:], start):
        if ch in _HEX_DIGITS:
            digits.append(ch)
        elif ch not in _WHITESPACE:
            raise UsageError(f"hex input has {ch!r} at character {i}, not a hex digit")
    if len(digits) % 2:
        raise UsageError(f"hex input has an odd number of hex digits ({len(digits)})")
    return bytes.fromhex("".join(digits))


def _decode_binary(data: bytes) -> tuple[list[_Decoded], str | None]:
    """Decode frames back to back; return those decoded and the first error (or None)."""
    from atp_proto.frames import (
        HEADER,
        HEADER_SIZE,
        FrameDecodeError,
        FrameDecoder,
        RemoteProtocolError,
        validate_frame,
    )

    out: list[_Decoded] = []
    dec = FrameDecoder()
    dec.feed(data)
    total = len(data)
    while True:
        offset = total - dec.buffered
        n = len(out) + 1
        try:
            frame = dec.next_frame()
        except FrameDecodeError as exc:
            return out, f"frame {n} at byte offset {offset}: {exc.code}: {exc.message}"
        if frame is None:
            break
        try:  # what a peer would refuse, the tool refuses: one validator for both
            validate_frame(frame)
        except RemoteProtocolError as exc:
            return out, f"frame {n} at byte offset {offset}: {exc.code}: {exc.message}"
        ext_len = HEADER.unpack_from(data, offset)[8]
        out.append(_Decoded(frame, offset, ext_len))
    left = dec.buffered
    if not left:
        if not out:
            return out, "no input bytes"
        return out, None
    offset = total - left
    if left < HEADER_SIZE:
        return out, (
            f"frame {n} at byte offset {offset} is truncated: {left} bytes, "
            f"the header alone is {HEADER_SIZE}"
        )
    ext_len, pay_len = HEADER.unpack_from(data, offset)[8:10]
    need = HEADER_SIZE + ext_len + pay_len
    return out, (
        f"frame {n} at byte offset {offset} is truncated: {left} of {need} bytes present "
        f"(header {HEADER_SIZE} B, ext {ext_len} B, payload {pay_len} B)"
    )


def _run_decode(args: argparse.Namespace) -> int:
    from atp_proto.frames import LocalProtocolError, encode_frame

    data = _read_input(args.file)
    kind = (
        "hex" if args.hex else "raw" if args.raw else "json" if args.json_input else _detect(data)
    )
    if kind == "json":
        frames = _frames_from_json(data)
        try:
            binary = b"".join(encode_frame(f) for f in frames)
        except LocalProtocolError as exc:
            raise UsageError(f"a frame cannot be encoded: {exc.message}") from None
    elif kind == "hex":
        binary = _unhex(data)
    else:
        binary = data
    decoded, error = _decode_binary(binary)
    if args.json:
        if error is not None:
            raise UsageError(error)
        from atp_proto.frames import JsonMapping

        mapping = JsonMapping()
        print(json.dumps([mapping.to_obj(d.frame) for d in decoded], indent=2, ensure_ascii=False))
        return 0
    source = {"hex": "hex", "raw": "raw binary", "json": "JSON, shown as binary"}[kind]
    if decoded:
        print(f"{len(decoded)} frame(s), {len(binary)} bytes ({source})")
    for n, d in enumerate(decoded, 1):
        print()
        print(_describe(n, d, full=args.full))
    if error is not None:
        sys.stdout.flush()
        raise UsageError(error)
    return 0


def _describe(n: int, d: _Decoded, *, full: bool) -> str:
    from atp_proto.frames import (
        HEADER_SIZE,
        Flags,
        FrameDecodeError,
        FrameType,
        QoS,
        decode_payload,
    )

    f = d.frame
    pay_len = len(f.payload)
    start, ext_end = d.offset, d.offset + HEADER_SIZE + d.ext_len
    end = ext_end + pay_len
    try:
        type_name = FrameType(f.type).name
    except ValueError:
        type_name = "unknown"
    names = [str(fl.name) for fl in Flags if f.flags & fl]  # wire order, SYN first
    if f.flags & 0x80:
        names.append("0x80 (reserved)")
    qos_name = QoS(f.qos).label if f.qos in tuple(QoS) else "unknown"
    lines = [
        f"frame {n}  bytes {start}..{end} ({end - start} B): header {HEADER_SIZE} B "
        f"@{start}, ext {d.ext_len} B @{start + HEADER_SIZE}, payload {pay_len} B @{ext_end}",
        f"  version    {f.version}",
        f"  type       {type_name} (0x{f.type:02x})",
        f"  flags      {'|'.join(names) or '-'} (0x{f.flags:02x})",
        f"  stream_id  {f.stream_id}",
        f"  msg_seq    {f.msg_seq}",
        f"  frag_seq   {f.frag_seq}",
        f"  qos        {qos_name} ({f.qos})",
        f"  ttl        {f'{f.ttl} s' if f.ttl else '0 (none)'}",
    ]
    if f.ext:
        lines.append(f"  ext        {d.ext_len} B CBOR map:")
        lines.extend("    " + line for line in _pretty(dict(f.ext)).splitlines())
    else:
        lines.append("  ext        (none)")
    if not pay_len:
        lines.append("  payload    (empty)")
    else:
        try:
            obj = decode_payload(f.payload, f.stream_id)
        except FrameDecodeError as exc:
            lines.append(f"  payload    {pay_len} B, not CBOR ({exc.message}):")
            lines.extend("    " + line for line in _hexdump(bytes(f.payload), full=full))
        else:
            lines.append(f"  payload    {pay_len} B CBOR:")
            lines.extend("    " + line for line in _pretty(obj).splitlines())
    return "\n".join(lines)


def _pretty(obj: Any) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            return f"h'{bytes(value).hex()}'"  # CBOR diagnostic notation for a byte string
        return repr(value)

    return json.dumps(obj, indent=2, ensure_ascii=False, default=default)


def _hexdump(data: bytes, *, full: bool) -> list[str]:
    shown = data if full else data[:_DUMP_LIMIT]
    lines = []
    for i in range(0, len(shown), 16):
        row = shown[i : i + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{i:08x}  {hexes:<47}  |{text}|")
    if len(shown) < len(data):
        lines.append(f"... {len(data) - len(shown)} more bytes (--full shows all)")
    return lines


# -- seeds ------------------------------------------------------------------------------


def _run_seeds(args: argparse.Namespace) -> int:
    names = list(SEEDS) if args.name == "all" else [args.name]
    sys.stdout.write("".join(SEEDS[name] for name in names))
    return 0
