"""The package diff between two published versions of an image, from their manifest.json
(`packages`: dpkg's name, version and architecture, or a NixOS rootfs's store paths), as
Markdown for release notes:

    python3 -m pipeline.publish.pkgdiff [PREVIOUS/manifest.json] NEW/manifest.json

Without a previous manifest (a first release) it lists what the new one holds.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ..core.errors import PipelineError

_STORE_PATH = re.compile(r"^/nix/store/[0-9a-z]{32}-(.+)$")


def read_packages(manifest: Path) -> dict[str, str]:
    """{package: version} of a manifest (for store paths: name-version -> the path's hash)."""
    try:
        data = json.loads(manifest.read_text())
        packages: dict[str, Any] = data["packages"]
        kind, listed = packages["format"], packages["list"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{manifest}: not a published manifest.json ({exc})",
                            hint="give the manifest.json of a version `doit publish` laid "
                            "out") from None
    if kind == "dpkg":
        return {p["name"] if p.get("architecture", "all") in ("", "all")
                else f"{p['name']}:{p['architecture']}": p["version"] for p in listed}
    if kind == "nix-store-paths":
        out = {}
        for path in listed:
            m = _STORE_PATH.match(path)
            if m:
                out[m.group(1)] = path.split("/")[3][:32]
        return out
    return {}


def diff(previous: dict[str, str] | None, new: dict[str, str]) -> str:
    """Markdown: added, removed and changed packages (all of them for a first release)."""
    if previous is None:
        return f"{len(new)} packages (no previous release to compare with).\n"
    added = sorted(set(new) - set(previous))
    removed = sorted(set(previous) - set(new))
    changed = sorted(n for n in set(new) & set(previous) if new[n] != previous[n])
    if not (added or removed or changed):
        return f"No package changed ({len(new)} packages).\n"
    out = [f"{len(added)} added, {len(removed)} removed, {len(changed)} changed "
           f"({len(new)} packages)."]
    out += [f"- added `{n}` {new[n]}" for n in added]
    out += [f"- removed `{n}` {previous[n]}" for n in removed]
    out += [f"- `{n}` {previous[n]} → {new[n]}" for n in changed]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python3 -m pipeline.publish.pkgdiff [PREVIOUS/manifest.json] "
              "NEW/manifest.json", file=sys.stderr)
        return 2
    try:
        previous = read_packages(Path(argv[0])) if len(argv) == 2 else None
        sys.stdout.write(diff(previous, read_packages(Path(argv[-1]))))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
