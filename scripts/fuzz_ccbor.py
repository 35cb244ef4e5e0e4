"""Fuzz the C CBOR accelerator under AddressSanitizer + UBSan, against the pure-Python path.

    .venv/bin/python scripts/fuzz_ccbor.py [SECONDS] [SEED]     (default 60 s, seed 1)
    .venv/bin/python scripts/fuzz_ccbor.py SECONDS SEED --debug-malloc

``--debug-malloc`` runs the installed module (no sanitizer build) under Python's debug
allocators and development mode instead (``PYTHONMALLOC=debug``, ``-X dev``): buffer
overruns and underruns of Python's own blocks, use of freed memory (filled with a
pattern) and API misuse warnings, where no compiler with ASAN is at hand.

Builds ``atp_proto/frames/_ccbor.c`` with ``-fsanitize=address,undefined`` into a temporary
directory, then runs itself again with the sanitizer runtimes preloaded and
``PYTHONMALLOC=malloc`` (so that every Python object, and every bytes buffer the encoder
writes, is a malloc block ASAN guards). The loop feeds the sanitized module random values
(``dumps``), their encodings cut, flipped and with hostile heads inserted, random bytes
(``loads`` at several depth limits, payload and ext rules) and random frames and headers
(``header``, ``frame_encode``, ``frame_at``), items of a hostile CBOR grammar
(:mod:`atp_proto.testing.hostile_cbor`: non-minimal heads, tags, indefinite lengths, duplicate
keys in other widths, invalid UTF-8, NaN and -0.0 in three widths, counts off by one, huge
lengths), and checks every answer against the
pure-Python path (``_cbor._loads_py`` / ``_dumps_py``, ``_frame._header_py``,
``_codec.encode_frame_py``). Any memory error aborts with ASAN's report; any disagreement
fails an assertion. Needs gcc and the Python headers (issue 10 item 6).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "atp_proto" / "frames" / "_ccbor.c"
INSERTS = [
    *(b"\xc0", b"\x9f", b"\xbf", b"\x7f", b"\xff", b"\xf7", b"\xe0", b"\x1c", b"\xf8\x01"),
    *(b"\x1b" + b"\xff" * 8, b"\x5b" + b"\xff" * 8, b"\x9b\x00\x00\x00\x00\xff\xff\xff\xff"),
    b"\xbb" + b"\x7f" * 8,
]


def _build_and_reexec(seconds: str, seed: str) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ccbor-asan-"))
    so = tmp / "_ccbor_asan.so"
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        ["gcc", *flags, "-fPIC", "-shared", f"-I{include}", str(SOURCE), "-o", str(so)],
        check=True,
    )
    runtimes = [
        subprocess.run(
            ["gcc", f"-print-file-name={lib}"], check=True, capture_output=True, text=True
        ).stdout.strip()
        for lib in ("libasan.so", "libubsan.so")
    ]
    env = {
        **os.environ,
        "LD_PRELOAD": " ".join(runtimes),
        "ASAN_OPTIONS": "detect_leaks=0",  # the interpreter itself keeps memory at exit
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PYTHONMALLOC": "malloc",
        "ATP_PURE_CBOR": "1",  # the package's own path is the pure one: the reference
        "CCBOR_ASAN_MODULE": str(so),
    }
    return subprocess.run(
        [sys.executable, __file__, seconds, seed], env=env, check=False
    ).returncode


def _reexec_debug_malloc(seconds: str, seed: str) -> int:
    import atp_proto.frames._ccbor as installed  # built by ./dev setup

    env = {
        **os.environ,
        "PYTHONMALLOC": "debug",
        "ATP_PURE_CBOR": "1",  # the package's own path is the pure one: the reference
        "CCBOR_ASAN_MODULE": str(installed.__file__),
    }
    return subprocess.run(
        [sys.executable, "-X", "dev", __file__, seconds, seed], env=env, check=False
    ).returncode


def _load(path: str) -> Any:
    name = "atp_proto.frames._ccbor"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _fuzz(seconds: float, seed: int) -> None:
    import cbor2

    from atp_proto.frames import Frame, _cbor, _codec, _frame
    from atp_proto.testing.hostile_cbor import hostile_item, same

    asan = _load(os.environ["CCBOR_ASAN_MODULE"])
    assert _cbor.IMPLEMENTATION == "python"
    errors = _cbor.DECODE_ERRORS
    rnd = random.Random(seed)

    def text() -> str:
        chars = (
            chr(rnd.choice([rnd.randint(32, 126), rnd.randint(128, 0x10FFFF)]))
            for _ in "x" * rnd.randint(0, 40)
        )
        return "".join(chars).encode("utf-8", "replace").decode("utf-8")

    def value(depth: int = 0) -> Any:
        r = rnd.random()
        if depth > 5 or r < 0.5:
            return rnd.choice(
                [
                    None,
                    rnd.random() < 0.5,
                    rnd.randint(-(2**64), 2**64 - 1),
                    rnd.randint(-30, 30),
                    rnd.random() * 10 ** rnd.randint(-300, 300),
                    math.nan,
                    math.inf,
                    text(),
                    rnd.randbytes(rnd.randint(0, 40)),
                    "type",
                ]
            )
        if r < 0.75:
            return [value(depth + 1) for _ in range(rnd.randint(0, 6))]
        keys = ["a", "type", "text", str(rnd.randint(0, 99))]
        return {rnd.choice(keys): value(depth + 1) for _ in range(rnd.randint(0, 6))}

    def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
        try:
            return "ok", fn(*args)
        except errors:
            return "refused", None

    deadline = time.monotonic() + seconds
    n = grammar = accepted = 0
    while time.monotonic() < deadline:
        v = value()
        for finite in (False, True):
            c, p = outcome(asan.dumps, v, 16, finite), outcome(_cbor._dumps_py, v, 16, finite)
            assert c == p, (v, finite, c, p)
        raw = bytearray(cbor2.dumps(v))
        for _ in range(rnd.randint(0, 4)):
            op, at = rnd.randrange(4), rnd.randint(0, len(raw))
            if op == 0:
                del raw[at:]
            elif op == 1 and at < len(raw):
                raw[at] ^= rnd.randint(1, 255)
            elif op == 2:
                raw[at:at] = rnd.choice(INSERTS)
            else:
                raw += rnd.randbytes(rnd.randint(1, 4))
        data = bytes(raw) if rnd.random() < 0.8 else rnd.randbytes(rnd.randint(0, 64))
        for depth in (1, 4, 16, 64):
            for ext in (False, True):
                c, p = (
                    outcome(asan.loads, data, depth, ext),
                    outcome(_cbor._loads_py, data, depth, ext),
                )
                assert c[0] == p[0] and same(c[1], p[1]), (data.hex(), depth, ext, c, p)
        for _ in range(4):  # the hostile grammar, whole or cut
            data = hostile_item(rnd, 0, rnd.choice((2, 6, 12)))
            if rnd.random() < 0.2:
                data = data[: rnd.randint(0, len(data))]
            depth, ext = rnd.choice((3, 16, 64)), rnd.random() < 0.5
            c, p = outcome(asan.loads, data, depth, ext), outcome(_cbor._loads_py, data, depth, ext)
            assert c[0] == p[0] and same(c[1], p[1]), (data.hex(), depth, ext, c, p)
            grammar += 1
            accepted += c[0] == "ok"
        if rnd.random() < 0.5:
            buf = rnd.randbytes(rnd.randint(0, 40))
        else:
            frame = Frame(
                rnd.randint(0, 5),
                rnd.randint(0, 255),
                rnd.randint(0, 2**31 - 1),
                payload=rnd.randbytes(rnd.randint(0, 30)),
            )
            buf = _codec.encode_frame_py(frame) + rnd.randbytes(rnd.randint(0, 8))
        if rnd.random() < 0.3:
            buf = buf[: rnd.randint(0, len(buf))]
        got = asan.frame_at(
            Frame,
            buf,
            rnd.randint(0, 3),
            rnd.choice([0, 10, 100]),
            _codec._TYPE_AT,
            _codec._QOS_AT,
            {},
        )
        assert got is None or (type(got) is Frame and isinstance(got.payload, memoryview))
        fields = [rnd.choice([rnd.randint(-1, 2**32 + 1), True, None, 2**70]) for _ in range(8)]
        assert asan.header(*fields) == _frame._header_py(*fields)
        payload = rnd.choice([b"x" * rnd.randint(0, 9), memoryview(b"abc")])
        built = Frame._make((*fields[:7], rnd.choice([{}, {"a": 1}]), payload, fields[7]))
        encoded = asan.frame_encode(built)
        assert encoded is None or encoded == _codec.encode_frame_py(built)
        n += 1
    under = (
        "PYTHONMALLOC=debug, -X dev"
        if os.environ.get("PYTHONMALLOC") == "debug"
        else "ASAN + UBSan"
    )
    print(
        f"fuzz_ccbor: {n} rounds ({8 * n} decodes, {grammar} grammar items of which "
        f"{accepted} accepted, {2 * n} encodes, {3 * n} frame shortcut calls) in "
        f"{seconds:g} s, seed {seed}, under {under}: no finding"
    )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--debug-malloc"]
    secs = args[0] if args else "60"
    seed_arg = args[1] if len(args) > 1 else "1"
    if "CCBOR_ASAN_MODULE" not in os.environ:
        if "--debug-malloc" in sys.argv:
            sys.exit(_reexec_debug_malloc(secs, seed_arg))
        sys.exit(_build_and_reexec(secs, seed_arg))
    sys.path.insert(0, str(ROOT))
    _fuzz(float(secs), int(seed_arg))
