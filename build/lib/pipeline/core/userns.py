"""A user namespace in which a normal user is root over its subordinate ids.

`unshare --map-auto --map-root-user` (util-linux 2.38+, newuidmap/newgidmap from `uidmap`)
maps this user to 0 and the first block of its subordinate ids (/etc/subuid, /etc/subgid) to
1, 2, ...: inside, files can be given any owner of the image (up to the block's size), setuid
bits survive chown, and security.capability can be set; device nodes still cannot be made.
Files made there belong on the host to the subordinate ids, so they are removed from inside
one too (remove_tree).
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .run import which

UNSHARE = ("--map-auto", "--map-root-user")


def _subordinate(path: Path, user: str, uid: int) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)):
            return f"{parts[1]}+{parts[2]}"
    return None


@functools.cache
def problem() -> str | None:
    """Why this user cannot have such a namespace, or None (checked once per process)."""
    unshare = which("unshare")
    if unshare is None or which("newuidmap") is None:
        return "unshare or newuidmap is missing (install util-linux and uidmap)"
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    for f in ("/etc/subuid", "/etc/subgid"):
        if _subordinate(Path(f), user, uid) is None:
            return f"{user} has no subordinate ids in {f}"
    proc = subprocess.run([unshare, *UNSHARE, "true"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return f"unshare {' '.join(UNSHARE)} failed: {proc.stderr.strip()[-200:]}"
    return None


def describe() -> str:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return f"subordinate ids {_subordinate(Path('/etc/subuid'), user, uid)} of {user}"


def argv(command: list[str]) -> list[str]:
    """`command` run as root of a new user namespace over this user's subordinate ids."""
    unshare = which("unshare")
    assert unshare is not None
    return [unshare, *UNSHARE, "--", *command]


def remove_tree(path: Path) -> None:
    """Remove `path`, also what belongs to this user's subordinate ids under it."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists() and os.geteuid() != 0 and problem() is None:
        subprocess.run(argv(["rm", "-rf", "--", str(path)]), capture_output=True, check=False)
