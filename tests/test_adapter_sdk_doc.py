"""``docs/adapter-sdk.md`` followed literally by a new user (issue 9, item 19).

The guide's example adapter is copied out of the Markdown into an empty directory, and the
guide's own commands (``atp adapter serve``, ``atp adapter check``, ``atp serve``,
``atp send``) are run from there as real processes through the installed ``atp`` console
script, with no ``PYTHONPATH``. Only the addresses are changed (free ports instead of 7070,
7443 and 9464, which another process may hold).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "adapter-sdk.md"
ATP = Path(sys.executable).with_name("atp")


def _guide() -> str:
    return GUIDE.read_text()


def example_module() -> str:
    """The guide's ``# mymodel.py`` code block."""
    blocks = re.findall(r"```python\n(.*?)```", _guide(), re.S)
    (source,) = [b for b in blocks if b.startswith("# mymodel.py\n")]
    return source


def guide_command(prefix: str) -> list[str]:
    """The argv of the guide's first ``$ atp PREFIX...`` console line."""
    for line in _guide().splitlines():
        if line.startswith(f"$ atp {prefix}"):
            return shlex.split(line[2:])
    raise AssertionError(f"the guide has no '$ atp {prefix}' command")


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ATP_", "ADAPTER_ENDPOINTS", "PYTEST_", "PYTHONPATH"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def process(argv: list[str], cwd: Path, ready: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``argv`` (``atp ...``) in ``cwd``; yield once a stdout/stderr line matches
    ``ready`` (a regex with one group), with that group."""
    proc = subprocess.Popen(
        [str(ATP), *argv[1:]],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found: list[str] = []
    event = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = re.search(ready, line)
            if m and not found:
                found.append(m.group(1))
                event.set()
        event.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while not event.wait(0.05):
            assert time.monotonic() < deadline, "".join(lines)
        assert found, f"{argv} exited {proc.poll()}: {''.join(lines)}"
        yield proc, found[0]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _with_port(argv: list[str], old: str, new: str) -> list[str]:
    return [a.replace(old, new) for a in argv]


@pytest.mark.skipif(not ATP.exists(), reason="the atp console script is not installed")
def test_the_guide_works_as_written_from_a_fresh_directory(tmp_path: Path) -> None:
    (tmp_path / "mymodel.py").write_text(example_module())

    # §2 "Run it", from the module's directory (port 0: any free port)
    serve_adapter = guide_command("adapter serve mymodel:")
    assert "127.0.0.1:7070" in serve_adapter
    with process(
        _with_port(serve_adapter, "127.0.0.1:7070", "127.0.0.1:0"),
        tmp_path,
        r"adapter MyModel listening on 127\.0\.0\.1:(\d+)",
    ) as (_, port):
        adapter_url = f"grpc://127.0.0.1:{port}"

        # §3 "Check it"
        check = _with_port(guide_command("adapter check"), "grpc://127.0.0.1:7070", adapter_url)
        done = subprocess.run(
            [str(ATP), *check[1:]], cwd=tmp_path, env=_env(), capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "chunk 1       'HELLO '" in done.stdout and "stream    OK  5 chunk(s)" in done.stdout

        # §4 "Send it a task through the router": the router's own addresses on free ports
        serve = _with_port(guide_command("serve"), "grpc://127.0.0.1:7070", adapter_url)
        serve += ["--ws", "127.0.0.1:0", "--metrics", "off"]
        with process(serve, tmp_path, r"router listening ws=(ws://\S+)") as (_, ws_url):
            send = guide_command("send")
            sent = subprocess.run(
                [str(ATP), send[1], ws_url, *send[2:]], cwd=tmp_path, env=_env(),
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            # with the README's budget window (`atp send ... --max-tokens 50000`): the
            # example's estimate stays within it (it once estimated max_tokens itself, and
            # every stream with a window was refused EBUDGET)
            budget = subprocess.run(
                [str(ATP), send[1], ws_url, *send[2:], "--max-tokens", "50000"], cwd=tmp_path,
                env=_env(), capture_output=True, text=True, timeout=30,
            )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert budget.returncode == 0 and "FINAL  HELLO" in budget.stdout, budget.stdout + budget.stderr
    assert "FINAL  HELLO FROM A NEW ADAPTER" in sent.stdout
    assert "adapters=mymodel" in sent.stdout
    # and the guide shows that output
    assert "FINAL  HELLO FROM A NEW ADAPTER" in _guide()


def test_adapter_serve_imports_from_the_working_directory_not_only_sys_path(
    tmp_path: Path,
) -> None:
    """The console script puts its own directory first on sys.path, not the user's:
    ``atp adapter serve mymodel:MyModel`` must still find ./mymodel.py (as uvicorn does)."""
    if not ATP.exists():
        pytest.skip("the atp console script is not installed")
    (tmp_path / "mymodel.py").write_text(example_module())
    with process(
        [str(ATP), "adapter", "serve", "mymodel:MyModel", "--listen", "127.0.0.1:0"],
        tmp_path,
        r"listening on 127\.0\.0\.1:(\d+)",
    ) as (_, port):
        assert int(port) > 0
