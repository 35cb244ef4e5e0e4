"""Reference adapter ``openai``: a bridge to any OpenAI-compatible chat-completions API.

    OPENAI_API_KEY=... atp adapter serve openai --option model=gpt-4o-mini
    atp adapter serve openai --option base_url=http://127.0.0.1:8000/v1 --option model=llama3

Settings (``--option`` flag, else environment, else default):

=============== ==================== ==========================================
option          environment          default
=============== ==================== ==========================================
base_url        OPENAI_BASE_URL      https://api.openai.com/v1
model           ATP_OPENAI_MODEL     gpt-4o-mini
api_key         OPENAI_API_KEY       (none: no Authorization header)
usd_per_1k_in   -                    0 (micro-USD per 1000 input tokens)
usd_per_1k_out  -                    0 (micro-USD per 1000 output tokens)
confidence      -                    0.7
timeout         -                    60 (seconds, connect + whole response)
max_tokens      -                    512 (output tokens asked for, at most; a task's lower one wins)
=============== ==================== ==========================================

``stream`` POSTs ``{base_url}/chat/completions`` with ``"stream": true`` and turns the
server-sent events (``data: {...}`` lines, ending with ``data: [DONE]``) into chunks: one
per content delta, then a final chunk carrying the finish reason and, when the server
reports ``usage``, the exact token counts. The HTTP/1.1 client is h11 over asyncio streams
(no extra dependency); the response is read only as fast as the router takes chunks.

The API key is never logged or shown in ``repr``. HTTP errors map to ATP codes: 401/403 →
ESEC, 429 → EWINDOW_AGENT (with Retry-After), 400/404/422 → EPROTO, others → EAGENTDOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import h11

from atp_proto.frames import ErrorCode

from ._base import AdapterError, Chunk, CostEstimate, Health, TaskRequest
from .builtin import count_tokens

__all__ = ["OpenAIBridge"]

log = logging.getLogger("atp.adapter.openai")

_KNOWN = {
    "base_url",
    "model",
    "api_key",
    "usd_per_1k_in",
    "usd_per_1k_out",
    "confidence",
    "timeout",
    "max_tokens",
}


def _http_error(status: int, body: bytes, headers: dict[str, str]) -> AdapterError:
    try:
        detail = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = body[:200].decode("utf-8", "replace")
    msg = f"upstream HTTP {status}: {detail}" if detail else f"upstream HTTP {status}"
    if status in (401, 403):
        return AdapterError(ErrorCode.ESEC, msg)
    if status == 429:
        retry = None
        with contextlib.suppress(ValueError):
            retry = int(float(headers.get("retry-after", "")) * 1000)
        return AdapterError(ErrorCode.EWINDOW_AGENT, msg, retry_after_ms=retry)
    if status in (400, 404, 422):
        return AdapterError(ErrorCode.EPROTO, msg)
    return AdapterError(ErrorCode.EAGENTDOWN, msg)


class OpenAIBridge:
    """Serves ATP tasks from an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        usd_per_1k_in: int = 0,
        usd_per_1k_out: int = 0,
        confidence: float = 0.7,
        timeout: float = 60.0,
        max_tokens: int = 512,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://HOST[:PORT]/PATH, not {base_url!r}")
        self.name = "openai"
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key or None
        self.usd_per_1k_in = usd_per_1k_in
        self.usd_per_1k_out = usd_per_1k_out
        self.confidence = confidence
        self.timeout = timeout
        self.max_tokens = max_tokens
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._path = (parts.path.rstrip("/") or "") + "/chat/completions"
        self._latencies: list[float] = []

    @classmethod
    def from_options(
        cls, options: Mapping[str, str], env: Mapping[str, str] | None = None
    ) -> OpenAIBridge:
        """Options from ``--option`` flags, then the environment, then defaults.

        Raises:
            ValueError: unknown or malformed option.
        """
        env = os.environ if env is None else env
        unknown = set(options) - _KNOWN
        if unknown:
            raise ValueError(f"unknown openai option(s): {', '.join(sorted(unknown))}")
        try:
            return cls(
                base_url=options.get("base_url")
                or env.get("OPENAI_BASE_URL")
                or "https://api.openai.com/v1",
                model=options.get("model") or env.get("ATP_OPENAI_MODEL") or "gpt-4o-mini",
                api_key=options.get("api_key") or env.get("OPENAI_API_KEY"),
                usd_per_1k_in=int(options.get("usd_per_1k_in", 0)),
                usd_per_1k_out=int(options.get("usd_per_1k_out", 0)),
                confidence=float(options.get("confidence", 0.7)),
                timeout=float(options.get("timeout", 60)),
                max_tokens=int(options.get("max_tokens", 512)),
            )
        except ValueError as exc:
            raise ValueError(f"bad openai option: {exc}") from None

    def __repr__(self) -> str:  # never show the key
        key = "set" if self._api_key else "none"
        return f"OpenAIBridge(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"

    def _max_out(self, request: TaskRequest) -> int:
        """The output tokens asked of the model (and estimated): the option's cap, lowered by
        the task's ``max_tokens``. The task's is the stream's whole token budget (a client's
        window of 50,000, say): estimated as such, every stream with a window was refused
        EBUDGET (the guard-banded estimate passes the window), and asked of the model, it
        passes most models' output limit (an HTTP 400 upstream)."""
        if request.max_tokens is None:
            return self.max_tokens
        return min(self.max_tokens, request.max_tokens)

    def _usd(self, tin: int, tout: int) -> int:
        return (tin * self.usd_per_1k_in + tout * self.usd_per_1k_out) // 1000

    # ------------------------------------------------------------------ adapter API

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        tin = count_tokens(request.prompt)
        tout = self._max_out(request)
        p95 = self._p95() or 2000.0
        return CostEstimate(
            in_tokens=tin,
            out_tokens=tout,
            usd_micros=self._usd(tin, tout),
            latency_p95_ms=p95,
            variance=(tout / 2) ** 2,
            confidence=self.confidence,
        )

    async def health(self) -> Health:
        return Health(status="READY", p95_ms=self._p95())

    def _p95(self) -> float:
        if not self._latencies:
            return 0.0
        ordered = sorted(self._latencies[-256:])
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    async def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]:
        t0 = time.perf_counter()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": request.prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self._max_out(request),
        }
        tin = count_tokens(request.prompt)
        text_tokens = 0
        finish = ""
        usage: dict[str, Any] | None = None
        async with _Http(self, request) as http:
            status, headers = await http.post(self._path, json.dumps(body).encode())
            if status != 200:
                raise _http_error(status, await http.read_all(), headers)
            async for event in http.sse():
                if event == "[DONE]":
                    break
                try:
                    data = json.loads(event)
                except ValueError:
                    raise AdapterError(ErrorCode.EAGENTDOWN, "upstream sent bad JSON") from None
                if isinstance(data.get("usage"), dict):
                    usage = data["usage"]
                for choice in data.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content") or ""
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                    if content:
                        text_tokens += count_tokens(content)
                        yield Chunk(
                            content=content,
                            confidence=self.confidence,
                            tokens=tin + text_tokens,
                            usd_micros=self._usd(tin, text_tokens),
                        )
            else:
                raise AdapterError(
                    ErrorCode.EAGENTDOWN, "upstream ended the stream without [DONE]", streamed=True
                )
        if usage:
            tin = int(usage.get("prompt_tokens", tin))
            text_tokens = int(usage.get("completion_tokens", text_tokens))
        self._latencies.append((time.perf_counter() - t0) * 1000)
        del self._latencies[:-256]
        yield Chunk(
            content="",
            confidence=self.confidence,
            tokens=tin + text_tokens,
            usd_micros=self._usd(tin, text_tokens),
            final=True,
            finish_reason=finish or "stop",
        )


class _Http:
    """One HTTP/1.1 request on a fresh connection (h11 over asyncio streams)."""

    def __init__(self, bridge: OpenAIBridge, request: TaskRequest) -> None:
        self.b = bridge
        self.req = request
        self.conn = h11.Connection(our_role=h11.CLIENT)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.deadline = time.monotonic() + bridge.timeout

    async def __aenter__(self) -> _Http:
        b = self.b
        ctx = ssl.create_default_context() if b._tls else None
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(b._host, b._port, ssl=ctx), timeout=self._left()
            )
        except (OSError, TimeoutError) as exc:
            raise AdapterError(
                ErrorCode.EAGENTDOWN, f"cannot connect to {b._host}:{b._port}: {exc}"
            ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AdapterError(ErrorCode.ETIMEOUT, "upstream did not answer in time")
        return left

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        b = self.b
        headers = [
            ("Host", f"{b._host}:{b._port}"),
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
            ("Content-Length", str(len(body))),
            ("User-Agent", "atp-openai-bridge/1"),
        ]
        if b._api_key:
            headers.append(("Authorization", f"Bearer {b._api_key}"))
        if self.req.request_id:
            headers.append(("X-Request-Id", self.req.request_id))
        assert self.writer is not None
        self.writer.write(
            self.conn.send(h11.Request(method="POST", target=path, headers=headers)) or b""
        )
        self.writer.write(self.conn.send(h11.Data(data=body)) or b"")
        self.writer.write(self.conn.send(h11.EndOfMessage()) or b"")
        await self.writer.drain()
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                hdrs = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                return event.status_code, hdrs
            if isinstance(event, h11.InformationalResponse):
                continue
            raise AdapterError(ErrorCode.EAGENTDOWN, "upstream closed before answering")

    async def _next(self) -> Any:
        assert self.reader is not None
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise AdapterError(ErrorCode.EAGENTDOWN, f"bad HTTP from upstream: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(self.reader.read(65536), timeout=self._left())
            except (OSError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    raise AdapterError(ErrorCode.ETIMEOUT, "upstream timed out") from None
                raise AdapterError(
                    ErrorCode.EAGENTDOWN, f"upstream connection lost: {exc}"
                ) from None
            self.conn.receive_data(data)

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def read_all(self) -> bytes:
        out = bytearray()
        async for part in self._body():
            out += part
            if len(out) > 1 << 16:
                break
        return bytes(out)

    async def sse(self) -> AsyncIterator[str]:
        """The ``data:`` payloads of the event stream (multi-line data joined by \\n)."""
        buf = b""
        data_lines: list[str] = []
        async for part in self._body():
            buf += part
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r").decode("utf-8", "replace")
                if not line:
                    if data_lines:
                        yield "\n".join(data_lines)
                        data_lines = []
                elif line.startswith("data:"):
                    data_lines.append(line[5:].removeprefix(" "))
                # other fields (event:, id:, retry:, comments) are ignored
        if data_lines:
            yield "\n".join(data_lines)
