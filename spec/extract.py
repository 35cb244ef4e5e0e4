"""Write spec/requirements.yaml from the requirement IDs in spec/atp-v1.md.

    python spec/extract.py           # rewrite requirements.yaml
    python spec/extract.py --check   # exit 1 if requirements.yaml is out of date

Each normative statement in the spec starts with ``**[ATP-AREA-NNN]** (level; roles)``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = HERE / "atp-v1.md"
OUT = HERE / "requirements.yaml"

REQ = re.compile(r"^\*\*\[(ATP-[A-Z]+-\d{3})\]\*\* \((L[123]); ([a-z, ]+)\) (.+)$")
HEADING = re.compile(r"^(#{2,4}) (.+)$")
KEYWORDS = ("MUST NOT", "SHALL NOT", "SHOULD NOT", "MUST", "SHALL", "REQUIRED", "SHOULD", "MAY")


def parse(text: str) -> list[dict[str, object]]:
    section = ""
    reqs = []
    for line in text.splitlines():
        if m := HEADING.match(line):
            section = m.group(2).strip()
        elif m := REQ.match(line):
            rid, level, roles, statement = m.groups()
            keyword = next((k for k in KEYWORDS if k in statement), "")
            reqs.append(
                {
                    "id": rid,
                    "level": level,
                    "roles": [r.strip() for r in roles.split(",")],
                    "section": section,
                    "keyword": keyword,
                    "text": statement.strip(),
                }
            )
    return reqs


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(reqs: list[dict[str, object]]) -> str:
    lines = [
        "# Generated from atp-v1.md by spec/extract.py: do not edit by hand.",
        "spec: atp-v1",
        "version: 1",
        "requirements:",
    ]
    for r in reqs:
        lines += [
            f"  - id: {r['id']}",
            f"    level: {r['level']}",
            f"    roles: [{', '.join(r['roles'])}]",  # type: ignore[arg-type]
            f"    section: {_q(str(r['section']))}",
            f"    keyword: {r['keyword'] or 'none'}",
            f"    text: {_q(str(r['text']))}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    reqs = parse(SPEC.read_text(encoding="utf-8"))
    out = render(reqs)
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != out:
            print("spec/requirements.yaml is out of date: run python spec/extract.py")
            return 1
        return 0
    OUT.write_text(out, encoding="utf-8")
    print(f"wrote {OUT.name}: {len(reqs)} requirements")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
