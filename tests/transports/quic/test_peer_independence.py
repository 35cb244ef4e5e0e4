"""The independent QUIC peer stays independent: its module and the recorder it shares with
the transport checker's QUIC pair (atp_proto/testing/quic_recorder.py) import none of our
transport or frame code, so a test against it cannot pass by our code agreeing with
itself. (Read from their source: the ``atp_proto.testing`` package itself loads the frame
codec for ConnectionPair, which the peer does not use.)"""

from __future__ import annotations

import ast
from pathlib import Path

import atp_proto.testing.quic_recorder as recorder
import tests.transports.quic._aioquic_peer as peer
from atp_proto.testing.quic_peer import _Recorder

OURS = ("atp_proto.transports", "atp_proto.frames", "atp_proto.testing.quic_peer")


def _imports(path: str) -> set[str]:
    tree = ast.parse(Path(path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module if not node.level else f".{node.module}")
    return names


def test_the_independent_peer_imports_no_transport_code() -> None:
    for module in (peer, recorder):
        assert module.__file__ is not None
        found = _imports(module.__file__)
        assert not [n for n in found if n.startswith(OURS) or n.startswith(".")], found
    assert "aioquic.asyncio.protocol" in _imports(recorder.__file__ or "")


def test_both_peers_record_with_the_one_recorder() -> None:
    assert issubclass(peer.Recorder, recorder.StreamRecorder)
    assert issubclass(_Recorder, recorder.StreamRecorder)
