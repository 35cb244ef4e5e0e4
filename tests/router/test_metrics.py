"""The router's Prometheus series on prometheus-client (router/metrics.py).

The end-to-end scrape tests (test_e2e_ops.py) check the names over HTTP; these check the
properties the wrappers add: one registry per router, positional label values, no
``_created`` samples, and reads for tests.
"""

from __future__ import annotations

import prometheus_client
import pytest

from atp_proto.router.metrics import RouterMetrics

from ._helpers_e2e import metric_value


def test_each_router_has_its_own_registry() -> None:
    a, b = RouterMetrics(), RouterMetrics()  # a global registry would refuse the second
    a.sessions_total.inc()
    assert a.sessions_total.get() == 1
    assert b.sessions_total.get() == 0
    assert "atp_sessions_total" not in prometheus_client.generate_latest().decode()


def test_labels_values_and_exposition() -> None:
    m = RouterMetrics()
    m.streams_total.inc("gold", "ok")
    m.streams_total.inc("gold", "ok", by=2)
    m.streams_active.inc("gold")
    m.streams_active.inc("gold", by=-1)
    m.lane_queue.set(3, "bronze")
    m.stream_latency.observe(0.3, "gold")
    m.frame_counts = lambda: [(("in", "DATA"), 5.0)]
    m.adapter_state = lambda: [
        ("a", {"limit": 8, "in_flight": 1, "breaker": "open", "retries": 2, "retries_throttled": 0})
    ]
    text = m.render()
    assert "_created" not in text
    assert "# TYPE atp_streams_total counter" in text
    assert "# TYPE atp_stream_duration_seconds histogram" in text
    assert metric_value(text, "atp_streams_total", lane="gold", outcome="ok") == 3
    assert metric_value(text, "atp_streams_active", lane="gold") == 0
    assert metric_value(text, "atp_lane_queue_depth", lane="bronze") == 3
    assert metric_value(text, "atp_stream_duration_seconds_bucket", lane="gold", le="0.5") == 1
    assert metric_value(text, "atp_stream_duration_seconds_bucket", lane="gold", le="0.25") == 0
    assert metric_value(text, "atp_frames_total", direction="in", type="DATA") == 5
    assert metric_value(text, "atp_adapter_breaker_open", adapter="a") == 1
    assert metric_value(text, "atp_adapter_retries_total", adapter="a", outcome="done") == 2
    assert m.streams_total.get("gold", "ok") == 3
    assert m.lane_queue.get("gold") == 0  # never set
    assert m.stream_latency.count("gold") == 1


def test_label_values_are_escaped_and_checked() -> None:
    m = RouterMetrics()
    m.tokens.inc('t"1\n', by=4)
    assert 'atp_tokens_total{tenant="t\\"1\\n"} 4.0' in m.render()
    with pytest.raises(ValueError, match="takes labels"):
        m.streams_total.inc("gold")


def test_cached_incs_keep_counting_each_label_set_and_checking() -> None:
    """The wrappers cache each label set's bound ``inc`` / ``observe``: repeated calls
    land on the right child (never a neighbour's), a counter still refuses a negative
    increment, and a wrong number of labels is refused every time, not only the first."""
    m = RouterMetrics()
    for i in range(50):
        m.streams_total.inc("gold", "ok")
        m.streams_total.inc("silver", "ok", by=2)
        m.streams_active.inc("gold", by=1 if i % 2 else -1)
        m.stream_latency.observe(0.001 * i, "bronze")
    assert m.streams_total.get("gold", "ok") == 50
    assert m.streams_total.get("silver", "ok") == 100
    assert m.streams_total.get("gold", "error") == 0
    assert m.streams_active.get("gold") == 0
    assert m.stream_latency.count("bronze") == 50 and m.stream_latency.count("gold") == 0
    with pytest.raises(ValueError):
        m.streams_total.inc("gold", "ok", by=-1)
    for _ in range(2):
        with pytest.raises(ValueError, match="takes labels"):
            m.streams_total.inc("gold")
        with pytest.raises(ValueError, match="takes labels"):
            m.stream_latency.observe(1.0)
