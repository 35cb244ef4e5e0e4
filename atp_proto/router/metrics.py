"""The router's Prometheus series, on prometheus-client, one registry per `Router`.

The series (names, labels, types) are part of the operator-facing contract (README "Operating");
`RouterMetrics` keeps them in one place. The storage, locking, label escaping and the text
exposition format are prometheus-client's: a well-kept library instead of a hand-written one.

Two rules shape this module:

* Every `Router` gets its own `CollectorRegistry`, never the process-global one: tests and the
  demo start many routers in one process, and an embedding application's own series must not
  mix with ours.
* The call sites stay small and positional (``m.streams_total.inc(lane, outcome)``,
  ``m.lane_queue.set(3, "gold")``, ``m.stream_latency.observe(dt, lane)``): the thin wrappers
  below map label *values* to prometheus-client children and cache them, so the hot path is a
  dict lookup and the child's own ``inc``. Series computed on demand (frame counts, per-adapter
  state) are a `_CallbackFamily` collector that reads the router's state at scrape time.

The ``*_created`` samples prometheus-client adds to counters and histograms are dropped at
collection: the switch that turns them off is process-global, and the exposition had none
before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as _PCounter
from prometheus_client import Gauge as _PGauge
from prometheus_client import Histogram as _PHistogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DEFAULT_BUCKETS", "Counter", "Gauge", "Histogram", "Registry", "RouterMetrics"]

DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

#: rows of an on-demand series: (label values, value)
Rows = Iterable[tuple[tuple[str, ...], float]]


class _Series:
    """A labelled prometheus-client metric addressed by positional label values."""

    def __init__(self, name: str, metric: MetricWrapperBase, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self._metric = metric
        self.labelnames = labelnames
        self._children: dict[tuple[str, ...], Any] = {}
        #: the children's bound ``inc`` / ``observe``, by label values: the hot path's
        #: one dict lookup (a stream increments about ten series)
        self._hot: dict[tuple[str, ...], Callable[[float], None]] = {}

    def _child(self, labels: tuple[str, ...]) -> Any:
        child = self._children.get(labels)
        if child is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")
            child = self._metric.labels(*labels) if labels else self._metric
            self._children[labels] = child
        return child

    def collect(self) -> Iterator[Metric]:
        """The metric's families without the ``_created`` samples (see the module docstring)."""
        for family in self._metric.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family

    def _sample(self, suffix: str, labels: tuple[str, ...]) -> float:
        want = dict(zip(self.labelnames, labels, strict=True))
        for family in self._metric.collect():
            for s in family.samples:
                if s.name == family.name + suffix and s.labels == want:
                    return float(s.value)
        return 0.0


class Counter(_Series):
    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, _PCounter(name, help_, labels, registry=None), labels)

    def inc(self, *labels: str, by: float = 1.0) -> None:
        inc = self._hot.get(labels)
        if inc is None:
            inc = self._hot[labels] = self._child(labels).inc
        inc(by)

    def get(self, *labels: str) -> float:
        """The current value (0 for a label set never incremented); for tests and reports."""
        return self._sample("_total", labels)


class Gauge(_Series):
    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, _PGauge(name, help_, labels, registry=None), labels)

    def inc(self, *labels: str, by: float = 1.0) -> None:
        inc = self._hot.get(labels)
        if inc is None:
            inc = self._hot[labels] = self._child(labels).inc
        inc(by)

    def set(self, value: float, *labels: str) -> None:
        self._child(labels).set(value)

    def get(self, *labels: str) -> float:
        """The current value (0 for a label set never set)."""
        return self._sample("", labels)


class Histogram(_Series):
    def __init__(
        self,
        name: str,
        help_: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        metric = _PHistogram(name, help_, labels, registry=None, buckets=buckets)
        super().__init__(name, metric, labels)

    def observe(self, value: float, *labels: str) -> None:
        observe = self._hot.get(labels)
        if observe is None:
            observe = self._hot[labels] = self._child(labels).observe
        observe(value)

    def count(self, *labels: str) -> int:
        """Observations so far for one label set."""
        return int(self._sample("_count", labels))


class _CallbackFamily:
    """A counter or gauge whose samples a callback computes at scrape time."""

    def __init__(
        self, kind: str, name: str, help_: str, labels: tuple[str, ...], rows: Callable[[], Rows]
    ) -> None:
        self._family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        self.name, self.help, self.labelnames, self._rows = name, help_, labels, rows

    def collect(self) -> Iterator[Metric]:
        family = self._family(self.name, self.help, labels=self.labelnames)
        for labels, value in sorted(self._rows()):
            family.add_metric(list(labels), value)
        yield family


class Registry(Collector):
    """One router's series, in registration order, over its own `CollectorRegistry`."""

    def __init__(self) -> None:
        self._series: list[_Series | _CallbackFamily] = []
        self.collector_registry = CollectorRegistry(auto_describe=False)
        self.collector_registry.register(self)

    def counter(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Counter:
        c = Counter(name, help_, labels)
        self._series.append(c)
        return c

    def gauge(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Gauge:
        g = Gauge(name, help_, labels)
        self._series.append(g)
        return g

    def histogram(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Histogram:
        h = Histogram(name, help_, labels)
        self._series.append(h)
        return h

    def callback(
        self, kind: str, name: str, help_: str, labels: tuple[str, ...], rows: Callable[[], Rows]
    ) -> None:
        """Register a ``"counter"`` or ``"gauge"`` series computed by ``rows()`` when scraped."""
        self._series.append(_CallbackFamily(kind, name, help_, labels, rows))

    def collect(self) -> Iterator[Metric]:
        for series in self._series:
            yield from series.collect()

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every series."""
        return generate_latest(self.collector_registry).decode()


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
        self.frame_counts: Callable[[], Rows] = list
        r.callback(
            "counter",
            "atp_frames_total",
            "Frames by direction and type",
            ("direction", "type"),
            lambda: self.frame_counts(),  # noqa: PLW0108 - late-bound
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
        self.estimates = r.counter(
            "atp_estimates_total",
            "Preflight estimates by adapter and source: called (an Estimate call) or reused "
            "(within the adapter's max_age_ms, ATP-BUDGET-018)",
            ("adapter", "source"),
        )
        # issue 13: usage and savings per tenant, strategies, hedges, the decision log
        self.usd = r.counter("atp_usd_micros_total", "Money charged, micro-US-dollars", ("tenant",))
        self.baseline_usd = r.counter(
            "atp_baseline_usd_micros_total",
            "What the strongest candidate alone would have cost (ATP-STRAT-008)",
            ("tenant",),
        )
        self.savings_usd = r.gauge(
            "atp_savings_usd_micros",
            "Baseline minus actual cost, summed over finished streams (may be negative)",
            ("tenant",),
        )
        self.escalations = r.counter(
            "atp_escalations_total", "Escalations to a stronger adapter", ("strategy",)
        )
        self.hedges = r.counter(
            "atp_hedges_total",
            "Hedged requests: started, won / lost by the hedge, throttled by the rate, "
            "refused by budget or max_parallel",
            ("outcome",),
        )
        self.audit_dropped = r.counter(
            "atp_audit_dropped_total", "Decision-log records dropped (writer queue full)"
        )
        #: set by the router: (adapter name, ResilientAdapter.state) for each remote adapter
        self.adapter_state: Callable[[], Iterable[tuple[str, dict[str, Any]]]] = list
        r.callback(
            "gauge",
            "atp_adapter_concurrency_limit",
            "Adaptive concurrency limit per remote adapter",
            ("adapter",),
            lambda: [((n,), float(st["limit"])) for n, st in self.adapter_state()],
        )
        r.callback(
            "gauge",
            "atp_adapter_in_flight",
            "Calls in flight per remote adapter",
            ("adapter",),
            lambda: [((n,), float(st["in_flight"])) for n, st in self.adapter_state()],
        )
        r.callback(
            "gauge",
            "atp_adapter_breaker_open",
            "1 when the adapter's circuit breaker is open",
            ("adapter",),
            lambda: [
                ((n,), 1.0 if st["breaker"] == "open" else 0.0) for n, st in self.adapter_state()
            ],
        )
        r.callback(
            "counter",
            "atp_adapter_retries_total",
            "Retries before output per remote adapter, by outcome (done, or refused by the "
            "retry budget)",
            ("adapter", "outcome"),
            lambda: [
                row
                for n, st in self.adapter_state()
                for row in (
                    ((n, "done"), float(st["retries"])),
                    ((n, "throttled"), float(st["retries_throttled"])),
                )
            ],
        )

    def render(self) -> str:
        """The text served at GET /metrics."""
        return self.registry.render()
