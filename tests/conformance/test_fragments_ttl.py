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


def test_an_etimeout_where_another_code_was_expected_names_the_timeout_scale() -> None:
    """On a loaded host (a new user's run of the README's router command) the case
    failed with only ``stream 1 ended with {... 'ETIMEOUT' ...}``: the failure now says
    the stream's ttl passed and which ``--timeout-scale`` gives it more time. The runner
    here is a stand-in holding the end the router sent (what ``_expect_end`` judges)."""
    from types import SimpleNamespace

    import pytest
    import trio

    from conformance._scenario_runner import ScenarioFailed
    from conformance.scenario import _expect_end

    end = {
        "type": "ERROR",
        "stream_id": 1,
        "flags": ["RST"],
        "msg_seq": 0,
        "error": {"code": "ETIMEOUT", "message": "the stream's ttl passed"},
    }

    async def end_of(sid: int, timeout: float) -> dict[str, object]:
        return end

    for scale, suggested in ((1.0, 3), (3.0, 6)):
        runner = SimpleNamespace(
            last_sid=1, end_of=end_of, ctx=SimpleNamespace(timeout_scale=scale)
        )
        with pytest.raises(ScenarioFailed) as err:
            trio.run(_expect_end, runner, {"stream_id": 1, "code": "ETOOBIG"}, 8.0)
        assert err.value.message.endswith(
            "(the stream's ttl passed: on a slow host, give the case more time with "
            f"--timeout-scale {suggested})"
        ), err.value.message
    # an expected ETIMEOUT is a pass, and no hint is given to other codes
    trio.run(_expect_end, runner, {"stream_id": 1, "code": "ETIMEOUT"}, 8.0)
    end["error"] = {"code": "EPROTO", "message": "x"}
    with pytest.raises(ScenarioFailed) as err:
        trio.run(_expect_end, runner, {"stream_id": 1, "code": "ETOOBIG"}, 8.0)
    assert "timeout-scale" not in err.value.message
