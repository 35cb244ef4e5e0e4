"""Random interleavings of both directions' frames between a client and a router core,
with a hostile peer's frames mixed into the router's input, over each binding: the
invariants of :mod:`atp_proto.testing.interleavings` hold at every step (no exception
out of the core, spec codes with messages, bounded state, one ending per stream, one
connection ERROR at most). A long run: scripts/fuzz_core.py."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from atp_proto.testing.interleavings import conversation

from .helpers import CI


@CI
@given(st.randoms(use_true_random=False), st.sampled_from(["ws", "bytes", "quic"]))
def test_random_interleavings_keep_the_invariants(rnd: random.Random, binding: str) -> None:
    conversation(rnd, binding)


def test_a_final_waiting_for_credit_meets_a_bad_window_update() -> None:
    """The conversation that found the FINAL sent after an ERROR (seed 579 over a byte
    stream, before b14ca5a): a kept example of the random ones."""
    conversation(random.Random(579), "bytes")
