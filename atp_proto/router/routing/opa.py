"""A Rego policy on an external OPA server, over its REST data API (ATP-SEC-017).

``atp serve --opa-url http://HOST:8181`` (or env ``OPA_URL``): every decision is
``POST {url}/v1/data/atp/policy`` with ``{"input": <the policy input>}``; the answer's
``result`` is the same ``data.atp.policy`` document the in-process engine gives
(docs/policy.md). Answers are cached for :data:`CACHE_TTL_S` by their input.

Fail closed: when OPA does not answer within the timeout, answers an error status, or
answers something that is not a policy document, the stream is refused with EAGENTDOWN
(with ``retry_after_ms``: the outage is the router's, a retry may succeed; ESEC would
tell the client it is forbidden) and a message saying the policy service is unreachable.
Nothing runs unauthorized.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import trio

from atp_proto.frames import ATPError, ErrorCode

from .._fetch import fetch_limiter, read_body

__all__ = ["CACHE_TTL_S", "OpaEngine"]

CACHE_TTL_S = 1.0
CACHE_SIZE = 4096
RETRY_AFTER_MS = 1000
MAX_ANSWER_BYTES = 1 << 20
#: OPA requests in flight at once (threads of their own limiter: a server that never ends
#: its answers holds these, not the default limiter's; beyond them a decision waits, and
#: fails closed at its timeout)
OPA_THREADS = 16


class OpaEngine:
    """Asks an OPA server for ``data.atp.policy``."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, path: str = "atp/policy") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--opa-url: expected http(s)://HOST:PORT, got {url!r}")
        self.url = url.rstrip("/") + "/v1/data/" + path.strip("/")
        self.where = f"{parts.scheme}://{parts.netloc}"  # never a query string (tokens)
        self.timeout_s = timeout_s
        self.version = "opa-" + hashlib.sha256(self.url.encode()).hexdigest()[:8]
        self._cache: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._threads = fetch_limiter(OPA_THREADS)

    def _post(self, body: bytes) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        deadline = time.monotonic() + self.timeout_s
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            raw = read_body(resp, MAX_ANSWER_BYTES, deadline)
        if len(raw) > MAX_ANSWER_BYTES:
            raise ValueError("answer too large")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("answer is not a JSON object")
        result = doc.get("result")
        if result is None:
            raise ValueError("no policy at data.atp.policy (is the package loaded?)")
        if not isinstance(result, dict):
            raise ValueError("data.atp.policy is not an object")
        return result

    def _unreachable(self, why: str) -> ATPError:
        return ATPError(
            ErrorCode.EAGENTDOWN,
            f"policy service {self.where} unreachable ({why}): refused, failing closed",
            retry_after_ms=RETRY_AFTER_MS,
        )

    async def evaluate_async(self, doc: Mapping[str, Any]) -> Mapping[str, Any]:
        """The policy's answer for ``doc``.

        Raises:
            ATPError: EAGENTDOWN when OPA cannot answer (fail closed).
        """
        body = json.dumps({"input": doc}, sort_keys=True, separators=(",", ":")).encode()
        key = body.decode()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_TTL_S:
            return hit[1]
        try:
            with trio.fail_after(self.timeout_s + 0.5):
                result = await trio.to_thread.run_sync(
                    self._post, body, abandon_on_cancel=True, limiter=self._threads
                )
        except trio.TooSlowError:
            raise self._unreachable("timed out") from None
        except urllib.error.HTTPError as exc:
            raise self._unreachable(f"HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise self._unreachable(
                str(getattr(exc.reason, "strerror", None) or exc.reason)
            ) from None
        except (OSError, ValueError) as exc:
            raise self._unreachable(str(exc) or type(exc).__name__) from None
        except RecursionError:  # an answer nested too deep is no policy document either
            raise self._unreachable("answer nested too deep") from None
        self._cache[key] = (now, result)
        self._cache.move_to_end(key)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result
