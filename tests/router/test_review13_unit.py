"""Regression unit tests from the review of the routing brain (issue 13): pure logic."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from atp_proto.frames import ATPError, ErrorCode
from atp_proto.router.routing import Outcome
from atp_proto.router.routing.strategies import answer_key, disagree, pick_quorum, pick_vote


def _done(adapter: str, text: str, confidence: float) -> Outcome:
    return Outcome(adapter, [text] if text else [], confidence, finished=True)


def test_empty_answers_have_no_key_and_agree_with_nothing() -> None:
    """[ATP-STRAT-003] an answer that says nothing (empty, or white space only) has no key
    under ``exact``: two silent adapters are not a quorum, nor do they outvote a real
    answer (they were: "" was the key both shared)."""
    assert answer_key("", "exact") is None and answer_key(" \n\t ", "exact") is None
    assert answer_key(" Forty  Two ", "exact") == "forty two"
    silent = [_done("a", "", 0.9), _done("b", "  ", 0.9)]
    assert pick_quorum(silent, 2, "exact") is None
    found = pick_vote([*silent, _done("c", "42", 0.5)], "exact")
    assert found is not None and found[0].adapter == "c"
    assert disagree(silent, "exact")  # the cascade escalates past them


def _decide(meta: dict[str, object]) -> object:
    import cbor2

    from atp_proto.frames import BudgetWindow, QoS, StreamOpened
    from atp_proto.messages import parse_task
    from atp_proto.router.auth import ANONYMOUS
    from atp_proto.router.routing.policy import LayeredPolicy, PolicyInput

    payload = cbor2.dumps({"type": "agent.task", "content": {"prompt": "hi"}})
    ev = StreamOpened(1, 1, payload, QoS.SILVER, 0, BudgetWindow(), meta, {})
    return LayeredPolicy().decide(PolicyInput(ANONYMOUS, parse_task(ev), QoS.SILVER, ("a",)))


@pytest.mark.parametrize("key", ["min_quality", "min_confidence"])
@pytest.mark.parametrize("value", [10**400, float("nan"), float("inf")])
def test_huge_or_non_finite_thresholds_are_eproto(key: str, value: object) -> None:
    """[ATP-STRAT-009] ``meta.min_quality`` / ``meta.min_confidence`` that is no finite
    number is refused with EPROTO naming the key (a CBOR bignum raised OverflowError out of
    the policy: EINTERNAL; NaN and infinity were taken, and NaN never escalates)."""
    with pytest.raises(ATPError) as exc:
        _decide({key: value})
    assert exc.value.code == ErrorCode.EPROTO and key in exc.value.message
    assert _decide({key: 0.5}).allow  # type: ignore[attr-defined]


def test_verify_names_a_record_with_a_lone_surrogate(tmp_path: Path) -> None:
    """[ATP-AUDIT-003] [ATP-AUDIT-005] an edited record holding ``"\\ud800"`` (valid JSON,
    no Unicode text) is a bad record that ``verify`` names; it raised UnicodeEncodeError
    (``atp audit verify`` died with a traceback)."""
    from atp_proto.router.audit import GENESIS, verify

    log = tmp_path / "a.jsonl"
    log.write_text('{"seq":0,"prev":"' + GENESIS + '","x":"\\ud800","hash":"ab"}\n')
    report = verify([log])
    assert report.problem is not None and report.problem.line == 1
    assert "edited" in report.problem.reason


@pytest.mark.parametrize("key", ["tool_permissions", "data_scope"])
def test_malformed_scope_lists_are_eproto_without_a_policy_too(key: str) -> None:
    """[ATP-SEC-016] malformed ``meta.tool_permissions`` / ``meta.data_scope`` are refused
    with EPROTO whether or not a policy is loaded (without one they were taken as they
    came and passed on to the adapters)."""
    for bad in ("shell", [1], ["x" * 200], ["t"] * 65):
        with pytest.raises(ATPError) as exc:
            _decide({key: bad})
        assert exc.value.code == ErrorCode.EPROTO and key in exc.value.message
    assert _decide({key: ["calculator"]}).allow  # type: ignore[attr-defined]


async def test_an_opa_answer_nested_too_deep_fails_closed_with_eagentdown() -> None:
    """[ATP-SEC-017] an OPA server on loopback whose answer is 100,000 nested ``[`` is
    "something that is not a policy document": EAGENTDOWN, failing closed (json.loads'
    RecursionError escaped the engine: the stream ended EINTERNAL)."""
    import trio

    from atp_proto.router.routing.opa import OpaEngine

    body = b'{"result": ' + b"[" * 100_000 + b"}"

    async def answer(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        await stream.send_all(head + body)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        engine = OpaEngine(f"http://127.0.0.1:{port}", timeout_s=5)
        with pytest.raises(ATPError) as exc:
            await engine.evaluate_async({"tenant": "t"})
        assert exc.value.code == ErrorCode.EAGENTDOWN and "unreachable" in exc.value.message
        nursery.cancel_scope.cancel()


def test_a_jwks_nested_too_deep_is_a_bad_key_set(tmp_path: Path) -> None:
    """[ATP-SEC-019] a JWK Set file of 100,000 nested ``[`` is refused as a key set
    (ValueError: `atp serve` exits 2 in one line); json.loads' RecursionError escaped
    (at a URL, it escaped the refresh's handling too: no "keeping N keys", no 503)."""
    from atp_proto.router.jwks import JwksSource

    bad = tmp_path / "jwks.json"
    bad.write_bytes(b"[" * 100_000)
    with pytest.raises(ValueError, match="nested too deep"):
        JwksSource(str(bad)).load_now()


def test_verify_and_restart_take_a_line_nested_too_deep_as_a_bad_record(
    tmp_path: Path,
) -> None:
    """[ATP-AUDIT-003] a line of 100,000 ``[`` in the log is "not a JSON record" for
    ``verify``, and a router restarted on that log continues from the last good record
    (json.loads' RecursionError escaped both: a traceback, a router that cannot start)."""
    import trio

    from atp_proto.router.audit import AuditLog, verify

    log = tmp_path / "a.jsonl"

    async def write(n: int) -> None:
        audit = AuditLog(log)
        async with trio.open_nursery() as nursery:
            await nursery.start(audit.run)
            for i in range(n):
                audit.append({"kind": "decision", "n": i})
            while audit.written < n:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(write, 2)
    with open(log, "ab") as f:
        f.write(b"[" * 100_000 + b"\n")
    report = verify([log])
    assert report.problem is not None and report.problem.line == 3
    assert report.problem.reason == "not a JSON record"
    trio.run(write, 1)  # starts: the chain goes on from seq 1
    assert '"seq":2' in log.read_text().splitlines()[-1]
