"""The state of one scenario run (:class:`Runner`: the session, what was sent, the credit
granted, the run's token) and the frame matchers, for :mod:`conformance.scenario`."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

import trio

from conformance._record import Recorder
from conformance.drivers.ws import WsSession
from conformance.roles import RunContext

__all__ = [
    "DEFAULT_WINDOW",
    "END_MS",
    "META",
    "WINDOW",
    "Runner",
    "ScenarioFailed",
    "Unsupported",
    "_ended",
    "matches",
]

#: the seed's SYN window and meta (spec §13.4)
WINDOW = {"max_parallel": 4, "max_tokens": 50000, "max_usd_micros": 1000000}
META = {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]}
DEFAULT_WINDOW = 262_144
END_MS = 5000


class ScenarioFailed(Exception):
    def __init__(self, message: str, expected: str = "", violated: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.violated = violated


class Unsupported(Exception):
    """The case needs what the run lacks (--adapter-listen, --token): UNSUPPORTED."""


def matches(frame: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    for key, cond in want.items():
        have = frame.get(key, None)
        if key == "flags" and isinstance(cond, Mapping):
            flags = set(have or [])
            if not set(cond.get("has", [])) <= flags or set(cond.get("lacks", [])) & flags:
                return False
            continue
        if isinstance(cond, Mapping) and cond.get("or_absent") and key not in frame:
            continue
        if isinstance(cond, Mapping) and cond.keys() & {
            "any_of",
            "present",
            "gte",
            "lte",
            "regex",
            "contains",
        }:
            if "regex" in cond and not (
                isinstance(have, str) and re.fullmatch(cond["regex"], have)
            ):
                return False
            if "contains" in cond and not (isinstance(have, str) and cond["contains"] in have):
                return False
            if "present" in cond and (key in frame) != bool(cond["present"]):
                return False
            if "any_of" in cond and have not in cond["any_of"]:
                return False
            if "gte" in cond and not (isinstance(have, (int, float)) and have >= cond["gte"]):
                return False
            if "lte" in cond and not (isinstance(have, (int, float)) and have <= cond["lte"]):
                return False
            continue
        if isinstance(cond, Mapping):
            if not isinstance(have, Mapping) or not matches(have, cond):
                return False
        elif have != cond:
            return False
    return True


def _ended(f: Mapping[str, Any]) -> bool:
    flags = f.get("flags") or []
    return f.get("type") == "ERROR" or "FIN" in flags or "RST" in flags


class Runner:
    """State of one scenario run: the session, what was sent, the token of the run."""

    def __init__(self, ctx: RunContext, session: WsSession, rec: Recorder, text: bool) -> None:
        self.ctx = ctx
        self.s = session
        self.rec = rec
        self.text = text
        self.token = secrets.token_hex(6)
        self.syn_seq: dict[Any, int] = {}  #: stream -> msg_seq of its SYN
        #: stream -> how many frames had arrived when its (latest) SYN was sent: a stream's
        #: end comes after its SYN, so a SYN on a used id is judged by what follows it
        self.syn_from: dict[Any, int] = {}
        #: stream -> [(frames received when the grant was sent, credit)]
        self.granted: dict[Any, list[tuple[int, int]]] = {}
        self.initial_window = DEFAULT_WINDOW
        self.next_sid = 1
        self.last_sid: Any = None  #: the stream the last SYN opened ("stream_id: last")
        self.router_caps: Mapping[str, Any] | None = None  #: the router's CAPABILITIES caps
        #: the session_id the client sent (text), which the router must then echo
        self.session_id: str | None = None
        self.session_from = 0  #: frames received before the session_id was sent need none
        #: opens another session on the same transport (other_session); None: WebSocket
        self.open_other: Any = None
        #: a text session whose client sent CAPABILITIES: its credit is limited (ATP-FLOW-007)
        #: and counted in UTF-8 bytes of each text message (ATP-FLOW-008)
        self.text_credit = False
        self.mark = 0  #: the adapter's event count at the last adapter_mark step

    def prompt(self, behaviour: str = "ok") -> str:
        return f"conformance:{self.token}:{behaviour}"

    def _expand(self, value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("{task") and value.endswith("}"):
                return self.prompt(value[6:-1] if ":" in value else "ok")
            return value
        if isinstance(value, Mapping):
            return {k: self._expand(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._expand(v) for v in value]
        return value

    def ms(self, step: Mapping[str, Any], key: str = "within_ms", default: float = END_MS) -> float:
        return self.ctx.timeout(float(step.get(key, default)) / 1000)

    async def send(self, m: Mapping[str, Any]) -> None:
        m = dict(self._expand(m))
        if self.text and "session_id" not in m:
            if self.session_id is None:
                self.session_from = len(self.s.frames)
            m["session_id"] = self.session_id = self.session_id or "conf-s1"
        sid = m.get("stream_id", 0)
        if "SYN" in (m.get("flags") or []):
            self.syn_seq[sid] = int(m.get("msg_seq", 0))
            self.syn_from[sid] = len(self.s.frames)
            self.last_sid = sid
            if isinstance(sid, int):
                self.next_sid = max(self.next_sid, sid + 2)
        caps = m.get("caps")
        if m.get("type") == "CAPABILITIES" and isinstance(caps, Mapping):
            if isinstance(caps.get("initial_window"), int):
                self.initial_window = caps["initial_window"]
            self.text_credit = self.text
        if m.get("type") == "WINDOW_UPDATE" and isinstance(m.get("credit"), int):
            self.granted.setdefault(sid, []).append((len(self.s.frames), m["credit"]))
        await self.s.send(m)

    def credit_at(self, sid: Any, index: int) -> int:
        """The credit the router had for ``sid`` when it sent received frame ``index``."""
        return self.initial_window + sum(c for n, c in self.granted.get(sid, []) if n <= index)

    def syn(self, step: Mapping[str, Any]) -> dict[str, Any]:
        sid = step.get("stream_id", self.next_sid)
        m: dict[str, Any] = {
            "type": "DATA",
            "flags": ["SYN"],
            "stream_id": sid,
            "msg_seq": step.get("msg_seq", 1),
            "qos": step.get("qos", "gold"),
            "ttl": step.get("ttl", 8),
            "window": step.get("window", WINDOW),
            "meta": dict(META, **step.get("meta", {})),
            "payload": {
                "type": "agent.task",
                "content": {"prompt": self.prompt(step.get("behaviour", "ok"))},
            },
        }
        if "meta_option" in step:  # a meta the vendor passes (e.g. --denied-meta JSON)
            raw = self.ctx.options.get(step["meta_option"])
            if not raw:
                raise Unsupported(f"needs --{step['meta_option'].replace('_', '-')}")
            try:
                extra = json.loads(raw) if isinstance(raw, str) else raw
            except ValueError as exc:
                raise Unsupported(f"--{step['meta_option']} is not JSON: {exc}") from None
            if not isinstance(extra, Mapping):
                raise Unsupported(f"--{step['meta_option']} is not a JSON object")
            m["meta"].update(extra)
        if self.ctx.adapter_listen and step.get("behaviour") is not None:
            m["meta"].setdefault("adapters", ["conf"])
        if "conf2" in (m["meta"].get("adapters") or []) and "," not in (
            self.ctx.adapter_listen or ""
        ):
            raise Unsupported(
                "needs a second scripted adapter: --adapter-listen HOST:PORT,HOST:PORT "
                "(the router's adapters conf and conf2)"
            )
        for key in ("frag_seq", "extra"):
            if key in step:
                m.update(step[key] if key == "extra" else {key: step[key]})
        return m

    async def wait_for(self, want: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        for f in self.s.frames:  # already here
            if matches(f, want) and not f.get("_used"):
                f["_used"] = True
                return f
        with trio.move_on_after(timeout):
            while True:
                nxt = await self.s.next(timeout)
                if nxt is None:
                    if self.s.closed:
                        return None
                    continue
                if matches(nxt, want) and not nxt.get("_used"):
                    nxt["_used"] = True
                    return nxt
        return None

    async def end_of(self, sid: Any, timeout: float) -> dict[str, Any] | None:
        start = self.syn_from.get(sid, 0)
        seen = start  # frames only grow: look at each once (rescanning them all on every
        # arrival made an answer in many small fragments quadratic, past the time bound)
        with trio.move_on_after(timeout):
            while True:
                frames = self.s.frames
                for f in frames[seen:]:
                    if f.get("stream_id") == sid and _ended(f):
                        return f
                seen = len(frames)
                if await self.s.next(timeout) is None and self.s.closed:
                    break
        for f in self.s.frames[start:]:
            if f.get("stream_id") == sid and _ended(f):
                return f
        return None
