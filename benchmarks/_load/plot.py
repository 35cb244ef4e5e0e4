"""``atp bench e2e --plot DIR``: PNGs (matplotlib, headless Agg) and one self-contained
``index.html`` with every image inlined as base64, so the page can be mailed or attached
to an issue as one file. Imported only when ``--plot`` is given (matplotlib is heavy).

Plots, for the scenarios that ran: TTFP p99 over time per lane (router and direct), the
TTFP distribution per lane (percentile on a log scale of 1 / (1 - p), HDR style), the
capacity sweep (latency and router CPU against the offered rate), and QoS (gold alone and
beside the flood, per second).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any


def _fig() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _timeline(ax: Any, run: dict[str, Any], label: str, style: str = "-") -> None:
    lanes = sorted({k for row in run["timeline"] for k in row if k != "t"})
    for lane in lanes:
        xs = [row["t"] for row in run["timeline"] if lane in row]
        ys = [row[lane]["p99"] for row in run["timeline"] if lane in row]
        ax.plot(xs, ys, style, marker="o", label=f"{label} {lane} p99")


def _cdf(ax: Any, run: dict[str, Any], label: str, style: str = "-") -> None:
    for lane, s in sorted(run["lanes"].items()):
        pts = s.get("ttfp_cdf") or []
        if not pts:
            continue
        xs = [1 / (1 - p / 100) if p < 100 else 1e6 for p, _ in pts]
        ax.plot(xs, [v for _, v in pts], style, label=f"{label} {lane}")
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{100 * (1 - 1 / t):g}%" for t in ticks])


def _save(plt: Any, fig: Any, out: Path, name: str, files: list[Path]) -> None:
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    files.append(path)


def write(result: dict[str, Any], directory: str) -> list[str]:
    """Write the PNGs and ``index.html`` into ``directory`` (created); their paths."""
    plt = _fig()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    r = result["results"]
    files: list[Path] = []
    if "load" in r:
        fig, ax = plt.subplots(figsize=(8, 4))
        _timeline(ax, r["load"]["router"], "router")
        _timeline(ax, r["load"]["direct"], "direct", "--")
        ax.set(xlabel="second of the run", ylabel="TTFP ms", title="TTFP p99 over time")
        ax.legend(fontsize=7)
        _save(plt, fig, out, "load_latency_over_time.png", files)
        fig, ax = plt.subplots(figsize=(8, 4))
        _cdf(ax, r["load"]["router"], "router")
        _cdf(ax, r["load"]["direct"], "direct", "--")
        ax.set(xlabel="percentile", ylabel="TTFP ms", title="TTFP distribution (HDR)")
        ax.legend(fontsize=7)
        _save(plt, fig, out, "load_latency_distribution.png", files)
    if "capacity" in r and r["capacity"]["steps"]:
        steps = r["capacity"]["steps"]
        xs = [s["offered"] for s in steps]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(xs, [s["ttfp_ms"]["p50"] for s in steps], marker="o", label="TTFP p50")
        ax.plot(xs, [s["ttfp_ms"]["p99"] for s in steps], marker="o", label="TTFP p99")
        ax.axhline(100, color="grey", linestyle=":", label="100 ms")
        ax.set(xlabel="offered streams/s", ylabel="ms", title="latency against load")
        ax2 = ax.twinx()
        ax2.plot(xs, [s["router_cpu_pct"] for s in steps], "r--", marker="s", label="router CPU %")
        ax2.set_ylabel("router CPU, % of a core")
        ax.legend(loc="upper left", fontsize=7)
        ax2.legend(loc="upper right", fontsize=7)
        _save(plt, fig, out, "capacity_sweep.png", files)
    if "qos" in r:
        runs = r["qos"]["runs"]
        fig, ax = plt.subplots(figsize=(8, 4))
        _timeline(ax, runs["gold_alone"], "alone:")
        _timeline(ax, runs["gold_beside_flood"], "flood:", "--")
        ax.set(
            xlabel="second of the run", ylabel="TTFP ms", title="QoS: gold beside a bronze flood"
        )
        ax.legend(fontsize=7)
        _save(plt, fig, out, "qos.png", files)
    page = out / "index.html"
    body = [
        "<!doctype html><meta charset='utf-8'><title>atp bench e2e</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}</style>",
        f"<h1>atp bench e2e — {html.escape(result['date'])}</h1>",
        f"<p>{html.escape(result['machine'].get('cpu_model', ''))}, "
        f"{result['machine'].get('cpu_count')} cores; "
        f"{html.escape(result.get('host_note', ''))}</p>",
        "<h2>Goals</h2><table><tr><th>goal</th><th>measured</th><th>target</th><th>met</th></tr>",
    ]
    body += [
        f"<tr><td>{html.escape(g['name'])}</td>"
        f"<td>{g['measured']:.4g} {html.escape(g['unit'])}</td>"
        f"<td>{html.escape(g['target_text'])}</td><td>{'yes' if g['pass'] else 'no'}</td></tr>"
        for g in result["goals"]
    ]
    body.append("</table>")
    for path in files:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        body.append(f"<h2>{html.escape(path.stem.replace('_', ' '))}</h2>")
        body.append(f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>")
    page.write_text("\n".join(body) + "\n", encoding="utf-8")
    return [str(p) for p in [*files, page]]
