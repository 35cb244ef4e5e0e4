"""Weighted fair queuing by virtual finish time (atp_proto.session.lanes), the one
scheduler behind the session's writable waiters (and admission's weights)."""

from __future__ import annotations

from atp_proto.frames import QoS
from atp_proto.session.lanes import WEIGHTS, FairQueue


def test_backlogged_lanes_share_by_weight() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(60):
        for lane in (QoS.GOLD, QoS.SILVER, QoS.BRONZE):
            q.push(lane, f"{lane.name}{i}")
    first = [q.pop() for _ in range(50)]
    counts = {lane: sum(1 for x in first if x and x.startswith(lane.name)) for lane in WEIGHTS}
    assert counts == {QoS.GOLD: 30, QoS.SILVER: 15, QoS.BRONZE: 5}
    # FIFO inside a lane
    golds = [x for x in first if x and x.startswith("GOLD")]
    assert golds == [f"GOLD{i}" for i in range(30)]


def test_an_idle_lane_earns_no_burst() -> None:
    """Gold served alone for a while; then bronze arrives: bronze starts at the current
    virtual time, so gold still gets its 6 : 1 share rather than bronze a backlog."""
    q: FairQueue[str] = FairQueue()
    for i in range(100):
        q.push(QoS.GOLD, f"g{i}")
    for _ in range(50):
        q.pop()
    for i in range(10):
        q.push(QoS.BRONZE, f"b{i}")
    nxt = [q.pop() for _ in range(14)]
    assert sum(1 for x in nxt if x and x.startswith("b")) == 2


def test_remove_depth_newest_and_unknown_lane() -> None:
    q: FairQueue[object] = FairQueue()
    a, b, c = object(), object(), object()
    q.push(QoS.SILVER, a)
    q.push(QoS.SILVER, b)
    q.push(QoS.UNSPECIFIED, c)  # an unknown QoS is scheduled as silver
    assert q.depth(QoS.SILVER) == 3 and len(q) == 3 and q.newest(QoS.SILVER) is c
    assert q.remove(QoS.SILVER, b) and not q.remove(QoS.SILVER, b)
    assert [q.pop(), q.pop(), q.pop()] == [a, c, None]
    assert not q


def test_depths_is_depth_of_each_lane() -> None:
    """``depths()`` (the router's gauges read it on every admission) agrees with
    ``depth(lane)`` for each lane, for the default weights and for a queue that
    schedules only some lanes (an unscheduled lane is counted as silver, as
    ``depth`` counts it), through pushes, pops and removals."""
    import random

    rnd = random.Random(7)
    for weights in (WEIGHTS, {QoS.SILVER: 1.0, QoS.BRONZE: 1.0}, {QoS.SILVER: 1.0}):
        q: FairQueue[int] = FairQueue(weights)
        items: list[tuple[QoS, int]] = []
        for i in range(400):
            op = rnd.random()
            if op < 0.55:
                lane = rnd.choice((QoS.GOLD, QoS.SILVER, QoS.BRONZE))
                q.push(lane, i)
                items.append((lane, i))
            elif op < 0.85:
                q.pop(rnd.choice((None, QoS.BRONZE)))
            elif items:
                lane, item = items.pop(rnd.randrange(len(items)))
                q.remove(lane, item)
            want = (q.depth(QoS.GOLD), q.depth(QoS.SILVER), q.depth(QoS.BRONZE))
            assert q.depths() == want
        assert sum(q.depths()) >= len(q)  # an unscheduled lane reads silver's queue
