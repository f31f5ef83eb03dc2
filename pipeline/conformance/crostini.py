"""Run the conformance checks on a Crostini image in a real LXD, started as termina does.

Technical details. ChromeOS's termina VM runs each container with `security.nesting=true`
(Nix inside needs it), bind-mounts its tools directory read-only at
/opt/google/cros-containers and gives eth0 an address from LXD's DHCP on lxdbr0 (garcon is
reached on it); the container's own systemd starts the user session (the image's
uid-1000 user lingers), garcon and sommelier. tremplin, in termina, writes the container token
and sets up the ChromeOS user; here the `tremplin` stand-in does that inside the container
(tremplin's code is not public: maitred's SetUpUser rules stand in for it), then runs the
checks and prints the verdicts. `lxc` is a function running the LXD client with the given
arguments (the tests' LXD fixture, or a wrapper around the user's `lxc`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..core.fsutil import work_tempdir
from . import checks, toolsdisk

TOOLS = "/opt/google/cros-containers"
Lxc = Callable[..., subprocess.CompletedProcess[str]]


def run(lxc: Lxc, image: str, *, container: str, setup_user: str, dotfiles: tuple[str, ...],
        work_dir: Path, log_path: Path, timeout: float = 900,
        network: str | None = None) -> checks.Report:
    """Launch `image` (an LXD alias) as `container`, run the checks; the report. What the
    checks printed is kept at `log_path`. `network` names an LXD managed bridge with DHCP
    that the container's eth0 joins, as termina's lxdbr0 (None: the profile's NIC, if any)."""
    settings = toolsdisk.Settings("crostini", setup_user, "/dev/stdout", dotfiles)
    tmp = work_tempdir(work_dir, "crostini")
    try:
        tree = toolsdisk.write_tree(tmp / "tools", settings)
        for p in (tmp, *tree.rglob("*")):  # the container's root is another uid
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() or p.stat().st_mode & 0o100 else 0o644)
        lxc("init", image, container, "-c", "security.nesting=true")
        lxc("config", "device", "add", container, "cros-tools", "disk", f"source={tree}",
            f"path={TOOLS}", "readonly=true")
        if network:
            lxc("config", "device", "add", container, "eth0", "nic", f"network={network}",
                "name=eth0")
        lxc("start", container)
        out = lxc("exec", container, "--", f"{TOOLS}/bin/tremplin", timeout=timeout,
                  check=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(out.stdout + out.stderr)
    return checks.parse(out.stdout, "crostini", bool(setup_user))
