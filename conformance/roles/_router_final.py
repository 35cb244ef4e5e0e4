"""The router case of a FINAL that does not repeat a streamed answer (spec §15.5):
``router.final.streamed`` (ATP-FINAL-002, ATP-FINAL-003; needs ``--adapter-listen``).

On one session, in the binary encoding (and, as ``router.text.final.streamed``, in the
JSON text mapping): a stream
without ``meta.final_answer`` (its FINAL must carry the whole answer and no ``streamed``),
then the same task with ``final_answer: "streamed"``. The router may answer the second in
full; when it leaves ``answer`` out, ``streamed.chunks`` must be the number of the
stream's PARTIALs naming the FINAL's adapter with a text, and their texts, joined, must be
the first stream's answer (the scripted adapter answers the same task the same way). With
two scripted adapters (``--adapter-listen A,B``) a third stream fans out over both
(different answers): only the winner's PARTIALs may make the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conformance._record import Recorder
from conformance.drivers.ws import open_session
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext
from conformance.scenario import Runner, ScenarioFailed, result_of

__all__ = ["CASES", "IDS", "run"]

_TITLE = (
    "a FINAL leaves out the answer only when the winner's PARTIALs carried it all, and "
    "says how many; without meta.final_answer it carries the answer in full"
)
_DESCRIPTION = (
    "needs --adapter-listen: the task without meta.final_answer (FINAL: answer, no "
    'streamed), then with final_answer "streamed" (FINAL: the answer in full, or no answer '
    "and streamed.chunks = the PARTIALs of its adapter, whose texts joined are the first "
    "answer); with two adapters, a fan-out stream over both"
)
CASES = [
    CaseSpec(
        cid,
        Role.ROUTER,
        _TITLE + where,
        ("ATP-FINAL-002", "ATP-FINAL-003"),
        level=Level.L2,
        description=_DESCRIPTION + where,
    )
    for cid, where in (
        ("router.final.streamed", ""),
        ("router.text.final.streamed", " (JSON text mapping)"),
    )
]
IDS = frozenset(c.id for c in CASES)

#: the scripted adapter's answers: ``ok`` on conf, ``two_chunks`` on conf2 (duo:)
_DUO = "duo:ok|two_chunks"
_DUO_ANSWERS = {"conf": "part1 part2 part3 part4 ", "conf2": "part1 part2 "}


def _content(frame: Mapping[str, Any] | None) -> Mapping[str, Any]:
    payload = (frame or {}).get("payload")
    content = payload.get("content") if isinstance(payload, Mapping) else None
    return content if isinstance(content, Mapping) else {}


async def _stream(r: Runner, sid: int, behaviour: str, meta: Mapping[str, Any]) -> list[Any]:
    """Open ``sid`` and return its frames, the FINAL last (ScenarioFailed otherwise)."""
    m = r.syn({"stream_id": sid, "behaviour": behaviour, "meta": dict(meta)})
    await r.send(m)
    start = r.syn_from[sid]
    end = await r.end_of(sid, r.ctx.timeout(10))
    if end is None or "FIN" not in (end.get("flags") or []):
        raise ScenarioFailed(f"stream {sid} did not end with a FINAL: {end}", "a FINAL")
    frames = [f for f in r.s.frames[start:] if f.get("stream_id") == sid]
    return frames[: frames.index(end) + 1]


def _check_streamed(
    sid: int, frames: list[Any], expected: str, note: Any
) -> tuple[str, str] | None:
    """A problem (requirement, message) with stream ``sid``'s FINAL, or None."""
    final = _content(frames[-1])
    if "answer" in final:
        if "streamed" in final:
            return ("ATP-FINAL-002", f"stream {sid}: a FINAL with both answer and streamed")
        if final["answer"] != expected:
            return ("ATP-FINAL-002", f"stream {sid}: answer {final['answer']!r}, not {expected!r}")
        note(f"stream {sid}", "the answer in full (allowed)")
        return None
    streamed, adapter = final.get("streamed"), final.get("adapter")
    chunks = streamed.get("chunks") if isinstance(streamed, Mapping) else None
    if not isinstance(adapter, str) or isinstance(chunks, bool) or not isinstance(chunks, int):
        return (
            "ATP-FINAL-002",
            f"stream {sid}: a FINAL without answer must say adapter and streamed.chunks: "
            f"{dict(final)}",
        )
    texts = [
        c["text"]
        for f in frames[:-1]
        if (c := _content(f)).get("adapter") == adapter and isinstance(c.get("text"), str)
    ]
    note(f"stream {sid}", {"adapter": adapter, "chunks": chunks, "partials": len(texts)})
    if len(texts) != chunks:
        return (
            "ATP-FINAL-002",
            f"stream {sid}: streamed.chunks {chunks}, but {len(texts)} PARTIALs of {adapter!r}",
        )
    if "".join(texts) != expected:
        return (
            "ATP-FINAL-002",
            f"stream {sid}: the answer was left out, but the PARTIALs of {adapter!r} "
            f"carry {''.join(texts)!r}, not the answer {expected!r}",
        )
    return None


async def _one_encoding(r: Runner, duo: bool) -> tuple[str, str] | None:
    full = await _stream(r, 1, "{n=5}ok", {})
    answer = _content(full[-1]).get("answer")
    if not isinstance(answer, str) or "streamed" in _content(full[-1]):
        return (
            "ATP-FINAL-003",
            f"stream 1 (no meta.final_answer): FINAL content {dict(_content(full[-1]))}",
        )
    asked = {"final_answer": "streamed"}
    problem = _check_streamed(3, await _stream(r, 3, "{n=5}ok", asked), answer, r.rec.note)
    if problem is not None:
        return problem
    if duo:
        frames = await _stream(r, 5, _DUO, dict(asked, adapters=["conf", "conf2"], fanout=2))
        winner = _content(frames[-1]).get("adapter")
        if winner not in _DUO_ANSWERS:
            return ("ATP-FINAL-002", f"stream 5: the FINAL names adapter {winner!r}")
        problem = _check_streamed(5, frames, _DUO_ANSWERS[str(winner)], r.rec.note)
        if problem is not None:
            return problem
    # "full" said out loud is the default, not "the key is there, so streamed"
    said = _content((await _stream(r, 7, "{n=5}ok", {"final_answer": "full"}))[-1])
    if said.get("answer") != answer or "streamed" in said:
        return (
            "ATP-FINAL-003",
            f'stream 7 (meta.final_answer "full"): FINAL content {dict(said)}',
        )
    return None


async def run(
    case: CaseSpec,
    ctx: RunContext,
    rec: Recorder,
    opener: Any = open_session,
    check: Any = result_of,
) -> CaseResult:
    """The case on a session from ``opener`` (QUIC: :mod:`.router_quic`'s, judged by its
    ``check``, which adds the binding's invariants)."""
    from conformance.roles import router

    if ctx.options.get("adapter") is None:
        return rec.result(Verdict.UNSUPPORTED, "needs --adapter-listen (the scripted adapter)")
    duo = "," in (ctx.adapter_listen or "")
    text = case.id.startswith("router.text.")
    session = None
    r: Runner | None = None
    try:
        session, r = await router._setup(ctx, rec, text, None, opener)
        problem = await _one_encoding(r, duo)
        if problem is not None:
            req, message = problem
            return rec.failed(message, "ATP-FINAL-002/003 kept", (req,))
        return check(r, rec, None)  # type: ignore[no-any-return]
    except ScenarioFailed as exc:
        if r is None:
            return rec.failed(exc.message, exc.expected, exc.violated)
        return check(r, rec, exc)  # type: ignore[no-any-return]
    finally:
        if session is not None:
            await session.aclose()
