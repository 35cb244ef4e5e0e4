"""Offline training from outcome records in the ``routing-data`` format
(:mod:`atp_proto.routing_data`; ``atp routing train``).

Every model's recorded outcome trains that model's arm: offline data has full
information, unlike the online bandit, which only sees the model it called.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from atp_proto.routing_data import (
    DataError,
    Record,
    adapter_name,
    adapter_names,
    quality_of,
    read_records,
)

from .bandit import BanditLearner

__all__ = ["DataError", "Record", "quality_of", "read_records", "records_in", "train"]


def records_in(records: Iterable[Record], buckets: range | None) -> Iterator[Record]:
    return (r for r in records if buckets is None or r.bucket in buckets)


def train(learner: BanditLearner, records: Iterable[Record]) -> dict[str, int]:
    """Train every model's arm on its recorded outcomes; returns examples per arm. A model's
    arm is named as its adapter must be (:func:`~atp_proto.routing_data.adapter_name`).

    Raises:
        DataError: two models of ``records`` share an adapter name."""
    records = list(records)
    adapter_names(records)  # two models that would train one arm: an error, said first
    xs: dict[str, list[np.ndarray[Any, Any]]] = {}
    qs: dict[str, list[float]] = {}
    for r in records:
        x = learner.vector(r.prompt, r.task_type)
        for model, o in r.models.items():
            name = adapter_name(model)
            xs.setdefault(name, []).append(x)
            qs.setdefault(name, []).append(o.quality)
    for name, rows in xs.items():
        learner.arm(name).update_batch(np.array(rows), np.array(qs[name]))
        learner.updates += len(rows)
    return {n: len(v) for n, v in sorted(xs.items())}
