"""Running pipeline code as a normal user from a root test run: one with subordinate ids
(/etc/subuid, /etc/subgid) and outside the kvm group, as a person building images would be,
or `nobody`, who has none. No pytest at import time (the benchmarks use this too)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def _has_subids(name: str, uid: int) -> bool:
    for f in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(f).read_text().splitlines()
        except OSError:
            return False
        owners = {line.split(":")[0] for line in lines if line.count(":") == 2}
        if not owners & {name, str(uid)}:
            return False
    return True


def builder() -> User | None:
    """PIPELINE_TEST_USER, else the first user (uid >= 1000) with subordinate ids who is not in
    the kvm group; None if there is none."""
    try:
        kvm = set(grp.getgrnam("kvm").gr_mem)
    except KeyError:
        kvm = set()
    wanted = os.environ.get("PIPELINE_TEST_USER")
    for pw in pwd.getpwall():
        if wanted and pw.pw_name != wanted:
            continue
        if (wanted or 1000 <= pw.pw_uid < 65534) and pw.pw_name not in kvm and _has_subids(
                pw.pw_name, pw.pw_uid):
            return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    return None


def nobody() -> User:
    return User("nobody", NOBODY, NOBODY, "/nonexistent")


def python() -> str:
    """An interpreter every user can run, with this venv's packages on PYTHONPATH."""
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def env_for(user: User, work: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{site.getsitepackages()[0]}:{ROOT}", HOME=str(work),
                USER=user.name, LOGNAME=user.name, XDG_CACHE_HOME=str(work / ".cache"))


def run_as(user: User, argv: list[str], *, cwd: Path, env: dict[str, str]
           ) -> subprocess.CompletedProcess[str]:
    """`argv` as `user` (its own groups only; setpriv, so no PAM, no terminal)."""
    groups = ["--init-groups"] if user.uid != NOBODY else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", *groups,
                           *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          check=False)


PACK_SCRIPT = """
import json, sys
from pathlib import Path
from pipeline.baguette import pack
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import Guest
from pipeline.config import Accel
a = json.loads(sys.argv[1])
guest = Guest(Appliance(Path(a["kernel"]), Path(a["initrd"]), "k"), Accel.TCG, 600, 512)
how = pack.plan()
if a.get("route"):
    how = pack.Plan(pack.Route(a["route"]), how.host, "forced")
res = pack.pack(Path(a["tarball"]), Path(a["image"]),
                pack.PackOptions(a["label"], a.get("size"), a["slack"]), guest,
                log_path=Path(a["log"]), work_dir=Path(a["work"]), how=how,
                fsid=a.get("fsid"), clock=a.get("clock"))
print(json.dumps(res))
"""


def pack_as(user: User, tarball: Path, work: Path, *, kernel: Path, initrd: Path, label: str,
            slack: int, route: str | None = None, size: int | None = None, copy: bool = True,
            fsid: str | None = None, clock: int | None = None) -> tuple[dict[str, object], str]:
    """Run the pack stage as `user` into work/disk.img; (its figures, its stderr). `work`
    must be writable by the user, and `tarball` readable unless `copy`; raises RuntimeError
    with the stderr on failure."""
    if copy:
        tarball = Path(shutil.copy(tarball, work / "rootfs.tar"))
    args = {"tarball": str(tarball), "image": str(work / "disk.img"), "label": label,
            "slack": slack, "size": size, "kernel": str(kernel), "initrd": str(initrd),
            "log": str(work / "console.log"), "work": str(work), "route": route,
            "fsid": fsid, "clock": clock}
    proc = run_as(user, [python(), "-c", PACK_SCRIPT, json.dumps(args)], cwd=work,
                  env=env_for(user, work))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr
