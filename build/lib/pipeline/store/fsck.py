"""`doit fsck` (and the first step of `doit verify`): check store entries against the sizes
and sha256 hashes recorded when they were committed (entries.problems).

A damaged entry is reported with what is wrong and taken out of the store, so the next build
makes it again; the check then fails, since something changed bytes behind the pipeline's
back (a disk fault, or a hand edit of a published file, which shares the store's inode).
Only entries are checked and removed (entries.is_entry); anything else in the store is named
and left alone, and so is a damaged entry some process holds (reported all the same).
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import PipelineError
from ..core.log import info, step, warn
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
                with store.unused(entry.parent.name, entry.name) as free:
                    if free:
                        store.set_aside(entry, found)
                    else:
                        warn(f"{damaged[-1]} is damaged ({'; '.join(found[:3])}) but in use "
                             "by a running build: left in place")
                        damaged[-1] += " (in use: not removed)"
        if unlisted:
            info(f"{unlisted} entries predate {FILES_FILE}: nothing to compare them with")
    if damaged:
        raise PipelineError(
            f"{len(damaged)} damaged store entries were removed: {', '.join(damaged[:5])}",
            hint="build again to make them anew; if it recurs, check the disk")
    info(f"{len(entries)} entries intact")
    return len(entries)


def check_store(store: Store) -> int:
    strangers = store.strangers()
    if strangers:
        info(f"{len(strangers)} directories in the store are no entries, left alone: "
             f"{', '.join(strangers[:5])}{' ...' if len(strangers) > 5 else ''}")
    return check(store, [e for entries in store.entries().values() for e in entries])
