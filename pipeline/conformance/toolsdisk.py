"""The tools disk of a conformance run: what ChromeOS's tools disk holds, with stand-ins.

    bin/busybox              a static busybox of the guest's architecture (the host's by
                             default): the stand-ins' interpreter
    bin/cros-standin         standin.sh; bin/<tool> links to it for every daemon it plays
    etc/standin.conf         the run's settings (the guest kind, the user to set up, where
                             verdicts go, how long to wait)
    etc/dotfiles             the names the user's home must hold (the image's dotfiles)
    VERSION

For Baguette it is an ext4 labelled `cros-vm-tools` made without root (`mkfs.ext4 -d`); for
Crostini the directory itself is bind-mounted into the container as termina does.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.run import require, run

LABEL = "cros-vm-tools"
STANDIN_TOOLS = ("maitred", "vshd", "garcon", "sommelier", "notificationd", "port_listener",
                 "conformance-check", "tremplin")


@dataclass(frozen=True)
class Settings:
    kind: str  # "baguette" | "crostini"
    setup_user: str  # the name `vmc start --user` (or ChromeOS's Linux setup) asks for; "" none
    results: str  # where the verdicts go inside the guest
    dotfiles: tuple[str, ...]  # names the user's home must hold
    garcon_wait: int = 300
    settle_wait: int = 300


def standin_script() -> bytes:
    return resources.files(__package__).joinpath("standin.sh").read_bytes()


def write_tree(root: Path, settings: Settings, busybox: Path | None = None) -> Path:
    """The tools tree under `root` (made here)."""
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy(busybox or require("busybox"), root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    script = root / "bin" / "cros-standin"
    script.write_bytes(standin_script())
    script.chmod(0o755)
    for tool in STANDIN_TOOLS:
        (root / "bin" / tool).symlink_to("cros-standin")
    conf = {"KIND": settings.kind, "SETUP_USER": settings.setup_user,
            "RESULTS": settings.results, "GARCON_WAIT": str(settings.garcon_wait),
            "SETTLE_WAIT": str(settings.settle_wait)}
    (root / "etc" / "standin.conf").write_text(
        "".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()))
    (root / "etc" / "dotfiles").write_text("".join(f"{n}\n" for n in settings.dotfiles))
    (root / "VERSION").write_text("cros-guest-pipeline conformance stand-ins\n")
    return root


def make_disk(tree: Path, disk: Path) -> None:
    """An ext4 image of `tree` labelled like ChromeOS's tools disk."""
    run([require("mkfs.ext4"), "-q", "-F", "-L", LABEL, "-d", tree, disk, "32M"],
        hint="mkfs.ext4 (e2fsprogs) could not make the tools disk")


def dotfile_names(dotfiles: Path | None) -> tuple[str, ...]:
    """The top-level names of an image's dotfiles directory."""
    if dotfiles is None or not dotfiles.is_dir():
        return ()
    return tuple(sorted(p.name for p in dotfiles.iterdir()))
