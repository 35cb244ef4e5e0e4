"""Coverage is enforced (issue 11 item 4): every MUST / MUST NOT of spec/requirements.yaml
for the router, client or adapter role has a case — of one of its roles, or of the codec
role, which checks the stateless receiver rules routers and clients share — or an entry
with its reason in conformance/UNTESTABLE.md; every ID a case cites exists; no entry of
UNTESTABLE.md is stale."""

from __future__ import annotations

from conformance.coverage import requirements, untestable
from conformance.roles import ROLES, load_role


def _cited() -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    for name in ROLES:
        for case in load_role(name).cases({}):
            for rid in case.requirements:
                cited.setdefault(rid, set()).add(name)
    return cited


def _musts() -> dict[str, set[str]]:
    out = {}
    for rid, r in requirements().items():
        roles = set(r["roles"]) & {"router", "client", "adapter"}
        if r["keyword"] in ("MUST", "MUST NOT") and roles:
            out[rid] = roles
    return out


def test_every_cited_id_exists() -> None:
    unknown = sorted(set(_cited()) - set(requirements()))
    assert not unknown, f"cases cite unknown requirement IDs: {unknown}"


def test_every_must_has_a_case_or_a_reason() -> None:
    cited, escape = _cited(), untestable()
    missing = []
    for rid, roles in _musts().items():
        if rid in escape:
            continue
        if not cited.get(rid, set()) & (roles | {"codec"}):
            missing.append(rid)
    assert not missing, f"MUSTs without a case or an UNTESTABLE.md entry: {missing}"


def test_untestable_entries_are_real_and_not_stale() -> None:
    cited, escape, musts = _cited(), untestable(), _musts()
    assert escape, "UNTESTABLE.md has no entries (or its format changed)"
    assert all(reason for reason in escape.values())
    assert not sorted(set(escape) - set(musts)), "entries that are not MUSTs of these roles"
    stale = [rid for rid in escape if cited.get(rid, set()) & (musts[rid] | {"codec"})]
    assert not stale, f"UNTESTABLE.md entries that now have a case (remove them): {stale}"
