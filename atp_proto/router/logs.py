"""The router's log formatters: one JSON object per line, or text with ``key=value`` extras.

Every log call passes its fields in ``extra`` (session, stream, code, peer, ...); both
formatters print them after the message, so operators can grep text logs and ship JSON
ones without a parser per message.
"""

from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]

#: Reserved for logging's own LogRecord attributes; everything else in ``extra`` is a field.
_RECORD_KEYS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update((k, v) for k, v in vars(record).items() if k not in _RECORD_KEYS)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _RECORD_KEYS)
        return f"{base} {extra}" if extra else base


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("atp")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
