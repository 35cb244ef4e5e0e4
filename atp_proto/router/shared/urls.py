"""The ``--redis`` URL forms that name more than one server (no ``redis`` import here: the
configuration checks a URL at start without loading the client).

``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[?db=N]`` (or
``rediss+sentinel://``: TLS to the master) names the Redis Sentinels that watch a master
called ``MASTER_NAME``: the router asks them where the master is, and asks again after a
failover (README "Which Redis"). The credentials are the master's (and its replicas');
the sentinels are asked without them, or with ``?sentinel_password=PW`` (and
``&sentinel_username=USER`` for an ACL user) when they require one (``requirepass`` in
sentinel.conf); every password is kept out of logs (:func:`.link.redacted`).
``?min_other_sentinels=N`` (default 0): a sentinel is believed only when it sees at
least N other sentinels (one cut off on the minority side of a partition is not).
``?replicas=N`` (default 1): the replicas that must acknowledge every quota write
(``WAIT``, at most ``?wait_ms=N``, default 50) before the router counts it as stored
without asking the sentinels whether the server is still the master; 0 trusts the
master alone (Redis replication is asynchronous: a failover may then lose the writes the
old master acknowledged last). A master the sentinels confirmed short of replicas is
written to for a second without waiting for the missing ones
(:meth:`.link.RedisLink.pipelined`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

__all__ = ["SENTINEL_SCHEMES", "SentinelURL", "parse_sentinel", "redact_netloc"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

_USAGE = "--redis expects redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER_NAME[?db=N]"


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  #: no secret in a repr
    ssl: bool = False
    replicas: int = 1  #: replicas that must acknowledge a quota write (``?replicas=N``)
    wait_ms: int = 50  #: how long a write waits for them (``?wait_ms=N``, at least 1)
    sentinel_username: str | None = None  #: the sentinels' own (``?sentinel_username=``)
    #: the sentinels' own (``?sentinel_password=``)
    sentinel_password: str | None = field(default=None, repr=False)
    #: a sentinel is believed only when it sees this many others (``?min_other_sentinels=``)
    min_other_sentinels: int = 0


def parse_sentinel(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL.

    Raises:
        ValueError: one line saying what is wrong (never repeating the URL, which may
            hold a password).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ValueError(_USAGE)
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_pw, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if has_pw else None
    sentinels: list[tuple[str, int]] = []
    for addr in netloc.split(","):
        host, colon, port = addr.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{_USAGE}: each sentinel is HOST:PORT")
        sentinels.append((host, int(port)))
    master = unquote(path.strip("/"))
    if not master or "/" in master:
        raise ValueError(f"{_USAGE}: the path names the master (as in 'sentinel monitor NAME')")
    options = parse_qs(query, keep_blank_values=True)
    known = {"db", "replicas", "wait_ms", "sentinel_username", "sentinel_password"}
    unknown = set(options) - known - {"min_other_sentinels"}
    if unknown:
        raise ValueError(f"{_USAGE}: unknown option(s) {', '.join(sorted(unknown))}")
    db_text = options.get("db", ["0"])[-1]
    if not db_text.isdigit():
        raise ValueError(f"{_USAGE}: the DB must be a number")
    replicas = options.get("replicas", ["1"])[-1]
    wait_ms = options.get("wait_ms", ["50"])[-1]
    if not replicas.isdigit() or not wait_ms.isdigit() or int(wait_ms) < 1:
        raise ValueError(f"{_USAGE}: replicas and wait_ms must be whole numbers (wait_ms >= 1)")
    s_user = options.get("sentinel_username", [""])[-1] or None
    s_password = options.get("sentinel_password", [""])[-1] or None
    if s_user is not None and s_password is None:
        # the sentinels would be asked without it, and refuse: say so at start instead
        raise ValueError(f"{_USAGE}: sentinel_username needs a sentinel_password")
    others = options.get("min_other_sentinels", ["0"])[-1]
    if not others.isdigit():
        raise ValueError(f"{_USAGE}: min_other_sentinels must be a whole number")
    return SentinelURL(
        tuple(sentinels),
        master,
        int(db_text),
        username,
        password,
        scheme.startswith("rediss"),
        int(replicas),
        int(wait_ms),
        s_user,
        s_password,
        int(others),
    )


def redact_netloc(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (any scheme, and
    a netloc of several hosts)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" not in netloc:
        return url
    userinfo, _, hosts = netloc.rpartition("@")
    user, has_pw, _ = userinfo.partition(":")
    if not has_pw:
        return url
    return f"{scheme}://{user}:***@{hosts}{slash}{tail}"
