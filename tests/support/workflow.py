"""What the CI workflow must hold beyond actionlint: actions pinned by commit, checkouts
without credentials, a monthly schedule, the store cached under a key of its inputs."""

from __future__ import annotations

import re

_USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)", re.M)


def workflow_problems(text: str) -> list[str]:
    problems = []
    for ref in _USES.findall(text):
        if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref):
            problems.append(f"not pinned by commit: {ref}")
    for block in re.split(r"(?m)^\s*-\s+(?=uses:|name:|run:|id:)", text):
        if re.match(r"uses:\s*actions/checkout@", block) and not re.search(
                r"persist-credentials:\s*false", block):
            problems.append("a checkout keeps its credentials")
    if not re.search(r"schedule:\s*\n\s*-\s*cron:\s*\"[\d*]+ [\d*]+ 1 \* \*\"", text):
        problems.append("no monthly schedule")
    if "hashFiles(" not in text or "actions/cache/restore@" not in text:
        problems.append("the store is not cached under a key of its inputs")
    return problems
