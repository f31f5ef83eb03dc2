"""What `cros-guest init` writes into a user's own directory: a dodo.py for plain `doit`,
and, where missing, a starter images.toml (one Debian image) and .gitignore lines for what
the build makes there. Nothing that exists is overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .core.errors import PipelineError
from .core.fsutil import atomic_write_bytes

DODO = '''"""doit tasks for the images of images.toml beside this file (`doit list`).

Written by `cros-guest init`: the pipeline itself is the installed cros-guest-pipeline, and
`cros-guest TASK` does the same without this file.
"""

from pipeline.cli import dodo_namespace

globals().update(dodo_namespace(__file__))
'''

IMAGES_TOML = '''# Images this directory builds (`cros-guest list` shows their tasks).
# Paths are relative to this file; the store and outputs go to artifacts/ beside it.

[build]
default_images = ["bookworm"]

[images.bookworm]
description = "Debian 12 with my dotfiles"
source = "debian"
dotfiles = "dotfiles"   # a directory copied into the user's home; "" for none
user = "user"           # the name given to ChromeOS's Linux setup

[images.bookworm.debian]
packages = ["bash-completion", "ca-certificates", "curl", "git", "less", "sudo", "vim-tiny"]
'''

GITIGNORE = ["/artifacts/", "/.doit.db*"]


def write(target: Path) -> Iterator[str]:
    """Write the starter files into `target`; yields one line per file it wrote or kept."""
    if not target.is_dir():
        raise PipelineError(f"{target} is not a directory",
                            hint="create it first, or run init inside your config repository")
    dodo = target / "dodo.py"
    if dodo.exists() and dodo.read_text(errors="replace") != DODO:
        raise PipelineError(f"{dodo} exists and is not the one init writes",
                            hint="move it away first, or add "
                            "`globals().update(pipeline.cli.dodo_namespace(__file__))` to it")
    atomic_write_bytes(dodo, DODO.encode())
    yield f"wrote {dodo}"
    toml = target / "images.toml"
    if toml.exists():
        yield f"kept {toml}"
    else:
        atomic_write_bytes(toml, IMAGES_TOML.encode())
        (target / "dotfiles").mkdir(exist_ok=True)
        yield f"wrote {toml} (one Debian image; edit it, then `cros-guest build:baguette`)"
    ignore = target / ".gitignore"
    have = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [line for line in GITIGNORE if line not in have]
    if missing:
        atomic_write_bytes(ignore, "".join(f"{line}\n" for line in [*have, *missing]).encode())
        yield f"wrote {ignore} ({', '.join(missing)})"
