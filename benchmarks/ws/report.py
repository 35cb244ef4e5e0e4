"""The output of ``atp bench ws``: the table rows, rich rendering, Markdown."""

from __future__ import annotations

import sys
from typing import Any

from .. import _report

__all__ = ["markdown", "median", "render", "summary_lines", "table_rows"]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    r = result["results"]
    t, b, lat, s = r["throughput"], r["baseline"], r["latency"], r["sessions"]
    p = r.get("picows")
    syn, gap = lat["syn_to_first_partial_ms"], lat["partial_gap_ms"]
    fps = t["frames_per_s"]
    rows = [
        (
            f"throughput ({t['streams']} streams × {t['frames_per_stream']} PARTIALs, "
            f"{t['partial_frame_bytes']:.0f} B frames)",
            f"{fps:,.0f} frames/s",
            f"{b['messages_per_s']:,.0f} msg/s ({b['message_bytes']} B, {b['window']} in flight)",
            f"{p['messages_per_s']:,.0f} msg/s ({p['message_bytes']} B, "
            f"{p['window_per_session']} in flight × {p['sessions']} sessions)"
            if p
            else "picows not installed",
        ),
        (
            "  relay ÷ baseline",
            "",
            f"{fps / b['messages_per_s']:.2f}×",
            f"{p['relay_vs_echo']:.2f}× (medians of {p['rounds']} interleaved rounds: "
            f"relay {median(p['relay_round_frames_per_s']):,.0f})"
            if p
            else "",
        ),
    ]
    if p and p.get("picows_client"):
        pc = p["picows_client"]
        rows.append(
            (
                "  reference, not a goal: the picows echo with picows' own C client (relay ÷ it)",
                "",
                "",
                f"{pc['messages_per_s']:,.0f} msg/s ({fps / pc['messages_per_s']:.2f}×)",
            )
        )
    rows += [
        (
            "  steady state (first PARTIAL → last PARTIAL)",
            f"{t['steady_frames_per_s']:,.0f} frames/s",
            "",
            "",
        ),
        (
            f"  CPU, % of one core (server / {t['client_processes']} client processes)",
            f"{t['router_cpu_pct']:.0f}% / {t['client_cpu_pct']:.0f}%",
            "",
            f"{p['server_cpu_pct']:.0f}% / {p['client_cpu_pct']:.0f}%" if p else "",
        ),
        (
            f"SYN→first PARTIAL, {lat['background_open_during_probes']:,} streams open (p50 / p99)",
            f"{syn['p50']:.3f} / {syn['p99']:.3f} ms",
            "",
            "",
        ),
    ]
    if gap:
        rows.append(
            (
                f"  gap between PARTIALs, paced every {lat['background_pace_ms']} ms (p50 / p99)",
                f"{gap['p50']:.2f} / {gap['p99']:.2f} ms",
                "",
                "",
            )
        )
    rows.append(
        (
            f"idle sessions: {s['sessions']:,} (RSS before → after)",
            f"{s['rss_before_bytes'] / 2**20:,.0f} → {s['rss_after_bytes'] / 2**20:,.0f} MiB, "
            f"{s['bytes_per_session'] / 1024:,.1f} KiB/session",
            "",
            "",
        )
    )
    return rows


def summary_lines(result: dict[str, Any]) -> list[str]:
    return _report.summary_lines(result)


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    m = result["machine"]
    console.print(
        f"atp bench ws — {m['cpu_model']}, {m['cpu_count']} cores, Python {m['python']}, "
        f"trio {m['trio']}, trio-websocket {m['trio_websocket']}, picows {m['picows']}, "
        f"{result['date']}" + _report.quick_note(result),
        markup=False,
    )
    table = Table()
    table.add_column("scenario")
    table.add_column("ATP router (builtin:echo)", justify="right")
    table.add_column("baseline: bare trio-websocket echo", justify="right")
    table.add_column("baseline: picows echo, the relay's client", justify="right")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    _report.print_summary(console, summary_lines(result))


def markdown(result: dict[str, Any]) -> str:
    out = [
        "| scenario | ATP router (builtin:echo) | baseline: bare trio-websocket echo "
        "| baseline: picows echo, the relay's client |",
        "|---|---|---|---|",
    ]
    out += ["| " + " | ".join(c or "" for c in row) + " |" for row in table_rows(result)]
    out.append("")
    out += [f"- {line}" for line in summary_lines(result)]
    return "\n".join(out) + "\n"
