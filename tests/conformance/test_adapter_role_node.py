"""Language neutrality (issue 11, item 7): the Node.js adapter of examples/node-adapter
(@grpc/grpc-js, a gRPC stack that shares no code with ours) passes every case of the
adapter role. Needs node and npm; the dependencies are installed into the example's
directory with ``npm ci`` (node_modules is git-ignored: nothing is cached in the
repository). Skipped, saying so, when node or npm is absent or npm cannot install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from atp_proto.testing.processes import spawn
from tests.conformance.test_adapter_role import _not_passed, run_role

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-adapter"


@pytest.fixture(scope="module")
def node_example() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the Node.js adapter example was not run")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=EXAMPLE, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(
                f"npm ci failed (no registry?), Node.js example not run: {done.stderr[-300:]}"
            )
    return EXAMPLE


async def test_the_node_adapter_passes_every_case(node_example: Path) -> None:
    node = shutil.which("node")
    assert node is not None
    argv = [node, str(node_example / "adapter.js"), "--listen", "127.0.0.1:0"]
    async with spawn(argv, cwd=node_example) as proc:
        results = await run_role(f"grpc://127.0.0.1:{proc.port}")
    assert _not_passed(results) == {}
    assert len(results) >= 19
