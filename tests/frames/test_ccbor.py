"""Issue 10 item 6: the C accelerator ``_ccbor`` against the pure-Python path, differentially.

``atp_proto/frames/_ccbor.c`` decodes and encodes strict CBOR (ATP-FRAME-005, ATP-FRAME-006)
in one pass; ``_cbor._loads_py`` / ``_dumps_py`` (cbor2 plus a walk) are the fallback. Both
must give the same value or both refuse, on generated valid values, on their encodings cut
and mutated, and on arbitrary bytes; the encoder must write exactly what ``cbor2.dumps``
writes. The frame shortcuts (``header``, ``frame_encode``, ``frame_at``) are held to the
Python code they stand in for. The strictness tests of test_codec*.py and
test_seed_and_codec.py run on both paths (their ``cbor_path`` fixture).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import subprocess
import sys
import tracemalloc
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from atp_proto.frames import (
    ErrorCode,
    Flags,
    Frame,
    FrameDecodeError,
    FrameType,
    LocalProtocolError,
    QoS,
    _cbor,
    _codec,
    _frame,
)
from atp_proto.testing.hostile_cbor import hostile_item, same

from .helpers import CI

ccbor = pytest.importorskip("atp_proto.frames._ccbor", reason="the C accelerator is not built")

# -- strategies ---------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.integers(-30, 30)
    | st.floats()  # NaN and the infinities too: allowed in payloads, refused in ext
    | st.text(max_size=40)
    | st.sampled_from(["type", "content", "text", "chunk", "adapter", "é", "\U0001f600"])
    | st.binary(max_size=40)
)
values = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(["a", "type"]), kids, max_size=5)
    ),
    max_leaves=20,
)


#: exact comparison of decoded values: types, NaN equal to NaN, the sign of a zero
_same = same


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except _cbor.DECODE_ERRORS:
        return "refused", None


def _agree(data: bytes, max_depth: int = 16) -> None:
    for ext in (False, True):
        c = _outcome(ccbor.loads, data, max_depth, ext)
        py = _outcome(_cbor._loads_py, data, max_depth, ext)
        assert c[0] == py[0], (data.hex(), ext, c, py)
        assert _same(c[1], py[1]), (data.hex(), c, py)


# -- decoding -----------------------------------------------------------------------------


@CI
@given(values, st.sampled_from([1, 2, 3, 16, 64]))
def test_valid_values_decode_alike(value: Any, max_depth: int) -> None:
    """[ATP-FRAME-005, ATP-FRAME-006] What cbor2 encodes, both paths decode to the same value
    or both refuse (too deep, NaN in ext, not a map for ext)."""
    data = cbor2.dumps(value)
    _agree(data, max_depth)
    if max_depth == 64:  # deep enough for every generated value: a payload always decodes
        assert _same(ccbor.loads(data, 64, False), value)


@CI
@given(values, st.data())
def test_cut_and_mutated_encodings_are_refused_alike(value: Any, data: st.DataObject) -> None:
    """[ATP-FRAME-006] Truncations, flipped bytes, inserted heads (tags, indefinite
    lengths, breaks, simple values, huge lengths) and trailing bytes: same answer."""
    raw = bytearray(cbor2.dumps(value))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["cut", "flip", "insert", "append"]))
        at = data.draw(st.integers(0, len(raw)))
        if op == "cut":
            del raw[at:]
        elif op == "flip" and at < len(raw):
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw[at:at] = data.draw(
                st.sampled_from(
                    [
                        *(b"\xc0", b"\xd8\x1c", b"\x9f", b"\xbf", b"\x7f", b"\xff", b"\xf7"),
                        *(b"\xe0", b"\x1b" + b"\xff" * 8, b"\x5b" + b"\xff" * 8),
                        *(b"\x9b" + b"\xff" * 8, b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00"),
                        *(b"\xf9\x7e\x00", b"\x1c"),
                    ]
                )
            )
        else:
            raw += data.draw(st.binary(min_size=1, max_size=3))
    _agree(bytes(raw))


@CI
@given(st.randoms(use_true_random=False), st.sampled_from([2, 6, 12]), st.booleans())
def test_hostile_grammar_items_decode_alike(rnd: Any, levels: int, cut: bool) -> None:
    """[ATP-FRAME-005, ATP-FRAME-006] Items of a hostile CBOR grammar (non-minimal heads,
    64-bit edges, invalid and surrogate UTF-8, counts off by one, indefinite lengths,
    duplicate keys in other head widths, keys not text, tags, NaN / -0.0 / subnormals in
    three widths, simple values, huge lengths), whole or cut: the C and the pure path give
    the same value (-0.0 kept) or both refuse, at several depth limits."""
    data = hostile_item(rnd, 0, levels)
    if cut:
        data = data[: rnd.randint(0, len(data))]
    for max_depth in (3, 16, 64):
        _agree(data, max_depth)


@CI
@given(st.binary(max_size=64))
@example(b"")
@example(b"\xa2\x61a\x01\x61a\x02")  # duplicate key
@example(b"\xa1\x01\x02")  # integer key
@example(b"\xa1\x62\xed\xa0\x01")  # a UTF-8-encoded surrogate as the key
@example(b"\x62\xc3\x28")  # invalid UTF-8
@example(b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff")  # -2**64
@example(b"\xfa\x7f\x80\x00\x00")  # single-precision infinity
@example(b"\xf8\x20")  # a two-byte simple value
def test_arbitrary_bytes_decode_alike(data: bytes) -> None:
    """[ATP-FRAME-006] Any bytes at all: the same value or both refuse, never a crash."""
    _agree(data)
    _agree(data, 1)


def test_refusals_say_why() -> None:
    """The C path's reasons, as the callers show them (atp frames decode prints them)."""
    cases = {
        "a2616b01616b02": "duplicate",
        "bf616b01ff": "indefinite",
        "a1616bc001": "tags are not allowed",
        "a1616bf97e00": "not a finite number",
        "a10102": "not a text string",
        "a1616b01ff": "trailing",
        "a1616bf7": "undefined",
        "a1616b": "premature end",
        "a1616b81": "premature end",
        "a1616b9b00000000ffffffff": "premature end",  # 2^32 items announced, none there
        "bb00000000ffffffff": "premature end",
        "82": "ext must be a CBOR map",
    }
    for hexdata, why in cases.items():
        with pytest.raises(ValueError, match=why):
            ccbor.loads(bytes.fromhex(hexdata), 16, True)
    assert ccbor.loads(b"\x82\x01\x02", 16, False) == [1, 2]
    with pytest.raises(ValueError, match=r"deeper than 3 \(the maximum depth\)"):
        ccbor.loads(cbor2.dumps([[[0]]]), 3, False)  # the 0 is at depth 4
    assert ccbor.loads(cbor2.dumps([[0]]), 3, False) == [[0]]
    with pytest.raises(ValueError, match="max_depth"):
        ccbor.loads(b"\x00", 0, False)
    with pytest.raises(TypeError):
        ccbor.loads("text", 16, False)  # not a buffer


def test_a_memoryview_slice_decodes_without_a_copy_of_the_frame() -> None:
    """The decoder hands out memoryview payloads (ATP-FRAME-008): both paths read them."""
    wire = b"junk" + cbor2.dumps({"a": [1, 2]}) + b"more"
    view = memoryview(wire)[4:-4]
    assert ccbor.loads(view, 16, True) == _cbor._loads_py(view, 16, True) == {"a": [1, 2]}


def test_trailing_data_is_counted_in_bytes_for_a_view_of_wider_items() -> None:
    """[ATP-FRAME-006] Nothing after the one item: a memoryview whose items are wider than a
    byte (``cast("I")``) holds 4 bytes per item; the pure path compared the bytes read with
    ``len()`` (items), and took 3 trailing bytes for none."""
    view = memoryview(b"\xa0\xa0\xa0\xa0").cast("I")
    for loads in (ccbor.loads, _cbor._loads_py):
        with pytest.raises(ValueError, match="3 bytes of trailing data"):
            loads(view, 16, False)


def test_a_strided_view_is_refused_as_bad_input() -> None:
    """A view with no simple buffer (``[::2]``) is refused with the codec's errors, which
    the callers turn into EPROTO: BufferError escaped both paths."""
    view = memoryview(cbor2.dumps({"a": 1}) * 2)[::2]
    for loads in (ccbor.loads, _cbor._loads_py):
        with pytest.raises(_cbor.DECODE_ERRORS):
            loads(view, 16, False)
    with pytest.raises(FrameDecodeError):
        _cbor.decode_payload(view)
    with pytest.raises(FrameDecodeError):
        _cbor.decode_ext(view)


def test_a_deep_limit_beyond_the_stack_is_refused_not_a_crash() -> None:
    """No recursion without a bound: a limit far above the interpreter's recursion limit
    meets ``Py_EnterRecursiveCall`` (RecursionError, refused like any bad input)."""
    deep = b"\x81" * 200_000 + b"\x00"
    with pytest.raises(_cbor.DECODE_ERRORS):
        ccbor.loads(deep, 1_000_000, False)
    with pytest.raises(FrameDecodeError) as info:
        _cbor.decode_payload(deep, 3, max_depth=1_000_000)
    assert info.value.code == ErrorCode.EPROTO and info.value.stream_id == 3


# -- encoding -----------------------------------------------------------------------------


_HEAD_BOUNDARIES = [23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


@CI
@given(values)
@example([n for b in _HEAD_BOUNDARIES for n in (b, -b - 1)])  # every head size, both signs
@example({"t" * n: b"b" * n for n in (23, 24, 255, 256)})  # text and byte string heads
@example([0] * 24)
@example([[0] * 256, {str(i): i for i in range(256)}])  # array and map heads
@example([0.0, -0.0, 1e-310, 1.5, math.nan, math.inf, -math.inf])
def test_encoding_is_byte_identical_to_cbor2(value: Any) -> None:
    """What the C encoder accepts it writes exactly as ``cbor2.dumps`` does (what the peers,
    the seed vectors and messages.py's pre-encoded pieces expect), and both paths agree."""
    finite = data_is_finite(value)
    for fin in (False, True):
        c = _outcome(ccbor.dumps, value, 64, fin)
        py = _outcome(_cbor._dumps_py, value, 64, fin)
        assert c == py, (value, fin)
    assert ccbor.dumps(value, 64, False) == cbor2.dumps(value)
    assert (_outcome(ccbor.dumps, value, 64, True)[0] == "ok") == finite


def data_is_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(data_is_finite(v) for v in value)
    if isinstance(value, dict):
        return all(data_is_finite(v) for v in value.values())
    return True


class _Sub(dict[str, Any]):
    pass


def test_encoder_takes_the_model_in_its_python_spellings() -> None:
    """Tuples are arrays, enum members their values, subclasses their base: as cbor2."""
    for value in (
        (1, (2, "x")),
        {"flags": Flags.MORE, "qos": QoS.GOLD, "type": FrameType.ERROR, "code": ErrorCode.EPROTO},
        _Sub(a=[1.5]),
        {"e": "é\U0001f600", "big": 2**64 - 1, "neg": -(2**64), "b": b"\x00"},
    ):
        assert (
            ccbor.dumps(value, 16, True) == cbor2.dumps(value) == _cbor._dumps_py(value, 16, True)
        )


class _OddInt(int):
    """An int subclass whose operators lie: the encoder must read the value, not call them."""

    def __invert__(self) -> int:
        return 5

    def __neg__(self) -> int:
        return 5

    def __index__(self) -> int:
        return 5


def test_an_int_subclass_is_encoded_by_its_value_not_its_operators() -> None:
    """A negative int below -2^63 is written as major type 1 of ``-1 - n``: the C path must
    compute that on the value (as cbor2 does), not through the subclass's ``__invert__``,
    which wrote -6 for -2^63-5 and let -2^64-2 through (ATP-FRAME-006: 64 bits at most)."""
    for n in (-(2**63) - 5, -(2**64), 2**63 + 5, -3, 7):
        assert ccbor.dumps(_OddInt(n), 16, False) == cbor2.dumps(n) == cbor2.dumps(_OddInt(n))
        assert ccbor.dumps({"k": [_OddInt(n)]}, 16, True) == _cbor._dumps_py({"k": [n]}, 16, True)
    for dumps in (ccbor.dumps, _cbor._dumps_py):
        with pytest.raises(ValueError, match="64 bits"):
            dumps(_OddInt(-(2**64) - 2), 16, False)


_CYCLE: list[Any] = []
_CYCLE.append(_CYCLE)

REFUSED: list[tuple[str, Any]] = [
    ("object", object()),
    ("set", {1}),
    ("datetime", datetime.datetime(2026, 1, 1)),
    ("bignum", 2**64),
    ("negative bignum", -(2**64) - 1),
    ("int key", {1: 2}),
    ("tuple key", {(1,): 2}),
    ("nested int key", [{"a": {None: 1}}]),
    ("lone surrogate", "\ud800"),
    ("surrogate key", {"\udfff": 1}),
    ("bytearray", bytearray(b"x")),
    ("memoryview", memoryview(b"x")),
    ("cycle", _CYCLE),
    ("too deep", [[[[[1]]]]]),
]


@pytest.mark.parametrize(("why", "value"), REFUSED, ids=[r[0] for r in REFUSED])
def test_encoder_refuses_what_a_receiver_refuses(why: str, value: Any) -> None:
    """[ATP-FRAME-006] Tags (cbor2 would write datetimes, sets, bignums with one), non-text
    keys, text that is not Unicode, types outside the model, nesting past the limit: both
    paths refuse, and Frame.data / encode_frame raise LocalProtocolError (never send it)."""
    for dumps in (ccbor.dumps, _cbor._dumps_py):
        with pytest.raises(_cbor.DECODE_ERRORS):
            dumps(value, 4, False)
    if why != "too deep":
        with pytest.raises(LocalProtocolError, match="payload cannot be encoded"):
            Frame.data(1, 1, value)
        with pytest.raises(LocalProtocolError, match="ext cannot be encoded"):
            _codec.encode_frame(Frame(ext={"x": value}))


def test_nan_is_refused_in_ext_only() -> None:
    """[ATP-FRAME-006] JSON has no NaN: ext refuses it while it is encoded; a payload may
    carry one (a conventional payload is CBOR, not JSON)."""
    for bad in (math.nan, math.inf, [1.0, {"a": -math.inf}]):
        with pytest.raises(ValueError, match="not a finite number"):
            ccbor.dumps({"x": bad}, 16, True)
        with pytest.raises(LocalProtocolError):
            _codec.encode_frame(Frame(ext={"x": bad}))
    f = Frame.data(1, 1, {"x": math.nan})
    assert math.isnan(f.payload_obj()["x"])


# -- the frame shortcuts --------------------------------------------------------------------


class _Index:
    """Not an int, though ``struct`` takes it as one (``__index__``)."""

    def __index__(self) -> int:
        return 1


_field = (
    st.integers(-2, 2**32 + 1)
    | st.sampled_from([0, 255, 256, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF, 0x10000, True, False])
    | st.sampled_from([None, 1.0, "1", Flags.MORE, QoS.GOLD, 2**64, _Index()])
)


@CI
@given(st.lists(_field, min_size=8, max_size=8))
def test_header_check_matches_the_python_one(fields: list[Any]) -> None:
    """``_ccbor.header`` (Frame()'s range check in one call) against ``_header_py``."""
    c = ccbor.header(*fields)
    py = _frame._header_py(*fields)
    assert c == py and type(c) is type(py), fields


@pytest.mark.parametrize("header", [ccbor.header, _frame._header_py], ids=["c", "python"])
@pytest.mark.parametrize("field", ["type", "flags", "stream_id", "msg_seq", "qos", "ttl"])
def test_a_header_field_that_is_not_an_int_is_refused(
    header: Any, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frame() refuses a field that is not an int with EPROTO on both paths: the pure one
    let an ``__index__`` object through ``struct`` (and raised TypeError for stream_id)."""
    assert header(*(_Index() if i == 2 else 1 for i in range(8))) is None
    monkeypatch.setattr(_frame, "_header", header)
    with pytest.raises(LocalProtocolError, match=f"{field} must be an int"):
        Frame(**{"type": FrameType.DATA, field: _Index()})


@CI
@given(
    st.lists(_field, min_size=7, max_size=7),
    st.sampled_from([{}, {"a": 1}, _Sub(), None]),
    st.sampled_from([b"", b"payload", memoryview(b"xpayloadx")[1:-1], bytearray(b"ba")]),
    _field,
)
def test_frame_encode_matches_the_python_encoder(
    fields: list[Any], ext: Any, payload: Any, version: Any
) -> None:
    """``_ccbor.frame_encode`` answers what ``encode_frame_py`` answers, or None (and then
    the Python encoder runs): on frames built around the constructor with any field."""
    frame = Frame._make((*fields, ext, payload, version))
    c = ccbor.frame_encode(frame)
    py = _outcome_any(_codec.encode_frame_py, frame)
    if c is not None:
        assert py == ("ok", c), (frame, c, py)
    assert _outcome_any(_codec.encode_frame, frame) == py


def _outcome_any(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except Exception as exc:
        return "error", type(exc)


@pytest.mark.parametrize("encode", [_codec.encode_frame, _codec.encode_frame_py], ids=["c", "py"])
@pytest.mark.parametrize(
    "view",
    [memoryview(b"abcdefgh").cast("I"), memoryview(b"aXbXcXdX")[::2]],
    ids=["wide items", "strided"],
)
def test_a_payload_view_that_is_not_plain_bytes_is_framed_by_its_bytes(
    encode: Any, view: memoryview
) -> None:
    """The header's payload_len counts bytes: a memoryview of 4-byte items has len() 2 for
    8 bytes, and the Python encoder wrote 2 (a frame the peer cannot parse; the C one wrote 8),
    and a strided view has no simple buffer. Frame() and Frame.data() keep its bytes."""
    want = view.tobytes()
    for ext in ({}, {"a": 1}):
        for frame in (
            Frame(FrameType.DATA, stream_id=1, ext=ext, payload=view),
            Frame.data(1, 0, raw=view, ext=ext),
        ):
            wire = encode(frame)
            assert len(wire) == _codec.encoded_length(frame)
            (back,) = _codec.decode_frames(wire)
            assert bytes(back.payload) == want


def test_frame_at_refuses_bad_arguments() -> None:
    """The decoder's shortcut checks what it is given (a caller's bug is a TypeError)."""
    types = _codec._TYPE_AT
    with pytest.raises(TypeError):
        ccbor.frame_at(Frame, bytearray(30), 0, 100, types, types, {})
    with pytest.raises(TypeError):
        ccbor.frame_at(Frame, b"", 0, 100, types[:3], types, {})
    assert ccbor.frame_at(Frame, b"\x01" * 10, 0, 100, types, _codec._QOS_AT, {}) is None
    assert ccbor.frame_at(Frame, b"\x01" * 30, -1, 100, types, _codec._QOS_AT, {}) is None


def test_frame_at_takes_a_bytes_subclass_as_the_python_path_does() -> None:
    """FrameDecoder.feed keeps a ``bytes`` subclass as it is (``isinstance(data, bytes)``);
    the C shortcut must then answer as the Python fast path does, not raise TypeError out
    of the sans-IO core."""

    class Chunk(bytes):
        pass

    data = _codec.encode_frame(Frame(FrameType.DATA, stream_id=1, payload=b"hi"))
    dec = _codec.FrameDecoder()
    dec.feed(Chunk(data))
    frame = dec.next_frame()
    assert frame is not None
    assert (frame.type, frame.stream_id, bytes(frame.payload)) == (FrameType.DATA, 1, b"hi")
    assert dec.next_frame() is None


# -- the build, the switch, and memory ------------------------------------------------------


def test_the_c_path_is_the_default() -> None:
    """Where the extension is built, it runs unless ATP_PURE_CBOR asks for the fallback."""
    code = "from atp_proto.frames import _cbor; print(_cbor.IMPLEMENTATION)"
    for env, expected in (("", "c"), ("0", "c"), ("1", "python")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "ATP_PURE_CBOR": env},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected, env
    with pytest.raises(ValueError, match="unknown"):
        _cbor.use("rust")


def test_error_paths_release_what_they_built() -> None:
    """Reference counts right on every error path: refusing the same inputs many times
    (each fails after building lists, maps and strings) does not grow memory."""
    bad = [
        bytes.fromhex(h)
        for h in (
            "a3616101616282010261630200",  # fails deep in the third value
            "a2616b8301020361 6bc0".replace(" ", ""),  # duplicate... then a tag
            "83010282 0304 f7".replace(" ", ""),  # undefined at the end
            "a1616b a1616b 81 fb7ff8000000000000".replace(" ", ""),  # NaN in ext
        )
    ]
    bad_obj = [{"a": [1, 2, {"b": object()}]}, [1, "x", b"y", 2**70], {"k": [math.nan]}]

    for data in bad:  # each one does fail
        with pytest.raises(ValueError):
            ccbor.loads(data, 16, True)
    for obj in bad_obj:
        with pytest.raises((ValueError, TypeError)):
            ccbor.dumps(obj, 16, True)

    def churn() -> None:
        for _ in range(2000):
            for data in bad:
                with contextlib.suppress(ValueError):
                    ccbor.loads(data, 16, True)
            for obj in bad_obj:
                with contextlib.suppress(ValueError, TypeError):
                    ccbor.dumps(obj, 16, True)

    churn()  # warm caches and free lists
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 32,000 refused items"


# -- allocation for announced lengths (session 6) --------------------------------------


def _nested_announcements(size: int, levels: int) -> bytes:
    """Arrays nested ``levels`` deep, each announcing as many items as bytes remain (the
    bound the decoder checks), then zeros: a payload of ``size`` bytes that is refused."""
    head = b"".join(b"\x9a" + (size - 5 * (i + 1)).to_bytes(4, "big") for i in range(levels))
    return (head + bytes(size))[:size]


@pytest.mark.parametrize("implementation", _cbor.available())
def test_announced_array_lengths_do_not_allocate_beyond_the_input(implementation: str) -> None:
    """ATP-SEC-012 / ATP-LIMIT-002: the C decoder allocated each array's slots from its
    announced count (bounded only by the bytes left), so 63 nested arrays in a 1 MiB
    payload took 528 MB at once (4 MiB: 2 GB of address space, a MemoryError out of
    loads under a 1.5 GB limit); the pure path peaked at 8 MB. Slots now grow with
    the items decoded: the peak is bounded by a small multiple of the input."""
    before = _cbor.use(implementation)
    data = _nested_announcements(1 << 20, 63)
    tracemalloc.start()
    try:
        with pytest.raises(_cbor.DECODE_ERRORS):
            _cbor.loads(data, 64, False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        _cbor.use(before)
    assert peak < 16 * len(data), peak
