"""A small Prometheus text-format registry (counters, gauges, histograms with labels).

No client library: the router needs a dozen series, and rendering them is a few lines.
Label values are escaped per the exposition format.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass
class Metric:
    name: str
    help: str
    kind: str
    labelnames: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    callback: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None

    def _key(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")
        return labels

    def inc(self, *labels: str, by: float = 1.0) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + by

    def set(self, value: float, *labels: str) -> None:
        self.values[self._key(labels)] = value

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        items = list(self.values.items())
        if self.callback is not None:
            items += list(self.callback())
        for labels, value in sorted(items):
            lines.append(f"{self.name}{_labels(self.labelnames, labels)} {_fmt(value)}")
        return lines


@dataclass
class Histogram:
    name: str
    help: str
    labelnames: tuple[str, ...] = ()
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)  # counts..., sum

    def observe(self, value: float, *labels: str) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        s[bisect.bisect_left(self.buckets, value)] += 1
        s[-1] += value

    def count(self, *labels: str) -> int:
        s = self.series.get(labels)
        return int(sum(s[:-1])) if s else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, s in sorted(self.series.items()):
            cum = 0.0
            for bound, n in zip((*self.buckets, math.inf), s[:-1], strict=True):
                cum += n
                le = f'le="{_fmt(bound)}"'
                lines.append(
                    f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {_fmt(cum)}"
                )
            lines.append(f"{self.name}_sum{_labels(self.labelnames, labels)} {_fmt(s[-1])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, labels)} {_fmt(cum)}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: list[Metric | Histogram] = []

    def counter(
        self,
        name: str,
        help_: str,
        labels: tuple[str, ...] = (),
        callback: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None,
    ) -> Metric:
        m = Metric(name, help_, "counter", labels, callback=callback)
        self._metrics.append(m)
        return m

    def gauge(
        self,
        name: str,
        help_: str,
        labels: tuple[str, ...] = (),
        callback: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None,
    ) -> Metric:
        m = Metric(name, help_, "gauge", labels, callback=callback)
        self._metrics.append(m)
        return m

    def histogram(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Histogram:
        h = Histogram(name, help_, labels)
        self._metrics.append(h)
        return h

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines += m.render()
        return "\n".join(lines) + "\n"


class RouterMetrics:
    """The series the router exports (names are part of the operator-facing contract)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.sessions_active = r.gauge("atp_sessions_active", "Open ATP sessions")
        self.sessions_total = r.counter("atp_sessions_total", "Sessions accepted")
        self.handshakes_refused = r.counter(
            "atp_handshakes_refused_total", "WebSocket handshakes refused", ("status",)
        )
        self.streams_active = r.gauge("atp_streams_active", "Streams in progress", ("lane",))
        self.streams_total = r.counter(
            "atp_streams_total", "Streams finished, by outcome", ("lane", "outcome")
        )
        #: set by the router: (direction, type) -> count, over live and finished sessions
        self.frame_counts: Callable[[], Iterable[tuple[tuple[str, ...], float]]] = list
        r.counter(
            "atp_frames_total",
            "Frames by direction and type",
            ("direction", "type"),
            callback=lambda: self.frame_counts(),  # noqa: PLW0108 - late-bound
        )
        self.errors = r.counter("atp_errors_total", "ERROR frames sent, by code", ("code",))
        self.lane_queue = r.gauge(
            "atp_lane_queue_depth", "Streams waiting for admission", ("lane",)
        )
        self.shed = r.counter("atp_shed_total", "Streams shed with EPREEMPT", ("lane",))
        self.concurrency_limit = r.gauge("atp_concurrency_limit", "Adaptive concurrency limit")
        self.stream_latency = r.histogram(
            "atp_stream_duration_seconds", "Stream duration from SYN to end", ("lane",)
        )
        self.adapter_calls = r.counter(
            "atp_adapter_calls_total",
            "Adapter calls by adapter and outcome",
            ("adapter", "outcome"),
        )
        self.tokens = r.counter("atp_tokens_total", "Tokens charged", ("tenant",))
        self.adapter_state: Callable[[], Iterable[tuple[str, dict[str, Any]]]] = list
        r.gauge(
            "atp_adapter_concurrency_limit",
            "Adaptive concurrency limit per remote adapter",
            ("adapter",),
            callback=lambda: [((n,), float(st["limit"])) for n, st in self.adapter_state()],
        )
        r.gauge(
            "atp_adapter_in_flight",
            "Calls in flight per remote adapter",
            ("adapter",),
            callback=lambda: [((n,), float(st["in_flight"])) for n, st in self.adapter_state()],
        )
        r.gauge(
            "atp_adapter_breaker_open",
            "1 when the adapter's circuit breaker is open",
            ("adapter",),
            callback=lambda: [
                ((n,), 1.0 if st["breaker"] == "open" else 0.0) for n, st in self.adapter_state()
            ],
        )
        r.counter(
            "atp_adapter_retries_total",
            "Retries before output per remote adapter, by outcome (done, or refused by the "
            "retry budget)",
            ("adapter", "outcome"),
            callback=lambda: [
                row
                for n, st in self.adapter_state()
                for row in (
                    ((n, "done"), float(st["retries"])),
                    ((n, "throttled"), float(st["retries_throttled"])),
                )
            ],
        )

    def render(self) -> str:
        return self.registry.render()
