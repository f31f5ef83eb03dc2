"""Set up this machine: Debian packages and the project's virtual environment.

    python3 -m pipeline.hostsetup            # runtime: packages + .venv
    python3 -m pipeline.hostsetup --tests    # also the test dependencies
    python3 -m pipeline.hostsetup --no-venv  # packages only (an installed cros-guest)

Idempotent and quick when already done: installed packages are asked of dpkg first, and the
venv is reinstalled only when pyproject.toml changed. Uses the standard library only, since
it runs before the venv exists.

btrfs-progs: the pack stage wants 6.12 or newer (`mkfs.btrfs --subvol default:rootfs_subvol`,
hardlinks kept by `--rootdir`). Debian 12 ships 6.2, so on bookworm set-up adds the suite
bookworm-backports to apt, pinned so that only btrfs-progs comes from it
(/etc/apt/preferences.d/cros-guest-pipeline), and installs it from there: apt checks its
signature and upgrades it with the system. Elsewhere the installed version is used as it is
(older ones pack through the guest's snapshot).

aarch64 images (docs/aarch64.md): qemu-system-arm, and qemu-user-static with binfmt-support so
that mmdebstrap can run an arm64 tree's maintainer scripts; set-up registers the handler
(mounting binfmt_misc first if needed) and says so in one line when the host forbids it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
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
    "mmdebstrap", "uidmap", "cpio", "e2fsprogs", "kmod", "tar",
    # the VM helper's kernel: the host's own architecture (an ARM host packs with arm64 tools)
    "linux-image-arm64" if platform.machine() == "aarch64" else "linux-image-amd64",
    "xz-utils", "squashfs-tools-ng", "qemu-system-arm", "qemu-user-static", "binfmt-support",
    "arch-test", "python3-venv",
]  # uidmap: mmdebstrap's unshare mode, used when the build does not run as root
# qemu-system-arm: aarch64 guests (qemu-system-aarch64 -M virt); qemu-user-static and
# binfmt-support: the maintainer scripts of a foreign-architecture Debian rootfs (mmdebstrap;
# arch-test: how mmdebstrap checks that the host runs them)
# the secret scan's rule set (pipeline/rootfs/secrets.py): Debian packages it from trixie on,
# so on bookworm that one package comes from trixie (it needs only libc6 >= 2.34)
GITLEAKS = "gitleaks"
BACKPORT_SUITE = "trixie"
# the Crostini tests import into a real LXD; the publish test serves it over HTTPS (openssl)
# the secret scan's NixOS-shaped tree is made of real packages that ship test keys, examples
# and ELF files with key material: Python's test suite, xmlsec's examples, gnutls' tools
# the fault-injection test kills publish, gc and fsck at chosen system calls (strace)
# the remote-cache tests run a real OCI registry (docker-registry) with htpasswd's bcrypt
# users (apache2-utils) over TLS from a CA the tests make (openssl)
# the stand-in NixOS flake relocates the host's systemd, sudo and sftp-server into a Nix
# store layout (patchelf rewrites their interpreter and RUNPATH); the Crostini conformance
# test's LXD bridge hands out addresses with dnsmasq, as termina's lxdbr0 does (LXD
# checks its chains with iptables even when it adds none)
TEST_PACKAGES = ["lxd", "lxd-client", "openssl", "libpython3.11-testsuite", "libxmlsec1-dev",
                 "gnutls-bin", "strace", "docker-registry", "apache2-utils", "patchelf", "sudo",
                 "openssh-sftp-server", "dnsmasq-base", "iptables"]

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


def register_foreign_binaries() -> None:
    """qemu-user for aarch64 through binfmt_misc, so that an x86_64 host can build aarch64
    Debian images (their maintainer scripts run under qemu-user); a host that forbids it (an
    unprivileged container) is told so, and everything else still works."""
    from .core import binfmt
    from .core.arch import ARCHES, host_arch

    for a in ARCHES.values():
        if a is host_arch():
            continue
        why = binfmt.register(a) if os.geteuid() == 0 else binfmt.problem(a)
        if why is None:
            print(f"setup: {a.name} programs run here through qemu-user "
                  f"(binfmt_misc {binfmt.handler_name(a)})")
        else:
            print(f"setup: {a.name} Debian images cannot be built here: {why}; run the "
                  "set-up as root on a host that allows binfmt_misc (a privileged container "
                  "or the machine itself), or build them on an aarch64 machine",
                  file=sys.stderr)



def has_pip(venv_dir: Path) -> bool:
    """The venv's python runs and has pip (a venv whose creation failed half-way, e.g.
    without python3-venv's ensurepip, has a python and no pip)."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        return False
    return subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True,
                          check=False).returncode == 0


def ensure_venv(extras: str, venv_dir: Path = VENV) -> None:
    stamp = venv_dir / ".installed"
    def digest(e: str) -> str:
        return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + e.encode()).hexdigest()

    want = digest(extras)
    done = stamp.read_text() if stamp.is_file() else ""
    # a venv with the test extras also satisfies a runtime-only request
    if done in (want, digest("test")) and (venv_dir / "bin" / "doit").exists():
        print(f"setup: {venv_dir.name} up to date")
        return
    if not has_pip(venv_dir):
        print(f"setup: creating {venv_dir.name}")
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"setup: could not create {venv_dir} ({exc}): install python3-venv "
                  "(apt-get install python3-venv), then run set-up again", file=sys.stderr)
            raise SystemExit(1) from None
    pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "-q",
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
    ap.add_argument("--no-venv", action="store_true",
                    help="only the Debian packages (for cros-guest installed with pip or pipx)")
    args = ap.parse_args(argv)
    if shutil.which("dpkg-query") is None:
        print("setup: this is not a Debian-based system; install the equivalents of "
              f"{' '.join(PACKAGES)} by hand", file=sys.stderr)
    else:
        install_packages(PACKAGES + nix_packages() + (TEST_PACKAGES if args.tests else []))
        install_gitleaks()
        register_foreign_binaries()
    if args.no_venv or not (ROOT / "pyproject.toml").is_file():  # not a checkout: installed
        print("setup: Debian packages only (no .venv)")
        return 0
    ensure_venv("test" if args.tests else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
