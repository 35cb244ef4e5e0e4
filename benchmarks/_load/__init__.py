"""The load generator behind ``atp bench e2e`` (issue 14 items 1-4): worker processes that
drive many concurrent ATP streams at a router (WebSocket or QUIC) or the same workload
straight at the gRPC adapters, HDR histograms merged across processes, the router's CPU
and RSS sampled beside them, and the plots.

* :mod:`.hist`: latency histograms (the ``hdrhistogram`` package) and their summaries;
* :mod:`.worker`: one load process (trio): open-loop flows or closed-loop clients;
* :mod:`.drive`: fork the workers, follow their progress, sample the router, merge;
* :mod:`.holders`: the slow-reader and open-streams scenarios (connections that hold);
* :mod:`.fleet`: the router and adapter processes of a run;
* :mod:`.plot`: PNGs and one self-contained HTML page (matplotlib, only with ``--plot``).
"""
