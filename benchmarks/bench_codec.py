"""Frame codec benchmark: our binary codec beside json and cbor2, measured in the same run.

Run it as ``atp bench codec [--json] [--quick]`` (or ``python -m benchmarks.bench_codec``).

What is measured, per frame, in µs per frame (best of 5 runs of N iterations, N scaled so
that one run takes about 0.2 s; ``time.perf_counter_ns``; the statement is inlined by
``timeit`` so no call overhead is added, and garbage collection is off while timing):

* frames: a seed-like SYN (window + meta ext, a prompt payload), a PARTIAL shaped like the
  seed's whose CBOR payload is 200 bytes, and a DATA frame with a 64 KiB payload;
* ours: ``encode_frame`` on a built frame, and a reused ``FrameDecoder`` fed the bytes
  (``feed`` + ``next_frame``). The payload stays bytes (a ``memoryview``, no copy), which is
  what the router does with payloads it relays;
* baselines: ``json.dumps`` / ``json.loads``, plain ``cbor2.dumps`` / ``cbor2.loads``,
  ``orjson.dumps`` / ``orjson.loads`` and ``msgpack.packb`` / ``msgpack.unpackb`` of the
  whole frame as a dict (the JSON text mapping's shape, payload as an object), all in the
  same run (issue 10 item 6: orjson and msgpack are the fastest general-purpose codecs a
  client could use instead; the goals are set against orjson);
* two honest extra rows, so nobody is misled by the zero-copy numbers: decoding with
  ``payload_obj()`` (the payload decoded too), and a full round-trip from a payload object
  to a payload object (``Frame.data`` CBOR-encodes it, the receiver decodes it).

Which strict CBOR path ran is printed and in the JSON (``cbor_path``): ``c``, the
accelerator ``atp_proto/frames/_ccbor.c``, or ``python`` (cbor2 plus a walk), which
``ATP_PURE_CBOR=1 atp bench codec`` selects, for a before/after on one machine.

Goals (a full run exits 1 when one fails; a ``--quick`` run reports them, not judged, and
exits 0): PARTIAL round-trip ≤ 3 µs; PARTIAL round-trip ≥ 2.5×
faster than cbor2 of the dict; 64 KiB payload frame decode ≥ 2 GB/s; PARTIAL round-trip
≤ 1.0× orjson's round-trip of the dict; PARTIAL object → object round-trip ≤ 2.0× orjson's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import msgpack
import orjson

from atp_proto.frames import (
    HEADER_SIZE,
    Flags,
    Frame,
    FrameDecoder,
    JsonMapping,
    QoS,
    encode_frame,
)

from . import _harness, _report
from ._report import Goal, judge

REPEATS = 5
TARGET_S = 0.2  #: one timed run of N iterations
QUICK_REPEATS = 2
QUICK_TARGET_S = 0.005

GOAL_RT_US = 3.0
GOAL_SPEEDUP = 2.5
GOAL_GBPS = 2.0
GOAL_VS_ORJSON_RT = 1.0  #: frame round-trip time / orjson's round-trip of the dict
GOAL_VS_ORJSON_OBJ = 2.0  #: object -> object round-trip time / orjson's

PARTIAL_PAYLOAD_BYTES = 200
BIG_PAYLOAD_BYTES = 64 * 1024


# -- the frames -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    frame: Frame  #: payload as CBOR bytes
    payload_obj: Any  #: the payload before CBOR encoding
    as_dict: dict[str, Any]  #: the frame as a plain dict (JSON text mapping), payload an object
    wire: bytes
    json_text: str
    cbor: bytes

    def sizes(self) -> dict[str, int]:
        ext = len(self.wire) - HEADER_SIZE - len(self.frame.payload)
        return {
            "frame_bytes": len(self.wire),
            "ext_bytes": ext,
            "payload_bytes": len(self.frame.payload),
            "json_bytes": len(self.json_text.encode()),
            "cbor2_bytes": len(self.cbor),
        }


def _sized_text(make: Callable[[str], Any], size: int, filler: str) -> Any:
    """The payload object whose CBOR encoding is exactly ``size`` bytes (or just over)."""
    lo, hi = 0, size
    while lo < hi:  # CBOR length grows monotonically with the text length
        mid = (lo + hi) // 2
        if len(cbor2.dumps(make((filler * (mid // len(filler) + 1))[:mid]))) < size:
            lo = mid + 1
        else:
            hi = mid
    return make((filler * (lo // len(filler) + 1))[:lo])


def _case(name: str, frame: Frame, payload_obj: Any) -> Case:
    as_dict = JsonMapping().to_obj(frame)
    wire = encode_frame(frame)
    return Case(
        name,
        frame,
        payload_obj,
        as_dict,
        wire,
        json.dumps(as_dict, separators=(",", ":"), ensure_ascii=False),
        cbor2.dumps(as_dict),
    )


def build_cases() -> list[Case]:
    syn_payload = {"type": "agent.result.partial", "content": {"prompt": "hello"}}
    syn = Frame.data(
        1,
        1,
        syn_payload,
        flags=Flags.SYN,
        qos=QoS.GOLD,
        ttl=8,
        ext={
            "window": {"max_parallel": 4, "max_tokens": 50000, "max_usd_micros": 1000000},
            "meta": {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]},
        },
    )
    words = "the quick brown fox jumps over the lazy dog "
    partial_payload = _sized_text(
        lambda text: {
            "type": "agent.result.partial",
            "content": {"chunk": 0, "adapter": "persona_adapter", "text": text},
            "confidence": 0.62,
        },
        PARTIAL_PAYLOAD_BYTES,
        words,
    )
    partial = Frame.data(1, 2, partial_payload, flags=Flags.MORE)
    big_payload = _sized_text(
        lambda text: {"type": "agent.result.partial", "content": {"text": text}},
        BIG_PAYLOAD_BYTES,
        words,
    )
    big = Frame.data(1, 3, big_payload, flags=Flags.MORE)
    return [
        _case("SYN (seed)", syn, syn_payload),
        _case("PARTIAL 200 B", partial, partial_payload),
        _case("DATA 64 KiB", big, big_payload),
    ]


# -- timing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    ns: float  #: best time per iteration
    n: int  #: iterations per run


def measure(stmt: str, ns: dict[str, Any], target_s: float, repeats: int) -> Timing:
    """Best-of-``repeats`` time per execution of ``stmt``, each run about ``target_s``."""
    setup = "\n".join(f"{k} = _ns[{k!r}]" for k in ns)  # locals: fastest lookups, for all
    timer = timeit.Timer(stmt, setup, timer=time.perf_counter_ns, globals={"_ns": ns})
    target_ns = target_s * 1e9
    n = 1
    while True:
        t = timer.timeit(n)
        if t >= target_ns / 10 or n >= 10**8:
            break
        n *= 10
    n = max(1, round(n * target_ns / max(t, 1)))
    best = min(timer.repeat(repeats, n))
    return Timing(best / n, n)


#: operation -> statements timed for (ours, json, cbor2, orjson, msgpack baselines)
OPERATIONS: dict[str, tuple[str, str, str, str, str]] = {
    "encode": ("encode_frame(frame)", "dumps(d)", "cdumps(d)", "odumps(d)", "mdumps(d)"),
    "decode": (
        "dec.feed(wire); dec.next_frame()",
        "loads(text)",
        "cloads(cb)",
        "oloads(otext)",
        "mloads(mp)",
    ),
    "round-trip": (
        "dec.feed(encode_frame(frame)); dec.next_frame()",
        "loads(dumps(d))",
        "cloads(cdumps(d))",
        "oloads(odumps(d))",
        "mloads(mdumps(d))",
    ),
    "decode + payload_obj()": (
        "dec.feed(wire); dec.next_frame().payload_obj()",
        "loads(text)",
        "cloads(cb)",
        "oloads(otext)",
        "mloads(mp)",
    ),
    "obj -> obj round-trip": (
        "dec.feed(encode_frame(data(1, msg_seq, obj, flags=flags, qos=qos, ttl=ttl, ext=ext)));"
        " dec.next_frame().payload_obj()",
        "loads(dumps(d))",
        "cloads(cdumps(d))",
        "oloads(odumps(d))",
        "mloads(mdumps(d))",
    ),
}
BASELINES = ("json", "cbor2", "orjson", "msgpack")


def _namespace(case: Case) -> dict[str, Any]:
    f = case.frame
    return {
        "frame": f,
        "wire": case.wire,
        "text": case.json_text,
        "cb": case.cbor,
        "d": case.as_dict,
        "obj": case.payload_obj,
        "msg_seq": f.msg_seq,
        "flags": f.flags,
        "qos": f.qos,
        "ttl": f.ttl,
        "ext": f.ext or None,
        "dec": FrameDecoder(),
        "encode_frame": encode_frame,
        "data": Frame.data,
        "dumps": _json_dumps,
        "loads": json.loads,
        "cdumps": cbor2.dumps,
        "cloads": cbor2.loads,
        "otext": orjson.dumps(case.as_dict),
        "mp": msgpack.packb(case.as_dict),
        "odumps": orjson.dumps,
        "oloads": orjson.loads,
        "mdumps": msgpack.packb,
        "mloads": msgpack.unpackb,
    }


def _json_dumps(obj: Any) -> str:  # as the JSON text mapping sends it
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _check_statements(case: Case) -> None:
    """Each statement does what its row says (the timings are worthless otherwise)."""
    ns = _namespace(case)
    dec = ns["dec"]
    dec.feed(case.wire)
    got = dec.next_frame()
    assert got is not None and bytes(got.payload) == bytes(case.frame.payload)
    assert got.payload_obj() == case.payload_obj
    assert json.loads(case.json_text) == case.as_dict
    assert cbor2.loads(case.cbor) == case.as_dict
    assert orjson.loads(ns["otext"]) == case.as_dict
    assert msgpack.unpackb(ns["mp"]) == case.as_dict
    for stmt in (s for row in OPERATIONS.values() for s in row):
        exec(stmt.replace("; ", "\n"), {}, dict(ns))


def run_benchmark(
    *, quick: bool = False, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure everything; return the JSON-ready result (see ``--json``)."""
    target, repeats = (QUICK_TARGET_S, QUICK_REPEATS) if quick else (TARGET_S, REPEATS)
    cases = build_cases()
    rows: list[dict[str, Any]] = []
    baseline_cache: dict[tuple[str, str], Timing] = {}
    for case in cases:
        _check_statements(case)
        ns = _namespace(case)
        for op, (ours_stmt, *base_stmts) in OPERATIONS.items():
            if progress:
                progress(f"{case.name}: {op}")
            ours = measure(ours_stmt, ns, target, repeats)
            base: dict[str, Timing] = {}
            for name, stmt in zip(BASELINES, base_stmts, strict=True):
                key = (case.name, stmt)
                if key not in baseline_cache:
                    baseline_cache[key] = measure(stmt, ns, target, repeats)
                base[name] = baseline_cache[key]
            row_: dict[str, Any] = {
                "frame": case.name,
                "operation": op,
                "ours_us": ours.ns / 1e3,
                "ours_frames_per_s": 1e9 / ours.ns,
            }
            for name, t in base.items():
                row_[f"{name}_us"] = t.ns / 1e3
            for name, t in base.items():
                row_[f"speedup_vs_{name}"] = t.ns / ours.ns
            row_["iterations"] = {"ours": ours.n, **{n: t.n for n, t in base.items()}}
            rows.append(row_)

    def row(frame: str, op: str) -> dict[str, Any]:
        return next(r for r in rows if r["frame"] == frame and r["operation"] == op)

    big = cases[2]
    big_bytes = len(big.wire)
    throughput = {
        "frame": big.name,
        "frame_bytes": big_bytes,
        "decode_gb_s": big_bytes / (row(big.name, "decode")["ours_us"] * 1e3),
        "decode_payload_obj_gb_s": big_bytes
        / (row(big.name, "decode + payload_obj()")["ours_us"] * 1e3),
        "cbor2_loads_gb_s": len(big.cbor) / (row(big.name, "decode")["cbor2_us"] * 1e3),
        "json_loads_gb_s": len(big.json_text.encode()) / (row(big.name, "decode")["json_us"] * 1e3),
    }
    rt = row(cases[1].name, "round-trip")
    obj_rt = row(cases[1].name, "obj -> obj round-trip")
    # The floor of the object path with the CBOR library we use: cbor2 (C) encoding and
    # decoding the payload object alone, without any frame or strictness work. The
    # object -> object goal can be met only when this floor is below it.
    floor = measure("cloads(cdumps(obj))", _namespace(cases[1]), target, repeats)
    object_path = {
        "frame": cases[1].name,
        "ours_us": obj_rt["ours_us"],
        "cbor2_payload_floor_us": floor.ns / 1e3,
        "orjson_us": obj_rt["orjson_us"],
        "floor_vs_orjson": floor.ns / 1e3 / obj_rt["orjson_us"],
        "ours_vs_floor": obj_rt["ours_us"] / (floor.ns / 1e3),
    }
    goals = [
        Goal("PARTIAL 200 B round-trip (encode + decode)", rt["ours_us"], GOAL_RT_US, "us", "<="),
        Goal(
            "PARTIAL 200 B round-trip speed-up vs cbor2 of the frame dict",
            rt["speedup_vs_cbor2"],
            GOAL_SPEEDUP,
            "x",
        ),
        Goal("64 KiB payload frame decode", throughput["decode_gb_s"], GOAL_GBPS, "GB/s"),
        Goal(
            "PARTIAL 200 B round-trip vs orjson's round-trip of the dict (time ratio)",
            rt["ours_us"] / rt["orjson_us"],
            GOAL_VS_ORJSON_RT,
            "x",
            "<=",
        ),
        Goal(
            "PARTIAL 200 B object -> object round-trip vs orjson's (time ratio)",
            obj_rt["ours_us"] / obj_rt["orjson_us"],
            GOAL_VS_ORJSON_OBJ,
            "x",
            "<=",
        ),
    ]
    return {
        "benchmark": "codec",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "quick": quick,
            "repeats": repeats,
            "target_s_per_run": target,
            "timer": "time.perf_counter_ns, best of repeats, gc disabled",
        },
        "frames": {c.name: c.sizes() for c in cases},
        "results": rows,
        "throughput": throughput,
        "object_path": object_path,
        **judge(goals, quick=quick),
    }


def machine_info() -> dict[str, Any]:
    from atp_proto.frames import _cbor

    return {**_harness.machine_info(cbor2="cbor2"), "cbor_path": _cbor.IMPLEMENTATION}


# -- output -----------------------------------------------------------------------------


def _fmt_us(us: float) -> str:
    return f"{us:.3f}" if us < 10 else f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def _fmt_rate(per_s: float) -> str:
    return f"{per_s / 1e6:.2f} M" if per_s >= 1e6 else f"{per_s / 1e3:.1f} k"


TABLE_COLUMNS = (
    "frame",
    "operation",
    "ours µs",
    "ours frames/s",
    "json µs",
    "cbor2 µs",
    "orjson µs",
    "msgpack µs",
    "vs cbor2",
    "vs json",
    "vs orjson",
)


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            r["frame"],
            r["operation"],
            _fmt_us(r["ours_us"]),
            _fmt_rate(r["ours_frames_per_s"]),
            _fmt_us(r["json_us"]),
            _fmt_us(r["cbor2_us"]),
            _fmt_us(r["orjson_us"]),
            _fmt_us(r["msgpack_us"]),
            f"{r['speedup_vs_cbor2']:.1f}×",
            f"{r['speedup_vs_json']:.1f}×",
            f"{r['speedup_vs_orjson']:.2f}×",
        )
        for r in result["results"]
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    t = result["throughput"]
    lines = [
        f"{t['frame']} ({t['frame_bytes']:,} B) decode: {t['decode_gb_s']:,.1f} GB/s "
        f"(payload kept as a memoryview); with payload_obj(): "
        f"{t['decode_payload_obj_gb_s']:.2f} GB/s; cbor2.loads of the dict: "
        f"{t['cbor2_loads_gb_s']:.2f} GB/s; json.loads: {t['json_loads_gb_s']:.2f} GB/s",
    ]
    o = result.get("object_path")
    if o:
        lines.append(
            f"{o['frame']} object -> object: ours {o['ours_us']:.2f} µs; the floor with cbor2 "
            f"(cbor2.dumps + cbor2.loads of the payload alone) {o['cbor2_payload_floor_us']:.2f} µs"
            f" = {o['floor_vs_orjson']:.2f}× orjson's dict round-trip; ours is "
            f"{o['ours_vs_floor']:.2f}× that floor"
        )
    return lines + _report.summary_lines(result)


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped output has no terminal width; do not squeeze the table into 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    m = result["machine"]
    console.print(
        f"atp bench codec — {m['cpu_model']}, {m['cpu_count']} cores, Python {m['python']}, "
        f"cbor2 {m['cbor2']}, strict CBOR path: {m.get('cbor_path', '?')}, {result['date']}"
        + _report.quick_note(result),
        markup=False,
    )
    sizes = ", ".join(
        f"{name}: {s['frame_bytes']:,} B (ext {s['ext_bytes']}, payload {s['payload_bytes']:,})"
        for name, s in result["frames"].items()
    )
    console.print(f"frames — {sizes}", markup=False)
    table = Table(show_lines=False)
    for i, col in enumerate(TABLE_COLUMNS):
        table.add_column(col, justify="left" if i < 2 else "right")
    rows = table_rows(result)
    for i, cells in enumerate(rows):
        last_of_frame = i + 1 == len(rows) or rows[i + 1][0] != cells[0]
        table.add_row(*cells, end_section=last_of_frame)
    console.print(table)
    _report.print_summary(console, summary_lines(result))


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table plus the summary lines (for RESULTS.md)."""
    out = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    out += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    out.append("")
    out += [f"- {line}" for line in summary_lines(result)]
    return "\n".join(out) + "\n"


# -- entry points -----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``atp bench codec``: 1 when a full run misses a goal, else 0 (a quick run is not
    judged)."""
    progress = None
    status = None
    if sys.stderr.isatty():
        from rich.console import Console

        status = Console(stderr=True).status("measuring…")
        status.start()
        progress = status.update
    try:
        result = run_benchmark(quick=args.quick, progress=progress)
    finally:
        if status is not None:
            status.stop()
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        render(result)
    return _report.exit_code(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
