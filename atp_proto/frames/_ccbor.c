/*
 * _ccbor: strict CBOR in one pass, for ATP's ext maps and conventional payloads.
 *
 * What ATP allows in CBOR (ATP-FRAME-005, ATP-FRAME-006) is the JSON data model plus byte
 * strings: maps with text keys, arrays, text and byte strings, integers that fit in 64 bits,
 * floats (finite ones in ext), true / false / null. No tags, no indefinite lengths, no
 * duplicate keys, no simple values or `undefined`, nothing nested deeper than a limit and
 * nothing after the one item.
 *
 * The pure-Python path (cbor2 plus a walk of its result, atp_proto/frames/_cbor.py) checks
 * the same rules in two passes; this module checks them while it decodes or encodes, so
 * nothing is checked twice. It is an accelerator: _cbor.py falls back to the pure path when
 * this module cannot be imported or ATP_PURE_CBOR=1 is set, and the tests hold both paths
 * to the same answers (tests/frames/test_ccbor.py).
 *
 *   loads(data, max_depth, ext) -> object
 *       data: any contiguous buffer holding exactly one item. ext=True: the item must be a
 *       map and its floats finite. Raises ValueError (UnicodeDecodeError for bad UTF-8,
 *       RecursionError if max_depth is beyond the interpreter's stack).
 *   dumps(obj, max_depth, finite) -> bytes
 *       Byte-identical to cbor2.dumps for every value it accepts; raises ValueError or
 *       TypeError for what ATP does not allow (those cbor2 would encode with a tag or as
 *       something a receiver refuses). finite=True: NaN and the infinities are refused.
 *
 * And three shortcuts of the frame path, each answering the common case or None (then the
 * Python code beside it decides, so both agree on every input): header() checks a Frame's
 * integer fields, frame_encode() encodes a frame without ext, frame_at() is
 * FrameDecoder.next_frame's fast path.
 *
 * Memory safety: every read is bounds-checked against the end of the buffer before it is
 * made (`need`); a container's announced count is checked against the bytes left before
 * anything is allocated (each item takes at least one byte), so a 9-byte header cannot ask
 * for 2^64 slots, and a long array's slots grow with the items read (ARRAY_PREALLOC_MAX);
 * recursion is bounded by max_depth and by Py_EnterRecursiveCall; every
 * error path releases what it owns (a partly filled list or dict is released whole: its
 * empty slots are NULL, which list deallocation skips).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* -- decoding --------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;   /* next byte to read */
    const uint8_t *end; /* one past the last byte */
    int max_depth;      /* deepest item allowed: the top item is at depth 1 */
    int ext;            /* ext rules: floats must be finite (ATP-FRAME-006) */
} Decoder;

static PyObject *decode_item(Decoder *d, int depth);

/* Fail unless n more bytes can be read. */
static inline int
need(Decoder *d, uint64_t n)
{
    if ((uint64_t)(d->end - d->p) < n) {
        PyErr_Format(PyExc_ValueError,
                     "premature end of data (an item needs %llu bytes, %zd are left)",
                     (unsigned long long)n, (Py_ssize_t)(d->end - d->p));
        return -1;
    }
    return 0;
}

static inline uint64_t
read_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* The argument of an item head whose initial byte has additional information `ai` (< 28):
 * the value itself, or the 1, 2, 4 or 8 bytes that follow. */
static inline int
read_arg(Decoder *d, int ai, uint64_t *out)
{
    if (ai < 24) {
        *out = (uint64_t)ai;
        return 0;
    }
    int n = 1 << (ai - 24); /* 24..27 -> 1, 2, 4, 8 bytes */
    if (need(d, (uint64_t)n) < 0)
        return -1;
    *out = read_be(d->p, n);
    d->p += n;
    return 0;
}

static PyObject *
decode_text(Decoder *d, uint64_t len)
{
    if (need(d, len) < 0)
        return NULL;
    PyObject *s = PyUnicode_DecodeUTF8((const char *)d->p, (Py_ssize_t)len, NULL);
    d->p += len;
    return s; /* NULL with UnicodeDecodeError (a ValueError) on invalid UTF-8 */
}

/* Map keys and short values repeat from message to message ("type", "content",
 * "agent.result.partial"...): a small cache of short ASCII strings hands out the same
 * (immutable) str object again, a key with its hash already computed, instead of building
 * and hashing a new one each time (orjson does this for keys). Two ways per set, the newest
 * first, so that two strings of one message that share a set do not evict each other on
 * every message. A slot is only ever replaced; a stale slot is a miss, never a wrong answer
 * (the bytes are compared). */
#define CACHE_SETS 512
#define CACHE_MAX_LEN 32
static PyObject *str_cache[CACHE_SETS][2];

static inline int
cached_is(PyObject *k, const uint8_t *p, uint64_t len)
{
    /* a cached str is ASCII: its data are its UTF-8 bytes */
    return k != NULL && PyUnicode_GET_LENGTH(k) == (Py_ssize_t)len &&
           memcmp(PyUnicode_DATA(k), p, (size_t)len) == 0;
}

static PyObject *
decode_short_text(Decoder *d, uint64_t len, int is_key)
{
    if (len == 0 || len > CACHE_MAX_LEN)
        return decode_text(d, len);
    if (need(d, len) < 0)
        return NULL;
    uint32_t h = 2166136261u; /* FNV-1a of the bytes, then a final mix of the high bits */
    for (uint64_t i = 0; i < len; i++)
        h = (h ^ d->p[i]) * 16777619u;
    h ^= h >> 15;
    PyObject **set = str_cache[h & (CACHE_SETS - 1)];
    for (int way = 0; way < 2; way++) {
        if (cached_is(set[way], d->p, len)) {
            d->p += len;
            return Py_NewRef(set[way]);
        }
    }
    PyObject *k = decode_text(d, len);
    if (k != NULL && PyUnicode_IS_ASCII(k)) {
        if (is_key && PyObject_Hash(k) == -1) { /* cannot fail for a str; if it did, */
            PyErr_Clear();                      /* the key is only not cached */
        }
        else {
            Py_XDECREF(set[1]);
            set[1] = set[0];
            set[0] = Py_NewRef(k);
        }
    }
    return k;
}

/* Slots allocated for an array before its items are read. A longer array grows as its
 * items arrive: its announced count is bounded only by the bytes left, and arrays nested
 * 63 deep in a 4 MiB payload, each announcing what is left, would otherwise ask for
 * 2 GB of slots at once before the first item fails (a MemoryError under an address-space
 * limit, where the pure path peaks at 8 bytes per input byte). */
#define ARRAY_PREALLOC_MAX 4096

static PyObject *
decode_array(Decoder *d, uint64_t n, int depth)
{
    if (need(d, n) < 0) /* each item takes at least one byte */
        return NULL;
    if (Py_EnterRecursiveCall(" while decoding CBOR"))
        return NULL;
    int grow = n > ARRAY_PREALLOC_MAX;
    PyObject *list = PyList_New(grow ? 0 : (Py_ssize_t)n);
    if (list != NULL) {
        for (uint64_t i = 0; i < n; i++) {
            PyObject *item = decode_item(d, depth + 1);
            if (item == NULL) {
                Py_CLEAR(list); /* the slots not yet filled are NULL */
                break;
            }
            if (!grow) {
                PyList_SET_ITEM(list, (Py_ssize_t)i, item);
                continue;
            }
            int bad = PyList_Append(list, item) < 0;
            Py_DECREF(item);
            if (bad) {
                Py_CLEAR(list);
                break;
            }
        }
    }
    Py_LeaveRecursiveCall();
    return list;
}

static PyObject *
decode_map(Decoder *d, uint64_t n, int depth)
{
    if (n > (uint64_t)(d->end - d->p) / 2) { /* each pair takes at least two bytes */
        PyErr_Format(PyExc_ValueError, "premature end of data (a map of %llu pairs, %zd bytes left)",
                     (unsigned long long)n, (Py_ssize_t)(d->end - d->p));
        return NULL;
    }
    if (Py_EnterRecursiveCall(" while decoding CBOR"))
        return NULL;
    PyObject *dict = PyDict_New();
    for (uint64_t i = 0; dict != NULL && i < n; i++) {
        if (need(d, 1) < 0)
            goto fail;
        int ib = *d->p;
        if ((ib >> 5) != 3) { /* ATP-FRAME-005: text-string keys */
            PyErr_Format(PyExc_ValueError, "map key of major type %d is not a text string",
                         ib >> 5);
            goto fail;
        }
        if ((ib & 31) == 31) {
            PyErr_SetString(PyExc_ValueError, "indefinite-length text is not allowed");
            goto fail;
        }
        if ((ib & 31) > 27) {
            PyErr_Format(PyExc_ValueError, "invalid additional information %d", ib & 31);
            goto fail;
        }
        d->p++;
        uint64_t len;
        if (read_arg(d, ib & 31, &len) < 0)
            goto fail;
        PyObject *key = decode_short_text(d, len, 1);
        if (key == NULL)
            goto fail;
        PyObject *value = decode_item(d, depth + 1);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        Py_ssize_t before = PyDict_GET_SIZE(dict);
        int bad = PyDict_SetItem(dict, key, value) < 0;
        if (!bad && PyDict_GET_SIZE(dict) == before) { /* ATP-FRAME-006: no duplicate keys */
            PyErr_Format(PyExc_ValueError, "duplicate map key %R", key);
            bad = 1;
        }
        Py_DECREF(key);
        Py_DECREF(value);
        if (bad)
            goto fail;
    }
    Py_LeaveRecursiveCall();
    return dict;
fail:
    Py_XDECREF(dict);
    Py_LeaveRecursiveCall();
    return NULL;
}

static PyObject *
decode_simple(Decoder *d, int ai)
{
    double v;
    switch (ai) {
    case 20:
        Py_RETURN_FALSE;
    case 21:
        Py_RETURN_TRUE;
    case 22:
        Py_RETURN_NONE;
    case 23:
        PyErr_SetString(PyExc_ValueError, "undefined is not in the JSON data model");
        return NULL;
    case 25:
        if (need(d, 2) < 0)
            return NULL;
        v = PyFloat_Unpack2((const char *)d->p, 0);
        d->p += 2;
        break;
    case 26:
        if (need(d, 4) < 0)
            return NULL;
        v = PyFloat_Unpack4((const char *)d->p, 0);
        d->p += 4;
        break;
    case 27:
        if (need(d, 8) < 0)
            return NULL;
        v = PyFloat_Unpack8((const char *)d->p, 0);
        d->p += 8;
        break;
    case 31:
        PyErr_SetString(PyExc_ValueError, "unexpected break (indefinite lengths are not allowed)");
        return NULL;
    default: /* 0..19, 24: simple values; 28..30: reserved */
        PyErr_Format(PyExc_ValueError, "simple value or reserved item 0x%02x is not allowed",
                     0xe0 | ai);
        return NULL;
    }
    if (v == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *f = PyFloat_FromDouble(v);
    if (f != NULL && d->ext && !isfinite(v)) { /* ATP-FRAME-006: JSON has no NaN */
        PyErr_Format(PyExc_ValueError, "%R is not a finite number", f);
        Py_CLEAR(f);
    }
    return f;
}

static PyObject *
decode_item(Decoder *d, int depth)
{
    if (depth > d->max_depth) {
        PyErr_Format(PyExc_ValueError, "nesting deeper than %d (the maximum depth)",
                     d->max_depth);
        return NULL;
    }
    if (need(d, 1) < 0)
        return NULL;
    int ib = *d->p++;
    int major = ib >> 5, ai = ib & 31;
    if (major == 7)
        return decode_simple(d, ai);
    if (major == 6) {
        PyErr_SetString(PyExc_ValueError, "CBOR tags are not allowed");
        return NULL;
    }
    if (ai == 31) {
        PyErr_SetString(PyExc_ValueError, "indefinite-length items are not allowed");
        return NULL;
    }
    if (ai > 27) {
        PyErr_Format(PyExc_ValueError, "invalid additional information %d", ai);
        return NULL;
    }
    uint64_t arg;
    if (read_arg(d, ai, &arg) < 0)
        return NULL;
    switch (major) {
    case 0:
        return PyLong_FromUnsignedLongLong(arg);
    case 1:
        if (arg <= (uint64_t)INT64_MAX)
            return PyLong_FromLongLong(-1 - (long long)arg);
        else { /* -1 - arg below INT64_MIN: ~arg in Python ints */
            PyObject *u = PyLong_FromUnsignedLongLong(arg);
            if (u == NULL)
                return NULL;
            PyObject *r = PyNumber_Invert(u);
            Py_DECREF(u);
            return r;
        }
    case 2:
        if (need(d, arg) < 0)
            return NULL;
        d->p += arg;
        return PyBytes_FromStringAndSize((const char *)d->p - arg, (Py_ssize_t)arg);
    case 3:
        return decode_short_text(d, arg, 0);
    case 4:
        return decode_array(d, arg, depth);
    default: /* 5 */
        return decode_map(d, arg, depth);
    }
}

/* A depth limit argument: an int in 1..INT_MAX. */
static int
depth_arg(PyObject *obj)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 1 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "max_depth must be in 1..INT_MAX");
        return -1;
    }
    return (int)v;
}

static PyObject *
ccbor_loads(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "loads(data, max_depth, ext) takes 3 arguments");
        return NULL;
    }
    int max_depth = depth_arg(args[1]);
    if (max_depth < 0)
        return NULL;
    int ext = PyObject_IsTrue(args[2]);
    if (ext < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Decoder d = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len, max_depth,
                 ext};
    PyObject *obj = NULL;
    if (ext && view.len > 0 && (((const uint8_t *)view.buf)[0] >> 5) != 5)
        PyErr_SetString(PyExc_ValueError, "ext must be a CBOR map"); /* ATP-FRAME-005 */
    else
        obj = decode_item(&d, 1);
    if (obj != NULL && d.p != d.end) {
        PyErr_Format(PyExc_ValueError, "%zd bytes of trailing data after the CBOR item",
                     (Py_ssize_t)(d.end - d.p));
        Py_CLEAR(obj);
    }
    PyBuffer_Release(&view);
    return obj;
}

/* -- encoding --------------------------------------------------------------------------- */

typedef struct {
    PyObject *bytes; /* the output, grown by doubling, cut to size at the end */
    Py_ssize_t len;  /* bytes written */
    Py_ssize_t cap;  /* bytes allocated */
    int max_depth;
    int finite; /* ext rules: NaN and the infinities are refused (ATP-FRAME-006) */
} Encoder;

static int encode_item(Encoder *e, PyObject *obj, int depth);

static int
reserve(Encoder *e, Py_ssize_t n)
{
    if (e->cap - e->len >= n)
        return 0;
    Py_ssize_t cap = e->cap;
    while (cap - e->len < n) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    if (_PyBytes_Resize(&e->bytes, cap) < 0)
        return -1; /* e->bytes is NULL now (released by _PyBytes_Resize) */
    e->cap = cap;
    return 0;
}

static inline char *
out(Encoder *e)
{
    return PyBytes_AS_STRING(e->bytes) + e->len;
}

/* An item head in its shortest form, as cbor2 (and RFC 8949 preferred serialization) writes. */
static int
write_head(Encoder *e, int major, uint64_t arg)
{
    if (reserve(e, 9) < 0)
        return -1;
    uint8_t *p = (uint8_t *)out(e);
    uint8_t mt = (uint8_t)(major << 5);
    int n;
    if (arg < 24) {
        p[0] = mt | (uint8_t)arg;
        e->len += 1;
        return 0;
    }
    if (arg <= 0xFF) {
        p[0] = mt | 24;
        n = 1;
    }
    else if (arg <= 0xFFFF) {
        p[0] = mt | 25;
        n = 2;
    }
    else if (arg <= 0xFFFFFFFFu) {
        p[0] = mt | 26;
        n = 4;
    }
    else {
        p[0] = mt | 27;
        n = 8;
    }
    for (int i = n; i >= 1; i--) {
        p[i] = (uint8_t)arg;
        arg >>= 8;
    }
    e->len += 1 + n;
    return 0;
}

static int
write_bytes(Encoder *e, int major, const char *data, Py_ssize_t n)
{
    if (write_head(e, major, (uint64_t)n) < 0 || reserve(e, n) < 0)
        return -1;
    memcpy(out(e), data, (size_t)n);
    e->len += n;
    return 0;
}

static int
write_text(Encoder *e, PyObject *s)
{
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(s, &n); /* fails on a lone surrogate */
    return utf8 == NULL ? -1 : write_bytes(e, 3, utf8, n);
}

static int
write_int(Encoder *e, PyObject *obj)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (!overflow)
        return v >= 0 ? write_head(e, 0, (uint64_t)v) : write_head(e, 1, (uint64_t)(-1 - v));
    /* beyond int64: a uint64 still fits the head (major 0 of n, major 1 of ~n). ~n of the
     * value as an exact int: PyNumber_Index copies a subclass without calling its methods,
     * whose __invert__ could answer anything (and run code). */
    PyObject *n = PyNumber_Index(obj);
    if (n != NULL && overflow < 0)
        Py_SETREF(n, PyNumber_Invert(n));
    if (n == NULL)
        return -1;
    unsigned long long u = PyLong_AsUnsignedLongLong(n);
    Py_DECREF(n);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "integer %R does not fit in 64 bits (CBOR would need a tag)", obj);
        return -1;
    }
    return write_head(e, overflow > 0 ? 0 : 1, u);
}

static int
write_float(Encoder *e, double v)
{
    if (!isfinite(v)) {
        if (e->finite) {
            PyObject *f = PyFloat_FromDouble(v);
            if (f != NULL) {
                PyErr_Format(PyExc_ValueError, "%R is not a finite number", f);
                Py_DECREF(f);
            }
            return -1;
        }
        /* cbor2 writes these three as half floats */
        const char *half = isnan(v) ? "\xf9\x7e\x00" : v > 0 ? "\xf9\x7c\x00" : "\xf9\xfc\x00";
        if (reserve(e, 3) < 0)
            return -1;
        memcpy(out(e), half, 3);
        e->len += 3;
        return 0;
    }
    if (reserve(e, 9) < 0)
        return -1;
    char *p = out(e);
    p[0] = (char)0xfb;
    if (PyFloat_Pack8(v, p + 1, 0) < 0)
        return -1;
    e->len += 9;
    return 0;
}

static int
encode_container(Encoder *e, PyObject *obj, int depth)
{
    int rc = -1;
    if (Py_EnterRecursiveCall(" while encoding CBOR"))
        return -1;
    if (PyDict_Check(obj)) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        if (write_head(e, 5, (uint64_t)PyDict_GET_SIZE(obj)) < 0)
            goto done;
        while (PyDict_Next(obj, &pos, &key, &value)) {
            if (!PyUnicode_Check(key)) { /* ATP-FRAME-005: text-string keys */
                PyErr_Format(PyExc_ValueError, "map key %R is not a text string", key);
                goto done;
            }
            /* dict items are borrowed: hold them, in case the encoding of one runs code */
            Py_INCREF(key);
            Py_INCREF(value);
            int bad = write_text(e, key) < 0 || encode_item(e, value, depth + 1) < 0;
            Py_DECREF(key);
            Py_DECREF(value);
            if (bad)
                goto done;
        }
    }
    else { /* a list or a tuple */
        PyObject *seq = PySequence_Fast(obj, "not a sequence");
        if (seq == NULL)
            goto done;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        int bad = write_head(e, 4, (uint64_t)n) < 0;
        for (Py_ssize_t i = 0; !bad && i < PySequence_Fast_GET_SIZE(seq); i++)
            bad = encode_item(e, PySequence_Fast_GET_ITEM(seq, i), depth + 1) < 0;
        if (!bad && PySequence_Fast_GET_SIZE(seq) != n) {
            PyErr_SetString(PyExc_RuntimeError, "list changed size while being encoded");
            bad = 1;
        }
        Py_DECREF(seq);
        if (bad)
            goto done;
    }
    rc = 0;
done:
    Py_LeaveRecursiveCall();
    return rc;
}

static int
encode_item(Encoder *e, PyObject *obj, int depth)
{
    if (depth > e->max_depth) {
        PyErr_Format(PyExc_ValueError, "nesting deeper than %d (the maximum depth)",
                     e->max_depth);
        return -1;
    }
    if (PyUnicode_CheckExact(obj))
        return write_text(e, obj);
    if (obj == Py_None || obj == Py_True || obj == Py_False) {
        if (reserve(e, 1) < 0)
            return -1;
        *out(e) = obj == Py_None ? (char)0xf6 : obj == Py_True ? (char)0xf5 : (char)0xf4;
        e->len += 1;
        return 0;
    }
    if (PyLong_Check(obj))
        return write_int(e, obj);
    if (PyFloat_Check(obj))
        return write_float(e, PyFloat_AS_DOUBLE(obj));
    if (PyDict_Check(obj) || PyList_Check(obj) || PyTuple_Check(obj))
        return encode_container(e, obj, depth);
    if (PyUnicode_Check(obj))
        return write_text(e, obj);
    if (PyBytes_Check(obj))
        return write_bytes(e, 2, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    PyErr_Format(PyExc_TypeError,
                 "cannot encode %.100s: only the JSON data model and bytes are allowed",
                 Py_TYPE(obj)->tp_name);
    return -1;
}

static PyObject *
ccbor_dumps(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "dumps(obj, max_depth, finite) takes 3 arguments");
        return NULL;
    }
    int max_depth = depth_arg(args[1]);
    if (max_depth < 0)
        return NULL;
    int finite = PyObject_IsTrue(args[2]);
    if (finite < 0)
        return NULL;
    Encoder e = {PyBytes_FromStringAndSize(NULL, 256), 0, 256, max_depth, finite};
    if (e.bytes == NULL)
        return NULL;
    if (encode_item(&e, args[0], 1) < 0) {
        Py_XDECREF(e.bytes); /* NULL if a resize failed */
        return NULL;
    }
    if (_PyBytes_Resize(&e.bytes, e.len) < 0)
        return NULL;
    return e.bytes;
}

/* -- frame header fields ---------------------------------------------------------------- */

/* An int (not a bool) in 0..hi. */
static int
uint_in(PyObject *o, unsigned long long hi)
{
    if (!PyLong_Check(o) || PyBool_Check(o))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return !overflow && v >= 0 && (unsigned long long)v <= hi;
}

/* header(type, flags, stream_id, msg_seq, frag_seq, qos, ttl, version) -> int | None
 * The ranges of a frame header's integer fields in one call (Frame() runs it on every frame
 * built): None when one is not an int, is a bool, or is out of range (the caller then says
 * which), else ``flags`` as a plain int (IntFlag operators are slow on the hot path). */
static PyObject *
ccbor_header(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const unsigned long long hi[8] = {0xFF, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                             0xFFFF, 0xFF, 0xFFFF, 0xFF};
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "header() takes 8 arguments");
        return NULL;
    }
    for (int i = 0; i < 8; i++)
        if (!uint_in(args[i], hi[i]))
            Py_RETURN_NONE;
    if (PyLong_CheckExact(args[1]))
        return Py_NewRef(args[1]);
    return PyLong_FromLong(PyLong_AsLong(args[1])); /* in 0..255: cannot fail */
}

/* frame_encode(frame) -> bytes | None
 * The common frame, whole, in one call: no ext, every header field an int in its range,
 * the payload a contiguous buffer. None for anything else: _codec.encode_frame's Python
 * path then decides (and says what is wrong), so both give the same answer on every input. */
static PyObject *
ccbor_frame_encode(PyObject *module, PyObject *frame)
{
    static const unsigned long long hi[7] = {0xFF, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                             0xFFFF, 0xFF, 0xFFFF};
    if (!PyTuple_Check(frame) || PyTuple_GET_SIZE(frame) != 10)
        Py_RETURN_NONE;
    /* fields: type flags stream_id msg_seq frag_seq qos ttl ext payload version */
    PyObject *ext = PyTuple_GET_ITEM(frame, 7);
    if (!PyDict_CheckExact(ext) || PyDict_GET_SIZE(ext) != 0)
        Py_RETURN_NONE;
    unsigned long long v[8];
    for (int i = 0; i < 8; i++) {
        PyObject *o = PyTuple_GET_ITEM(frame, i == 7 ? 9 : i);
        if (!uint_in(o, i == 7 ? 0xFF : hi[i]))
            Py_RETURN_NONE;
        v[i] = (unsigned long long)PyLong_AsLongLong(o); /* in range: cannot fail */
    }
    Py_buffer view;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(frame, 8), &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *result = NULL;
    if (view.len <= 0xFFFFFFFF) {
        result = PyBytes_FromStringAndSize(NULL, 24 + view.len);
        if (result != NULL) {
            uint8_t *p = (uint8_t *)PyBytes_AS_STRING(result);
            p[0] = (uint8_t)v[7]; /* version */
            p[1] = (uint8_t)v[0]; /* type */
            p[2] = (uint8_t)v[1]; /* flags */
            p[3] = (uint8_t)v[5]; /* qos */
            for (int i = 0; i < 4; i++) {
                p[4 + i] = (uint8_t)(v[2] >> (24 - 8 * i)); /* stream_id */
                p[8 + i] = (uint8_t)(v[3] >> (24 - 8 * i)); /* msg_seq */
                p[16 + i] = 0;                                /* ext_len */
                p[20 + i] = (uint8_t)((unsigned long long)view.len >> (24 - 8 * i));
            }
            p[12] = (uint8_t)(v[4] >> 8), p[13] = (uint8_t)v[4]; /* frag_seq */
            p[14] = (uint8_t)(v[6] >> 8), p[15] = (uint8_t)v[6]; /* ttl */
            memcpy(p + 24, view.buf, (size_t)view.len);
        }
    }
    else {
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&view);
    return result;
}

/* frame_at(cls, buf, pos, fast_max, type_at, qos_at, empty) -> frame | None
 * FrameDecoder.next_frame's shortcut: the whole version-1 frame at ``pos`` of ``buf``
 * (bytes, or a subclass: FrameDecoder.feed keeps one) when it has a known type (``type_at[byte]`` is not None) and qos, no ext, a payload
 * within ``fast_max`` and a stream id without the reserved bit, built as ``cls`` (Frame)
 * with the payload a memoryview slice of ``buf`` (no copy). None for every other case, which
 * the general path decides (tests/frames/test_codec_fast_paths.py holds the two equal). */
static PyObject *
ccbor_frame_at(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "frame_at() takes 7 arguments");
        return NULL;
    }
    PyObject *cls = args[0], *buf = args[1], *type_at = args[4], *qos_at = args[5];
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) ||
        !PyBytes_Check(buf) || !PyTuple_Check(type_at) || PyTuple_GET_SIZE(type_at) != 256 ||
        !PyTuple_Check(qos_at) || PyTuple_GET_SIZE(qos_at) != 256) {
        PyErr_SetString(PyExc_TypeError, "frame_at(): bad argument types");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]);
    long long fast_max = PyLong_AsLongLong(args[3]);
    if ((pos == -1 || fast_max == -1) && PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    if (pos < 0 || size - pos < 24)
        Py_RETURN_NONE;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(buf) + pos;
    uint64_t sid = read_be(p + 4, 4), ext_len = read_be(p + 16, 4), pay_len = read_be(p + 20, 4);
    PyObject *type = PyTuple_GET_ITEM(type_at, p[1]), *qos = PyTuple_GET_ITEM(qos_at, p[3]);
    if (p[0] != 1 || ext_len != 0 || (long long)pay_len > fast_max || sid > 0x7FFFFFFF ||
        type == Py_None || qos == Py_None || (uint64_t)(size - pos - 24) < pay_len)
        Py_RETURN_NONE;
    /* A tuple subclass is allocated as tuple_subtype_new does; its empty slots are NULL
     * until filled, which tuple deallocation and GC traversal both skip. */
    PyObject *frame = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 10);
    if (frame == NULL)
        return NULL;
    PyObject *mv = PyMemoryView_FromObject(buf), *slice = NULL, *payload = NULL;
    PyObject *start = PyLong_FromSsize_t(pos + 24);
    PyObject *stop = PyLong_FromSsize_t(pos + 24 + (Py_ssize_t)pay_len);
    if (mv != NULL && start != NULL && stop != NULL)
        slice = PySlice_New(start, stop, NULL);
    if (slice != NULL)
        payload = PyObject_GetItem(mv, slice); /* memoryview(buf)[start:stop]: no copy */
    Py_XDECREF(mv);
    Py_XDECREF(start);
    Py_XDECREF(stop);
    Py_XDECREF(slice);
    if (payload == NULL) {
        Py_DECREF(frame);
        return NULL;
    }
    PyObject *fields[10] = {
        Py_NewRef(type),
        PyLong_FromLong(p[2]),
        PyLong_FromUnsignedLongLong(sid),
        PyLong_FromUnsignedLongLong(read_be(p + 8, 4)),
        PyLong_FromLong((long)read_be(p + 12, 2)),
        Py_NewRef(qos),
        PyLong_FromLong((long)read_be(p + 14, 2)),
        Py_NewRef(args[6]),
        payload,
        PyLong_FromLong(1),
    };
    int bad = 0;
    for (int i = 0; i < 10; i++) {
        bad |= fields[i] == NULL;
        PyTuple_SET_ITEM(frame, i, fields[i]); /* a NULL slot is skipped when released */
    }
    if (bad)
        Py_CLEAR(frame);
    return frame;
}

/* -- module ----------------------------------------------------------------------------- */

static PyMethodDef ccbor_methods[] = {
    {"loads", (PyCFunction)(void (*)(void))ccbor_loads, METH_FASTCALL,
     "loads(data, max_depth, ext): one strict CBOR item (ATP-FRAME-005/006)."},
    {"dumps", (PyCFunction)(void (*)(void))ccbor_dumps, METH_FASTCALL,
     "dumps(obj, max_depth, finite): the JSON data model and bytes as CBOR."},
    {"header", (PyCFunction)(void (*)(void))ccbor_header, METH_FASTCALL,
     "header(type, flags, stream_id, msg_seq, frag_seq, qos, ttl, version): flags or None."},
    {"frame_encode", (PyCFunction)ccbor_frame_encode, METH_O,
     "frame_encode(frame): the bytes of a frame without ext, or None (the general path)."},
    {"frame_at", (PyCFunction)(void (*)(void))ccbor_frame_at, METH_FASTCALL,
     "frame_at(cls, buf, pos, fast_max, type_at, qos_at, empty): a frame or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ccbor_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_ccbor",
    .m_doc = "Strict one-pass CBOR for ATP (ATP-FRAME-005/006).",
    .m_size = 0,
    .m_methods = ccbor_methods,
};

PyMODINIT_FUNC
PyInit__ccbor(void)
{
    return PyModule_Create(&ccbor_module);
}
