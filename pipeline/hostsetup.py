"""Set up this machine: Debian packages and the project's virtual environment.

    python3 -m pipeline.hostsetup            # runtime: packages + .venv
    python3 -m pipeline.hostsetup --tests    # also the test dependencies

Idempotent and quick when already done: installed packages are asked of dpkg first, and the
venv is reinstalled only when pyproject.toml changed. Uses the standard library only, since
it runs before the venv exists.

btrfs-progs: the pack stage wants 6.12 or newer (`mkfs.btrfs --subvol default:rootfs_subvol`,
hardlinks kept by `--rootdir`). Debian 12 ships 6.2, so on bookworm set-up adds the suite
bookworm-backports to apt, pinned so that only btrfs-progs comes from it
(/etc/apt/preferences.d/cros-guest-pipeline), and installs it from there: apt checks its
signature and upgrades it with the system. Elsewhere the installed version is used as it is
(older ones pack through the guest's snapshot).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"

PACKAGES = [
    "qemu-system-x86", "qemu-utils", "btrfs-progs", "busybox-static", "zstd", "libmagic1",
    "mmdebstrap", "uidmap", "cpio", "e2fsprogs", "kmod", "tar", "linux-image-amd64",
    "xz-utils", "squashfs-tools-ng",
]  # uidmap: mmdebstrap's unshare mode, used when the build does not run as root
# the secret scan's rule set (pipeline/rootfs/secrets.py): Debian packages it from trixie on,
# so on bookworm that one package comes from trixie (it needs only libc6 >= 2.34)
GITLEAKS = "gitleaks"
BACKPORT_SUITE = "trixie"
# the Crostini tests import into a real LXD; the publish test serves it over HTTPS (openssl)
# the secret scan's NixOS-shaped tree is made of real packages that ship test keys, examples
# and ELF files with key material: Python's test suite, xmlsec's examples, gnutls' tools
# the fault-injection test kills publish, gc and fsck at chosen system calls (strace)
# the stand-in NixOS flake relocates the host's systemd, sudo and sftp-server into a Nix
# store layout (patchelf rewrites their interpreter and RUNPATH)
TEST_PACKAGES = ["lxd", "lxd-client", "openssl", "libpython3.11-testsuite", "libxmlsec1-dev",
                 "gnutls-bin", "strace", "patchelf", "sudo", "openssh-sftp-server"]

BTRFS_PROGS_WANTED = (6, 12)  # pipeline.baguette.pack.SUBVOL_MKFS
BACKPORTS = {"bookworm": "bookworm-backports"}  # suites that have a new enough btrfs-progs
APT_SOURCE = Path("/etc/apt/sources.list.d/cros-guest-pipeline-backports.sources")
APT_PIN = Path("/etc/apt/preferences.d/cros-guest-pipeline")


def nix_packages() -> list[str]:
    """Debian's nix-bin for `source = "nix"` images, unless another Nix (the official
    installer's, say) is already on PATH: that one is used, with its own settings."""
    nix = shutil.which("nix")
    return ["nix-bin"] if nix is None or nix == "/usr/bin/nix" else []


def missing_packages(names: list[str]) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *names],
        capture_output=True, text=True, check=False,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [n for n in names if n not in installed]


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def installed_version(package: str) -> tuple[int, ...] | None:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package],
                         capture_output=True, text=True, check=False).stdout.split()
    if len(out) < 2 or out[0] != "installed":
        return None
    m = re.match(r"(?:\d+:)?(\d+)\.(\d+)", out[1])
    return (int(m.group(1)), int(m.group(2))) if m else None


def codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        text = os_release.read_text()
    except OSError:
        return ""
    m = re.search(r"^VERSION_CODENAME=\"?([^\"\n]*)", text, re.M)
    return m.group(1) if m else ""


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The URI the host's apt sources use for Debian itself (deb.debian.org if none)."""
    texts = []
    for p in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        try:
            texts.append(p.read_text())
        except OSError:
            continue
    for text in texts:
        for m in re.finditer(r"^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+/debian)/?\s", text,
                             re.M):
            return m.group(1)
    return "http://deb.debian.org/debian"


def backports_configured(suite: str, apt_dir: Path = Path("/etc/apt")) -> bool:
    for p in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        try:
            text = p.read_text()
        except OSError:
            continue
        if re.search(rf"^[^#\n]*\b{re.escape(suite)}\b", text, re.M):
            return True
    return False


def _write_root_file(path: Path, text: str) -> None:
    if os.geteuid() == 0:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    subprocess.run([*_sudo(), "tee", str(path)], input=text, text=True, check=True,
                   stdout=subprocess.DEVNULL)


def btrfs_progs_from_backports() -> bool:
    """Pin btrfs-progs to the release's backports suite when the installed one is older than
    BTRFS_PROGS_WANTED; True if it must be installed (again) from there."""
    have = installed_version("btrfs-progs")
    if have is not None and have >= BTRFS_PROGS_WANTED:
        return False
    suite = BACKPORTS.get(codename())
    if suite is None:
        if have is not None:
            print(f"setup: btrfs-progs {'.'.join(map(str, have))} is older than "
                  f"{'.'.join(map(str, BTRFS_PROGS_WANTED))}: packing will take the guest's "
                  "snapshot route (slower)")
        return False
    print(f"setup: btrfs-progs from {suite} (pinned to that one package)")
    if not backports_configured(suite):
        _write_root_file(APT_SOURCE, f"Types: deb\nURIs: {debian_mirror()}\nSuites: {suite}\n"
                         "Components: main\n"
                         "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    _write_root_file(APT_PIN, "# cros-guest-pipeline: btrfs-progs 6.12+ for mkfs.btrfs --subvol;"
                     f" nothing else from {suite}\n"
                     f"Package: btrfs-progs\nPin: release n={suite}\nPin-Priority: 500\n")
    return True


def install_packages(names: list[str]) -> None:
    missing = missing_packages(names)
    if btrfs_progs_from_backports() and "btrfs-progs" not in missing:
        missing.append("btrfs-progs")
    if not missing:
        print(f"setup: Debian packages present ({len(names)})")
        return
    sudo = _sudo()
    print(f"setup: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    *missing], check=True, env=env)


def install_gitleaks() -> None:
    """gitleaks from the host's apt when it knows the package, else the one .deb from
    BACKPORT_SUITE, fetched with a private apt state (the host's sources stay untouched, so
    nothing else can come from that suite) and installed with the host's own dependencies."""
    if not missing_packages([GITLEAKS]):
        return
    policy = subprocess.run(["apt-cache", "policy", GITLEAKS], capture_output=True, text=True,
                            check=False).stdout
    if "Candidate:" in policy and "Candidate: (none)" not in policy:
        install_packages([GITLEAKS])
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    with tempfile.TemporaryDirectory(prefix="hostsetup-apt.") as tmp:
        state = Path(tmp)
        (state / "lists" / "partial").mkdir(parents=True)
        (state / "cache" / "archives" / "partial").mkdir(parents=True)
        (state / "sources.list").write_text(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
            f"http://deb.debian.org/debian {BACKPORT_SUITE} main\n")
        opts = [f"-oDir::Etc::sourcelist={state / 'sources.list'}",
                "-oDir::Etc::sourceparts=/nonexistent", f"-oDir::State::Lists={state / 'lists'}",
                f"-oDir::Cache={state / 'cache'}", "-oAPT::Sandbox::User=root"]
        print(f"setup: fetching {GITLEAKS} from Debian {BACKPORT_SUITE}")
        subprocess.run(["apt-get", *opts, "update", "-qq"], check=True)
        subprocess.run(["apt-get", *opts, "download", GITLEAKS], check=True, cwd=tmp)
        deb = next(state.glob(f"{GITLEAKS}_*.deb"))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        str(deb)], check=True, env=env)


def ensure_venv(extras: str) -> None:
    stamp = VENV / ".installed"
    def digest(e: str) -> str:
        return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + e.encode()).hexdigest()

    want = digest(extras)
    done = stamp.read_text() if stamp.is_file() else ""
    # a venv with the test extras also satisfies a runtime-only request
    if done in (want, digest("test")) and (VENV / "bin" / "doit").exists():
        print("setup: .venv up to date")
        return
    if not (VENV / "bin" / "python").exists():
        print("setup: creating .venv")
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    print(f"setup: installing the project into .venv ({extras or 'runtime'})")
    subprocess.run([*pip, "-e", target], check=True)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(want)
    os.replace(tmp, stamp)  # a half-written stamp must not claim a finished install


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", action="store_true", help="also install the test dependencies")
    args = ap.parse_args(argv)
    if shutil.which("dpkg-query") is None:
        print("setup: this is not a Debian-based system; install the equivalents of "
              f"{' '.join(PACKAGES)} by hand", file=sys.stderr)
    else:
        install_packages(PACKAGES + nix_packages() + (TEST_PACKAGES if args.tests else []))
        install_gitleaks()
    ensure_venv("test" if args.tests else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
