"""Why a connection failed, in words for a person (shared by the commands that connect)."""

from __future__ import annotations

__all__ = ["connect_reason", "refused"]

REFUSED = "connection refused (is a router listening there?)"


def refused(exc: BaseException) -> bool:
    """Every connection attempt in ``exc``'s chain (causes, contexts, exception groups)
    was refused: trio's "all attempts to connect to HOST:PORT failed" says only that."""
    todo, seen, found = [exc], set(), []
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            found.append(e)
        elif isinstance(e, BaseExceptionGroup):
            todo += e.exceptions
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return bool(found)


def connect_reason(exc: BaseException) -> str:
    """:data:`REFUSED` when the peer refused, else the most specific message in the
    exception chain (trio-websocket wraps the OSError)."""
    if refused(exc):
        return REFUSED
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__
