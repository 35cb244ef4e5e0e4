"""The policy file of a running ``atp serve`` replaced by garbage while it serves: a real
router process, the file rewritten under it, streams from the hostile peer (its own wire
code) before and after.

Once, a policy of a few thousand nested brackets ended the router with SIGSEGV (regopy's
parser recurses on the C stack): every session gone. It must be refused in one line and
the last good policy kept.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from atp_proto.testing import RouterProcess
from atp_proto.testing.hostile_session import Session

GOOD = "package atp.policy\nimport rego.v1\n# everything is allowed\n"


def _wait_for(router: RouterProcess, pattern: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(re.findall(pattern, router.log())) < count:
        assert router.proc.poll() is None, f"the router died ({router.proc.returncode})"
        assert time.monotonic() < deadline, router.tail()
        time.sleep(0.05)


def test_garbage_policy_files_are_refused_and_the_router_serves_on(tmp_path: Path) -> None:
    """[ATP-SEC-018] A policy file rewritten as brackets nested 5,000 deep (the router
    died of SIGSEGV), as an object nested as deep, as bytes that are not UTF-8 and as an
    empty file: each reload fails with one WARNING line naming the file, the last good
    policy stays, and a stream is served after each."""
    policy = tmp_path / "policy.rego"
    policy.write_text(GOOD)
    with RouterProcess(
        "--no-auth",
        "--policy",
        str(policy),
        config_toml="[policy]\npoll_s = 0.05\n",
        adapters={"echo": "builtin:echo"},
    ) as router:
        head = "package atp.policy\nimport rego.v1\n"
        garbage = [
            (head + "x := " + "[" * 5000 + "]" * 5000 + "\n").encode(),
            (head + "x := " + '{"a": ' * 5000 + "1" + "}" * 5000 + "\n").encode(),
            b"\xff\xfe package atp.policy",
            b"",
        ]
        for n, raw in enumerate(garbage, start=1):
            policy.write_bytes(raw)
            _wait_for(router, r"WARNING policy reload \(file changed\) failed", n)
            s = Session(router.url)
            try:
                assert s.probe() == "fin", s.violations
            finally:
                s.close()
        log = router.log()
        assert "brackets nested 5000 deep" in log
        failed = [line for line in log.splitlines() if "policy reload" in line]
        assert len(failed) == len(garbage) and all(str(policy) in f for f in failed), failed
        assert "Traceback" not in log
