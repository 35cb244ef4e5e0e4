"""``--timeout-scale`` stretches the SYN's ttl of ``send_fragmented`` too: the 65,537
fragments of ``router.seq.too-many-fragments`` (ATP-SEQ-013) took longer than its fixed
8 s ttl on a loaded host over QUIC, and the reference router rightly ended the stream with
ETIMEOUT, which the case reported as a FAIL that ``--timeout-scale`` could not cure. Run
against the reference router with ``--timeout-scale 3``: the SYN asks for 24 s."""

from __future__ import annotations

from atp_proto.frames import decode_frame

from .conftest import router, run_suite


def test_the_fragmented_syn_ttl_follows_the_timeout_scale() -> None:
    with router("--metrics", "off") as r:
        code, report, err = run_suite(
            "--role", "router", "--target", r.ws_url, "--timeout-scale", "3",
            "--run", "router.seq.too-many-fragments",
        )  # fmt: skip
    assert code == 0, err
    (case,) = [c for c in report["cases"] if c["verdict"] != "SKIPPED"]
    assert case["id"] == "router.seq.too-many-fragments" and case["verdict"] == "PASS"
    sent = [
        decode_frame(bytes.fromhex(e["hex"]))[0]
        for e in case["exchange"]
        if e["direction"] == "sent" and e["hex"]
    ]
    syn = next(f for f in sent if f.stream_id == 1)
    assert syn.frag_seq == 0 and syn.ttl == 24
