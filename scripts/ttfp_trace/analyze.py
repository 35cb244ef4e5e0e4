"""Stage-by-stage time to first PARTIAL from a scripts/ttfp_trace/sitecustomize.py trace:
``python scripts/ttfp_trace/analyze.py DIR`` prints p50 / p90 / mean of each step (router
path, then direct gRPC path) and how many SYNs each router receive carried."""

import bisect
import itertools
import os
import statistics as S
import sys

d = sys.argv[1]
procs = {}
for f in os.listdir(d):
    ev = []
    with open(os.path.join(d, f)) as fh:
        for line in fh:
            k, t, n = line.split()
            ev.append((int(t), k, int(n)))
    ev.sort()
    ks = {e[1] for e in ev}
    role = "R" if "run0" in ks else ("C" if "cev" in ks else "D")
    procs[role] = ev


def idx(ev, k):
    return [(t, n) for t, kk, n in ev if kk == k]


def first_after(lst, t, pred=None):
    i = bisect.bisect_left(lst, (t, -(10**9)))
    while i < len(lst):
        if pred is None or pred(lst[i][1]):
            return lst[i][0]
        i += 1
    return None


def last_before(lst, t):
    i = bisect.bisect_right(lst, (t, 10**9)) - 1
    return lst[i][0] if i >= 0 else None


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def show(name, rows):
    rows = [r for r in rows if r is not None]
    if not rows:
        print(f"{name:48s} -")
        return
    us = [r / 1000 for r in rows]
    print(
        f"{name:48s} n={len(us):4d} p50 {pct(us, 0.5):8.1f}  p90 {pct(us, 0.9):8.1f}"
        f"  mean {S.mean(us):8.1f} us"
    )


R, C, D = procs.get("R"), procs.get("C"), procs.get("D")
if R and C:
    c_start = [t for t, _ in idx(C, "cstart")]
    c_sb1 = idx(C, "wsb1")
    c_rv = idx(C, "wrecv")
    c_ev = idx(C, "cev")
    r = {
        k: idx(R, k)
        for k in (
            "wrecv",
            "dispatch",
            "syn",
            "task0",
            "run0",
            "decided",
            "est0",
            "est1",
            "admitted",
            "call0",
            "call1",
            "gsend0",
            "gsend1",
            "grecv",
            "ondata",
            "partial",
            "wtry",
            "wsb0",
            "wsb1",
        )
    }
    cols = {}
    skip = len(c_start) // 10
    for t0 in c_start[skip:-2]:
        T = {}
        T["c_start"] = t0
        T["c_sent"] = first_after(c_sb1, t0)
        T["r_wrecv"] = first_after(r["wrecv"], T["c_sent"] - 2000)  # receive returning
        for k in (
            "dispatch",
            "syn",
            "task0",
            "run0",
            "decided",
            "est0",
            "est1",
            "admitted",
            "call0",
            "call1",
        ):
            T["r_" + k] = first_after(r[k], T["r_wrecv"])
        T["r_gsend0"] = first_after(r["gsend0"], T["r_call1"])
        T["r_gsend1"] = first_after(r["gsend1"], T["r_call1"])
        T["r_grecv"] = first_after(r["grecv"], T["r_gsend1"])
        T["r_ondata"] = first_after(r["ondata"], T["r_grecv"])
        T["r_partial"] = first_after(r["partial"], T["r_ondata"])
        T["r_wtry"] = first_after(r["wtry"], T["r_partial"])
        T["c_wrecv"] = first_after(c_rv, T["r_wtry"])
        T["c_ev"] = first_after(c_ev, T["c_wrecv"])
        keys = list(T)
        for a, b in itertools.pairwise(keys):
            cols.setdefault(f"{a} -> {b}", []).append(T[b] - T[a] if T[a] and T[b] else None)
        cols.setdefault("TOTAL c_start -> c_ev", []).append(T["c_ev"] - T["c_start"])
        cols.setdefault("router own: r_wrecv -> r_gsend1", []).append(T["r_gsend1"] - T["r_wrecv"])
        cols.setdefault("router own: r_grecv -> r_wtry", []).append(T["r_wtry"] - T["r_grecv"])
        cols.setdefault("adapter RTT seen by router: gsend1 -> grecv", []).append(
            T["r_grecv"] - T["r_gsend1"]
        )
    print("== via router")
    for k, v in cols.items():
        show(k, v)
if D:
    dd = {k: idx(D, k) for k in ("cstart", "call0", "call1", "gsend0", "gsend1", "grecv", "ondata")}
    cols = {}
    starts = [t for t, _ in dd["cstart"]]
    skip = len(starts) // 10
    for t0 in starts[skip:-2]:
        T = {"c_start": t0}
        for k in ("call0", "call1", "gsend0", "gsend1", "grecv", "ondata"):
            T[k] = first_after(dd[k], T[list(T)[-1]] if k not in ("gsend0",) else T["call1"])
        keys = list(T)
        for a, b in itertools.pairwise(keys):
            cols.setdefault(f"{a} -> {b}", []).append(T[b] - T[a])
        cols.setdefault("TOTAL c_start -> ondata", []).append(T["ondata"] - T["c_start"])
    print("== direct")
    for k, v in cols.items():
        show(k, v)


def bursts(d):
    for f in os.listdir(d):
        with open(os.path.join(d, f)) as fh:
            ev = [(int(t), k, int(n)) for k, t, n in (line.split() for line in fh)]
        ev.sort()
        if not any(k == "run0" for _, k, _ in ev):
            continue
        # bursts: a wrecv followed by syn events before the next wrecv
        bursts = []
        cur = None
        for t, k, n in ev:
            if k == "wrecv":
                cur = {"t": t, "syn": 0, "first": []}
                bursts.append(cur)
            elif k == "syn" and cur:
                cur["syn"] += 1
            elif k == "partial" and n == 1:
                # attribute the first PARTIAL to the latest burst that still owes one
                for b in reversed(bursts):
                    if b["syn"] > len(b["first"]):
                        b["first"].append(t - b["t"])
                        break
        sizes = [b["syn"] for b in bursts if b["syn"]]
        print("SYNs per receive that carried any:", {s: sizes.count(s) for s in sorted(set(sizes))})
        for size in sorted(set(sizes)):
            bs = [b for b in bursts if b["syn"] == size and len(b["first"]) == size]
            for pos in range(size):
                xs = sorted(b["first"][pos] / 1000 for b in bs)
                if xs:
                    print(
                        f"burst of {size}, {pos + 1}. first PARTIAL after the receive:"
                        f" p50 {xs[len(xs) // 2]:.0f} us  (n={len(xs)})"
                    )


bursts(d)
