"""State shared by the routers of a fleet through Redis (``atp serve --redis URL``).

:mod:`.link` is the connection (the ``redis`` package's sync client on worker threads;
one Redis, a Cluster, or a master found through Sentinels: :mod:`.urls`),
:mod:`.redis_quota` the tenant quotas (Lua scripts, holds and leases; fail closed,
ATP-BUDGET-013..017),
:mod:`.learning` the bandit's observations (a Redis stream; local learning while Redis is
away). Imported only when ``--redis`` is set: the embedded default needs no Redis.
"""
