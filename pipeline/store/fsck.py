"""`doit fsck` (and the first step of `doit verify`): check store entries against the sizes
and sha256 hashes recorded when they were committed (entries.problems).

A damaged entry is reported with what is wrong and taken out of the store, so the next build
makes it again; the check then fails, since something changed bytes behind the pipeline's
back (a disk fault, or a hand edit of a published file, which shares the store's inode).
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import PipelineError
from ..core.log import info, step
from .entries import Store, problems
from .layout import FILES_FILE


def check(store: Store, entries: list[Path]) -> int:
    """Verify `entries` fully; set aside the damaged ones. Returns the number checked."""
    damaged: list[str] = []
    unlisted = 0
    with step(f"Verifying {len(entries)} store entries"):
        for entry in entries:
            found = problems(entry)
            if not (entry / FILES_FILE).is_file():
                unlisted += 1
            if found:
                damaged.append(f"{entry.parent.name}/{entry.name}")
                store.set_aside(entry, found)
        if unlisted:
            info(f"{unlisted} entries predate {FILES_FILE}: nothing to compare them with")
    if damaged:
        raise PipelineError(
            f"{len(damaged)} damaged store entries were removed: {', '.join(damaged[:5])}",
            hint="build again to make them anew; if it recurs, check the disk")
    info(f"{len(entries)} entries intact")
    return len(entries)


def check_store(store: Store) -> int:
    return check(store, [e for entries in store.entries().values() for e in entries])
