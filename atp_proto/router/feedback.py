"""``POST /v1/feedback`` on the router's HTTP port: the quality of a finished stream's
answer, reported by the client or an evaluator by the decision id its FINAL carried
(ATP-FEED-001..003).

Request: ``Content-Type: application/json``, at most 8 KiB (ATP-FEED-002)::

    {"decision_id": "9f2c...", "quality": 0.8, "source": "evaluator"}

``quality`` is in [0, 1]; ``source`` is optional (``client`` by default, at most 32
characters). Where the router authenticates sessions, the request needs the same bearer
token (``Authorization: Bearer ...``), and a decision is found only for the tenant it
was made for. Answers are JSON: 200 ``{"accepted": true}``; 400 a malformed request;
401 no or a bad token; 404 an unknown, expired, failed or already reported decision;
409 a router whose learner takes no feedback.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from .audit import AuditLog
from .auth import AuthError, TokenVerifier
from .http import PostHandler
from .routing.learning import Learner

__all__ = ["FEEDBACK_PATH", "feedback_handler"]

log = logging.getLogger("atp.router")

FEEDBACK_PATH = "/v1/feedback"
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_SOURCE = re.compile(r"[0-9A-Za-z_.-]{1,32}")


def _answer(status: str, **body: Any) -> tuple[str, str, bytes]:
    return status, "application/json", json.dumps(body).encode() + b"\n"


def feedback_handler(
    learner: Learner, authenticator: TokenVerifier | None, audit: AuditLog | None = None
) -> PostHandler:
    """The POST handler the router's HTTP server calls (never raises). An accepted report
    is also appended to the decision log, when there is one (ATP-AUDIT-002)."""

    def handle(path: str, headers: dict[str, str], body: bytes) -> tuple[str, str, bytes]:
        if path != FEEDBACK_PATH:
            return _answer("404 Not Found", error=f"POST goes to {FEEDBACK_PATH}")
        tenant = ""
        if authenticator is not None:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            try:
                if scheme.lower() != "bearer":
                    raise AuthError(401, "missing bearer token")
                tenant = authenticator.authenticate(token.strip()).tenant
            except AuthError as exc:
                status = "403 Forbidden" if exc.status == 403 else "401 Unauthorized"
                return _answer(status, error=exc.message)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # "[[[[..." nests too deep
            return _answer("400 Bad Request", error="the body must be a JSON object")
        if not isinstance(doc, dict):
            return _answer("400 Bad Request", error="the body must be a JSON object")
        decision_id, quality = doc.get("decision_id"), doc.get("quality")
        source = doc.get("source", "client")
        if not isinstance(decision_id, str) or not _ID.fullmatch(decision_id):
            return _answer("400 Bad Request", error="decision_id: a string of 1-64 [0-9A-Za-z_-]")
        # the comparison alone refuses NaN and the infinities; math.isfinite would raise
        # OverflowError on an integer of 4,000 digits (json.loads takes one)
        if (
            isinstance(quality, bool)
            or not isinstance(quality, int | float)
            or not 0.0 <= quality <= 1.0
        ):
            return _answer("400 Bad Request", error="quality: a number within 0..1")
        if not isinstance(source, str) or not _SOURCE.fullmatch(source):
            return _answer("400 Bad Request", error="source: 1-32 of [0-9A-Za-z_.-]")
        owner = getattr(learner, "owner", None)
        if owner is None:
            return _answer(
                "409 Conflict",
                error="this router's learner takes no feedback (start it with --learner bandit)",
            )
        if authenticator is not None and owner(decision_id) != tenant:
            accepted = False  # another tenant's decision is as unknown as a made-up one
        else:
            try:
                accepted = learner.feedback(decision_id, float(quality), source=source)
            except Exception:  # a learner's bug must not kill the HTTP server
                log.exception("learner.feedback failed")
                return _answer("500 Internal Server Error", error="the learner failed")
        if not accepted:
            return _answer(
                "404 Not Found",
                error=f"unknown decision id {decision_id!r} (never made, expired, failed, "
                "or already reported)",
            )
        if audit is not None:
            audit.feedback(decision_id, float(quality), source=source)
        return _answer("200 OK", accepted=True, decision_id=decision_id)

    return handle
