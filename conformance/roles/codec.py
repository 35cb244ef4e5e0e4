"""The codec role: a frame codec in any language, driven over JSON lines on its stdin
and stdout (``atp conformance run --role codec --exec CMD``; protocol in
``conformance/README.md``).

Cases: every vector of ``conformance/vectors/frames.json`` decoded (valid ones to their
JSON mappings, invalid ones refused with the exact code and scope), every valid vector's
frames encoded back (the hex is checked with the independent parser of
:mod:`atp_proto.testing.frames`), and fuzz cases: valid frames mutated reproducibly from
``--seed`` (truncated, a version changed, the stream id's reserved bit set), each of
which the spec says how to refuse.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from typing import IO, Any

import trio

from atp_proto.testing.frames import parse_frames
from conformance._record import Recorder
from conformance.model import CaseResult, CaseSpec, Level, Role
from conformance.roles import RunContext, TargetUnreachable
from conformance.vectors import load

__all__ = ["cases", "finish", "prepare", "run"]

FUZZ_CASES = 6
MUTATIONS_PER_CASE = 25
REPLY_TIMEOUT_S = 5.0
#: a reply line longer than this is refused (the testee is not trusted either)
MAX_REPLY = 1 << 22


def _vectors() -> list[dict[str, Any]]:
    return list(load("frames")["vectors"])


def cases(options: Mapping[str, Any]) -> list[CaseSpec]:
    out = [
        CaseSpec(
            "codec.hello",
            Role.CODEC,
            "the testee answers hello with its name and claims",
            ("ATP-FRAME-001",),
            description='sends {"op":"hello"}; expects ok, a name and claims including L1',
        )
    ]
    for v in _vectors():
        if "error" in v:
            desc = f"decodes {v['title']}; expects error {v['error']} of scope {v['scope']}"
        else:
            desc = f"decodes {v['title']}; expects exactly {len(v['frames'])} frame(s) as listed"
        out.append(
            CaseSpec(
                f"codec.decode.{v['id']}",
                Role.CODEC,
                v["title"],
                tuple(v["requirements"]),
                description=desc,
            )
        )
    for v in _vectors():
        if (
            "frames" in v
            and not v.get("text_lossy")
            and all(
                isinstance(f.get("type", 0), int) is False or f.get("type", 0) < 5
                for f in v["frames"]
            )
        ):
            out.append(  # noqa: PERF401 - one case per vector reads better as a loop
                CaseSpec(
                    f"codec.encode.{v['id']}",
                    Role.CODEC,
                    f"encode: {v['title']}",
                    ("ATP-FRAME-001", "ATP-FRAME-002"),
                    description="encodes each "
                    "frame's JSON mapping; the hex must parse (independent parser) to "
                    "the header, ext and payload of the vector",
                )
            )
    for i in range(FUZZ_CASES):
        out.append(  # noqa: PERF401 - one case per batch reads better as a loop
            CaseSpec(
                f"codec.fuzz.{i}",
                Role.CODEC,
                f"fuzz batch {i}: mutated valid frames",
                ("ATP-WS-001", "ATP-FRAME-003", "ATP-FRAME-004"),
                level=Level.L1,
                description=f"{MUTATIONS_PER_CASE} mutations of valid vectors drawn "
                "from --seed: truncations (EPROTO connection), a version other than 1 "
                "(EPROTO connection), the reserved stream-id bit (EPROTO connection)",
            )
        )
    return out


class _Testee:
    def __init__(self, proc: trio.Process, errf: IO[bytes]) -> None:
        self.proc = proc
        self.errf = errf
        self.buf = b""
        self.lock = trio.Lock()

    async def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """One request, one reply; None when the testee did not answer in time or died."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self.lock:
            try:
                await self.proc.stdin.send_all((json.dumps(request) + "\n").encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            with trio.move_on_after(timeout):
                while b"\n" not in self.buf:
                    data = await self.proc.stdout.receive_some(65536)
                    if not data or len(self.buf) > MAX_REPLY:
                        return None
                    self.buf += data
                line, _, self.buf = self.buf.partition(b"\n")
                try:
                    reply = json.loads(line)
                except ValueError:
                    return {"ok": None, "invalid_reply": line[:200].decode("utf-8", "replace")}
                return reply if isinstance(reply, dict) else {"ok": None, "invalid_reply": reply}
            return None

    def stderr(self) -> str:
        self.errf.flush()
        self.errf.seek(0)
        return self.errf.read()[-8000:].decode("utf-8", "replace")


_TESTEES: dict[str, _Testee] = {}


def _command(ctx: RunContext) -> list[str]:
    cmd = str(ctx.options.get("exec") or ctx.target)
    if not cmd:
        raise TargetUnreachable("the codec role needs --exec CMD")
    return shlex.split(cmd)


async def prepare(ctx: RunContext) -> dict[str, Any]:
    """Start the testee and say hello (called once per run by the runner)."""
    argv = _command(ctx)
    errf = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the testee (finish())
    try:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf
        )
    except OSError as exc:
        raise TargetUnreachable(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    testee = _Testee(proc, errf)
    _TESTEES[ctx.target or str(ctx.options.get("exec"))] = testee
    reply = await testee.ask({"op": "hello"}, ctx.timeout(REPLY_TIMEOUT_S * 2))
    if reply is None:
        said = testee.stderr()[-300:]  # before finish() closes the file
        await finish(ctx)
        raise TargetUnreachable(f"the codec testee did not answer hello: {said}")
    return {"hello": reply}


async def finish(ctx: RunContext) -> None:
    testee = _TESTEES.pop(ctx.target or str(ctx.options.get("exec")), None)
    if testee is None:
        return
    with trio.CancelScope(shield=True):
        if testee.proc.stdin is not None:
            await testee.proc.stdin.aclose()
        with trio.move_on_after(2):
            await testee.proc.wait()
        if testee.proc.returncode is None:
            testee.proc.kill()
            await testee.proc.wait()
    testee.errf.close()


def _norm(frame: Any) -> Any:
    """A JSON mapping with defaults dropped and flags as a set, for comparison."""
    if not isinstance(frame, dict):
        return frame
    defaults = {
        "v": 1,
        "type": "DATA",
        "msg_seq": 0,
        "frag_seq": 0,
        "qos": 0,
        "ttl": 0,
        "payload": None,
        "flags": [],
    }
    out = {k: v for k, v in frame.items() if defaults.get(k, object()) != v}
    if isinstance(out.get("type"), int) and out["type"] == 0:
        del out["type"]
    if "flags" in out and isinstance(out["flags"], list):
        out["flags"] = sorted(str(f) for f in out["flags"])
    if out.get("qos") == "unspecified":
        del out["qos"]
    return out


async def run(case: CaseSpec, ctx: RunContext) -> CaseResult:
    from conformance._record import describe

    testee = _TESTEES.get(ctx.target or str(ctx.options.get("exec")))
    if testee is None:
        raise TargetUnreachable("the codec testee is not running")
    rec = Recorder(case)
    timeout = ctx.timeout(REPLY_TIMEOUT_S)

    async def ask(req: dict[str, Any]) -> dict[str, Any] | None:
        if "hex" in req:
            rec.sent(bytes.fromhex(req["hex"]))
        else:
            rec.note("request", req)
        reply = await testee.ask(req, timeout)
        rec.note("reply", reply)
        return reply

    if case.id == "codec.hello":
        reply = await ask({"op": "hello"})
        if not reply or reply.get("ok") is not True or not isinstance(reply.get("name"), str):
            return rec.failed(f"bad hello reply: {reply}", 'ok true and a "name"')
        if "L1" not in (reply.get("claims") or []):
            return rec.failed(f"claims {reply.get('claims')} do not include L1", 'claims ["L1"]')
        return rec.passed()
    kind, _, vid = case.id.removeprefix("codec.").partition(".")
    if kind == "fuzz":
        return await _fuzz(int(vid), ctx, rec, ask)
    vector = next(v for v in _vectors() if v["id"] == vid)
    if kind == "decode":
        reply = await ask({"op": "decode", "hex": vector["hex"]})
        if reply is None:
            return rec.failed("no reply within the time bound (the testee hangs or died)")
        if "error" in vector:
            want = f"error {vector['error']} scope {vector['scope']}"
            if reply.get("ok") is not False:
                return rec.failed(f"accepted: {json.dumps(reply)[:300]}", want)
            got = f"error {reply.get('error')} scope {reply.get('scope')}"
            return rec.passed(want) if got == want else rec.failed(f"refused with {got}", want)
        want = json.dumps(vector["frames"])
        if reply.get("ok") is not True:
            return rec.failed(f"refused a valid frame: {json.dumps(reply)[:300]}", want)
        got_frames = reply.get("frames")
        if not isinstance(got_frames, list) or [_norm(f) for f in got_frames] != [
            _norm(f) for f in vector["frames"]
        ]:
            return rec.failed(f"decoded to {json.dumps(got_frames)[:600]}", want)
        return rec.passed(want)
    # encode: each frame's mapping -> hex -> independent parse, compared with the vector
    expected = parse_frames(bytes.fromhex(vector["hex"]))
    for mapping, want_f in zip(vector["frames"], expected, strict=True):
        reply = await ask({"op": "encode", "frame": mapping})
        if not reply or reply.get("ok") is not True or not isinstance(reply.get("hex"), str):
            return rec.failed(f"did not encode {json.dumps(mapping)[:200]}: {reply}")
        try:
            data = bytes.fromhex(reply["hex"])
            parsed = parse_frames(data)
        except ValueError as exc:
            return rec.failed(f"the hex is not one whole frame: {exc}")
        rec.received(data)
        if len(parsed) != 1:
            return rec.failed(f"{len(parsed)} frames for one mapping")
        g = parsed[0]
        fields = ("version", "type", "stream_id", "msg_seq", "frag_seq", "qos", "ttl")
        diffs = [f for f in fields if getattr(g, f) != getattr(want_f, f)]
        if (g.flags & 0x7F) != (want_f.flags & 0x7F):
            diffs.append("flags")
        if g.ext != want_f.ext:
            diffs.append("ext")
        if g.body() != want_f.body():
            diffs.append("payload")
        if diffs:
            return rec.failed(
                f"encoded frame differs in {', '.join(diffs)}: {describe(data)}",
                json.dumps(describe(bytes.fromhex(vector["hex"]))),
            )
    return rec.passed()


async def _fuzz(batch: int, ctx: RunContext, rec: Recorder, ask: Any) -> CaseResult:
    rng = random.Random(f"{ctx.seed}:{batch}")
    valid = [bytes.fromhex(v["hex"]) for v in _vectors() if "frames" in v]
    for _ in range(MUTATIONS_PER_CASE):
        base = rng.choice(valid)
        what = rng.choice(("truncate", "version", "reserved-bit"))
        data = bytearray(base)
        if what == "truncate":  # anywhere but at a frame boundary
            ends, pos = set(), 0
            for f in parse_frames(base):
                pos += f.size
                ends.add(pos)
            data = data[: rng.choice([n for n in range(1, len(base)) if n not in ends])]
        elif what == "version":
            data[0] = rng.choice([v for v in range(256) if v != 1])
        else:
            data[4] |= 0x80  # the high bit of stream_id (header bytes 4-7)
        reply = await ask({"op": "decode", "hex": bytes(data).hex()})
        want = "error EPROTO scope connection"
        if reply is None:
            return rec.failed(f"no reply to a {what} mutation", want)
        got = f"error {reply.get('error')} scope {reply.get('scope')}"
        if reply.get("ok") is not False or got != want:
            return rec.failed(f"{what} mutation of a valid frame: {json.dumps(reply)[:300]}", want)
    return rec.passed(f"{MUTATIONS_PER_CASE} mutations refused")
