"""Secret scan: an image carries no secrets, so the rootfs stage refuses one that does.

Every regular file of the customized rootfs (the dotfiles included) is matched against the
kinds below (by content; history, .netrc and .git-credentials by name too); ELF files are
not content-scanned. A finding names the path and the kind, never the secret. An image's
`secrets_allow` list (glob patterns of paths) accepts known false positives.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PipelineError
from ..core.tarballs import member_path, members, open_plain

_B64 = rb"[A-Za-z0-9+/=\r\n]{64,}"  # a real key's body follows its BEGIN line
CONTENT = [
    ("OpenSSH private key", rb"-----BEGIN OPENSSH PRIVATE KEY-----\r?\n" + _B64),
    ("PEM private key", rb"-----BEGIN (?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY-----\r?\n"
     rb"(?:[A-Za-z-]+: [^\n]*\n)*\r?\n?" + _B64),
    ("PGP secret key", rb"-----BEGIN PGP PRIVATE KEY BLOCK-----\r?\n(?:[^\n]*\n)*?\r?\n"
     + _B64),
    ("AWS access key", rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("AWS secret key", rb"(?i:aws_secret_access_key)\s*[=:]\s*[A-Za-z0-9/+=]{40}"),
    ("GitHub token", rb"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    ("GitLab token", rb"\bglpat-[A-Za-z0-9_\-]{20,}"),
]
_CONTENT = re.compile(b"|".join(b"(" + pattern + b")" for _, pattern in CONTENT))
# Literal fragments every match contains, as one alternation of plain strings (about 0.3 GB/s
# here): the full expressions run only on the few files that hold one.
_PREFILTER = re.compile(b"|".join(re.escape(lit) for lit in (
    b"PRIVATE KEY", b"AKIA", b"ASIA", b"ws_secret_access_key", b"WS_SECRET_ACCESS_KEY",
    b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_", b"glpat-")))
ELF = b"\x7fELF"  # keys inside executables and libraries are test vectors, not the user's
NETRC_PASSWORD = re.compile(rb"(?m)(?:^|\s)password\s+\S")
URL_CREDENTIALS = re.compile(rb"\bhttps?://[^/\s:@]+:[^/\s@]+@")
HISTORY = {".bash_history", ".zsh_history", ".sh_history", ".python_history", ".psql_history",
           ".mysql_history", ".lesshst", "fish_history", ".node_repl_history"}
MAX_SCAN = 64 << 20  # a file larger than this is scanned in its first 64 MiB only


@dataclass(frozen=True)
class Finding:
    path: str
    kind: str


def _by_name(path: str, data: bytes) -> str | None:
    base = path.rsplit("/", 1)[-1]
    if base in HISTORY and data.strip():
        return "shell history"
    if base in (".netrc", "_netrc") and NETRC_PASSWORD.search(data):
        return ".netrc password"
    if base == ".git-credentials" and URL_CREDENTIALS.search(data):
        return "git credentials"
    return None


def scan(rootfs: Path, allow: tuple[str, ...] = ()) -> list[Finding]:
    """Findings in the plain rootfs tar, minus the allowed paths."""
    found: list[Finding] = []
    fd = os.open(rootfs, os.O_RDONLY)
    try:
        with open_plain(rootfs) as tf:
            for m in members(tf, rootfs):
                if not m.isreg() or not m.size:
                    continue
                path = "/" + member_path(m.name)
                if any(fnmatch.fnmatchcase(path, pattern) for pattern in allow):
                    continue
                data = os.pread(fd, min(m.size, MAX_SCAN), m.offset_data)
                kind = _by_name(path, data)
                if kind is None and not data.startswith(ELF) and _PREFILTER.search(data):
                    hit = _CONTENT.search(data)
                    if hit is not None:
                        kind = CONTENT[hit.lastindex - 1][0]  # type: ignore[operator]
                if kind is not None:
                    found.append(Finding(path, kind))
    finally:
        os.close(fd)
    return found


def refuse(findings: list[Finding], image: str) -> None:
    if not findings:
        return
    shown = "\n".join(f"  {f.path}: {f.kind}" for f in findings[:20])
    more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
    raise PipelineError(
        f"images.{image}: the rootfs holds {len(findings)} secret(s); nothing was stored:\n"
        f"{shown}{more}",
        hint=f"remove them (keys belong on hardware tokens), or list false positives in "
        f"images.{image}.secrets_allow")

