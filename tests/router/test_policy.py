"""Unit tests of the policy layers: the Rego engine (regopy), the routing table, the
layered decision and the reloader (ATP-SEC-004, ATP-SEC-013, ATP-SEC-016..018).

In-process, no sockets: the end-to-end behaviour (real router and adapter processes)
is tests/router/test_e2e_policy.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from atp_proto.frames import ATPError, BudgetWindow, ErrorCode, QoS
from atp_proto.messages import Task
from atp_proto.router.auth import Principal
from atp_proto.router.routing.policy import LayeredPolicy, PolicyInput, PolicyState
from atp_proto.router.routing.rego import PolicyLoadError, RegoEngine
from atp_proto.router.routing.reload import PolicySource, Reloader
from atp_proto.router.routing.table import RoutingTable, TableError

from ._helpers_e2e import ROOT, atp

EXAMPLE = ROOT / "examples" / "policy" / "policy.rego"
TABLE = ROOT / "examples" / "policy" / "routing.toml"
ADAPTERS = ("cheap", "strong")


def _inp(
    meta: dict[str, Any] | None = None,
    *,
    task_type: str = "qa",
    qos: QoS = QoS.GOLD,
    claims: dict[str, Any] | None = None,
    task_types: frozenset[str] | None = None,
    max_qos: QoS = QoS.GOLD,
) -> PolicyInput:
    principal = Principal("alice", "acme", max_qos, task_types, claims or {})
    task = Task(task_type, "2+2?", {}, meta or {}, BudgetWindow(), 0)
    return PolicyInput(principal, task, qos, ADAPTERS)


def _layered(table: bool = True) -> LayeredPolicy:
    state = PolicyState(
        RegoEngine.load(EXAMPLE), RoutingTable.load(TABLE, ADAPTERS) if table else RoutingTable()
    )
    return LayeredPolicy(state)


# ---------------------------------------------------------------------- the example policy


@pytest.mark.parametrize(
    ("meta", "rule", "words"),
    [
        (
            {"tool_permissions": ["secrets.read"], "data_scope": ["no_secrets"]},
            "no_secrets",
            "reads secrets",
        ),
        ({"tool_permissions": ["rm"]}, "tool_permissions", '"rm" is not permitted'),
        ({"data_scope": ["classified"]}, "data_scope", '"classified" is not known'),
    ],
)
def test_example_policy_denials_name_the_rule(meta: dict[str, Any], rule: str, words: str) -> None:
    """[ATP-SEC-013, ATP-SEC-016] The example policy refuses a secret-reading tool under
    data scope no_secrets, a tool the tenant may not use and an unknown data scope; the
    decision names the rule and says why."""
    d = _layered().decide(_inp(meta))
    assert (d.allow, d.rule) == (False, rule)
    assert words in d.reason


def test_example_policy_allows_and_narrows() -> None:
    """[ATP-SEC-011, ATP-SEC-013, ATP-SEC-017] The seed's own meta (no tools, no_secrets)
    runs with the table's routing; data scope "internal" keeps the stream off the
    external adapter; a free-plan token never runs gold; the token's ``tools`` claim
    replaces the default tool list."""
    policy = _layered()
    d = policy.decide(_inp({"tool_permissions": [], "data_scope": ["no_secrets"]}))
    assert d.allow and d.candidates == ADAPTERS and d.lane is QoS.GOLD
    assert d.min_confidence == 0.5 and d.window.max_tokens == 8000
    internal = policy.decide(_inp({"data_scope": ["internal"]}))
    assert internal.allow and internal.candidates == ("cheap",)
    free = policy.decide(_inp({}, claims={"plan": "free"}))
    assert free.allow and free.lane is QoS.SILVER
    own = policy.decide(
        _inp({"tool_permissions": ["calculator"]}, claims={"tools": ["web_search"]})
    )
    assert (own.allow, own.rule) == (False, "tool_permissions")


def test_claims_still_decide_first_and_request_hints_are_narrowed() -> None:
    """[ATP-SEC-004, ATP-SEC-011] The token's task_types refuse before the policy runs;
    ``meta.adapters`` is intersected with what the policy allows (nothing left: denied
    by rule candidates)."""
    policy = _layered()
    d = policy.decide(_inp({}, task_types=frozenset({"chat"})))
    assert (d.allow, d.rule) == (False, "task_types")
    only_strong = policy.decide(_inp({"adapters": ["strong"], "data_scope": ["internal"]}))
    assert (only_strong.allow, only_strong.rule) == (False, "candidates")
    both = policy.decide(_inp({"adapters": ["strong", "cheap"], "data_scope": ["internal"]}))
    assert both.candidates == ("cheap",)


def test_table_per_task_type() -> None:
    """The routing table: a task type's own entry over [default]."""
    policy = _layered()
    math = policy.decide(_inp({}, task_type="qa.math"))
    assert (math.strategy, math.fanout, math.quorum, math.comparator) == ("quorum", 2, 2, "numeric")
    chat = policy.decide(_inp({}, task_type="chat"))
    assert (chat.strategy, chat.min_quality, chat.hedge, chat.lane) == (
        "cascade",
        0.7,
        True,
        QoS.GOLD,
    )
    batch = policy.decide(_inp({}, task_type="batch"))
    assert batch.lane is QoS.BRONZE and batch.window.max_tokens == 2000


def test_malformed_meta_is_eproto() -> None:
    """[ATP-SEC-016] ``meta.tool_permissions`` / ``meta.data_scope`` must be lists of
    short names (a peer controls them): EPROTO otherwise."""
    for bad in ("shell", [1], ["x" * 200], ["t"] * 65):
        with pytest.raises(ATPError) as err:
            _layered().decide(_inp({"tool_permissions": bad}))
        assert err.value.code is ErrorCode.EPROTO


def test_a_malformed_answer_fails_closed(tmp_path: Path) -> None:
    """[ATP-SEC-016] A policy whose document is unusable (a lane that does not exist, a
    deny entry without a rule) denies with rule policy_error: it never allows."""
    src = tmp_path / "p.rego"
    src.write_text('package atp.policy\nimport rego.v1\nlane_cap := "platinum"\n')
    d = LayeredPolicy(PolicyState(RegoEngine.load(src))).decide(_inp({}))
    assert (d.allow, d.rule) == (False, "policy_error") and "lane_cap" in d.reason
    src.write_text("package atp.policy\nimport rego.v1\ndeny contains 42 if true\n")
    d = LayeredPolicy(PolicyState(RegoEngine.load(src))).decide(_inp({}))
    assert (d.allow, d.rule) == (False, "policy_error")
    src.write_text("package atp.policy\nimport rego.v1\ndefault allow := false\n")
    d = LayeredPolicy(PolicyState(RegoEngine.load(src))).decide(_inp({}))
    assert (d.allow, d.rule) == (False, "allow")


def test_engine_is_built_once_and_caches_by_input() -> None:
    """The bundle is compiled at load; equal inputs are answered from the LRU cache
    (the prompt is not input: two prompts, one evaluation)."""
    engine = RegoEngine.load(EXAMPLE)
    policy = LayeredPolicy(PolicyState(engine))
    base = engine.misses
    for prompt in ("a", "b", "c"):
        inp = _inp({"data_scope": ["no_secrets"]})
        inp = PolicyInput(
            inp.principal,
            Task("qa", prompt, {}, inp.task.meta, BudgetWindow(), 0),
            inp.qos,
            inp.adapters,
        )
        assert policy.decide(inp).allow
    assert engine.misses == base + 1 and engine.hits >= 2
    policy.decide(_inp({"data_scope": ["public"]}))
    assert engine.misses == base + 2


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("package atp.policy\nallow := {", "unclosed"),
        ("package other\nallow := true\n", "package atp.policy"),
    ],
)
def test_broken_policy_is_refused_in_one_line(tmp_path: Path, source: str, words: str) -> None:
    """A policy that does not compile is refused at load, in one line naming the file."""
    path = tmp_path / "bad.rego"
    path.write_text(source)
    with pytest.raises(PolicyLoadError) as err:
        RegoEngine.load(path)
    assert words in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[default]\nstrategy = "magic"\n', "default.strategy: strategy must be one of"),
        ('[default]\ncandidates = ["cheap", "ghost"]\n', "default.candidates: unknown adapter"),
        ('[task."qa"]\nfanout = 99\n', "task.qa.fanout: must be an integer within 1..16"),
        ('[task."qa"]\ncolour = "red"\n', "task.qa.colour: unknown key"),
        (
            "[default.window]\nmax_tokens = -1\n",
            "default.window.max_tokens: must be a non-negative",
        ),
        ('[default]\nlane = "platinum"\n', "default.lane: must be gold, silver or bronze"),
        ('[default]\ncomparator = "fuzzy"\n', "default.comparator"),
        ("[routes]\n", "unknown table(s) routes"),
        ("[default\n", "not valid TOML"),
    ],
)
def test_table_errors_name_the_key(tmp_path: Path, toml: str, words: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(toml)
    with pytest.raises(TableError) as err:
        RoutingTable.load(path, ADAPTERS)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_serve_refuses_a_bad_table_or_policy_with_exit_2(tmp_path: Path) -> None:
    """``atp serve`` with a broken table or policy: one line, exit 2, no traceback."""
    table = tmp_path / "t.toml"
    table.write_text('[default]\ncandidates = ["ghost"]\n')
    r = atp(
        "serve",
        "--no-auth",
        "--ws",
        "127.0.0.1:0",
        "--metrics",
        "off",
        "--routing-table",
        str(table),
    )
    assert r.returncode == 2, r.stderr
    assert "default.candidates: unknown adapter(s) ghost" in r.stderr
    assert "Traceback" not in r.stderr
    rego = tmp_path / "p.rego"
    rego.write_text("package atp.policy\nallow := {\n")
    r = atp("serve", "--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--policy", str(rego))
    assert r.returncode == 2 and "unclosed" in r.stderr and "Traceback" not in r.stderr
    r = atp("serve", "--no-auth", "--policy", str(rego), "--opa-url", "http://127.0.0.1:1")
    assert r.returncode == 2 and "exclude each other" in r.stderr


# ---------------------------------------------------------------------- reload


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()  # a new mtime even within the filesystem's timestamp granularity
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_reloader_swaps_whole_states_and_keeps_the_last_good(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """[ATP-SEC-018] A changed file is reloaded as a whole new state; a broken one keeps
    the last good state and says why in one log line."""
    rego = tmp_path / "p.rego"
    _write(rego, 'package atp.policy\nimport rego.v1\ndeny contains "a" if true\n')
    policy = LayeredPolicy()
    source = PolicySource(policy_file=str(rego))
    policy.state = source.load()
    reloader = Reloader(policy, source)
    first = policy.state
    assert policy.decide(_inp({})).rule == "a"
    assert not reloader.check_files()
    _write(rego, 'package atp.policy\nimport rego.v1\ndeny contains "b" if true\n')
    assert not reloader.check_files()  # changed: wait for it to hold still one look
    assert policy.state is first
    assert reloader.check_files()
    assert policy.state is not first and policy.decide(_inp({})).rule == "b"
    good = policy.state
    _write(rego, "package atp.policy\ndeny contains {\n")
    with caplog.at_level("WARNING", logger="atp.router"):
        assert not reloader.check_files()
        assert reloader.check_files()
    assert policy.state is good and policy.decide(_inp({})).rule == "b"
    assert reloader.reloads == {"ok": 1, "failed": 1}
    (line,) = [r.getMessage() for r in caplog.records if "reload" in r.getMessage()]
    assert "keeping" in line and good.version in line and "\n" not in line


def test_config_file_and_env_carry_the_policy_settings(tmp_path: Path) -> None:
    """``[policy]`` and ``[auth] jwks / oidc_issuer`` in the config file, ``OPA_URL`` in
    the environment; unknown keys and wrong types are refused naming the key."""
    from atp_proto.router.config import ConfigError, build_config

    path = tmp_path / "atp.toml"
    path.write_text(
        '[policy]\nfile = "p.rego"\nrouting_table = "t.toml"\npoll_s = 0.5\n'
        '[auth]\njwks = "https://id.example/jwks.json"\n'
    )
    cfg = build_config(file=str(path), env={}, flags={})
    assert (cfg.policy_file, cfg.routing_table, cfg.policy_poll_s) == (
        str(tmp_path / "p.rego"),  # relative to the config file's directory
        str(tmp_path / "t.toml"),
        0.5,
    )
    assert cfg.jwks == "https://id.example/jwks.json"
    env_cfg = build_config(file=None, env={"OPA_URL": "http://127.0.0.1:8181"}, flags={})
    assert env_cfg.opa_url == "http://127.0.0.1:8181"
    for text, words in (
        ("[policy]\nengine = 1\n", "[policy]: unknown setting 'engine'"),
        ("[policy]\npoll_s = true\n", "policy.poll_s has the wrong type"),
        ("[policy]\nfile = 3\n", "policy.file has the wrong type"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(words)):
            build_config(file=str(path), env={}, flags={})
