"""A self-contained flake shaped like NixOS configurations, for tests with the real Nix.

A real NixOS evaluation needs nixpkgs and its binary cache, which the test machines cannot
reach. This flake has no inputs: `nixosConfigurations.<host>.config` offers what the pipeline
reads of a NixOS configuration (`system.build.tarball`, `.metadata`, `chromeos.guest.kind`,
`boot.isContainer`), built by /bin/sh from host tools (busybox-static, tar, xz). Everything
else is the real path: `nix eval` for the key, `nix build --json --no-link` for the outputs,
the pipeline's stages for the images. Two hosts:

    testhost            a Crostini container (nix/modules/crostini.nix over NixOS's
                        lxc-container profile): tarball + LXD metadata
    testhost-baguette   a Baguette VM (nix/modules/baguette.nix): tarball only

The rootfs tarballs are laid out as NixOS's make-system-tarball lays them out (read from
nixpkgs: nixos/lib/make-system-tarball.sh, the toplevel builder in
nixos/modules/system/activation/top-level.nix), with busybox standing in for every program:

    /nix/store/<hash>-<name>/...   the closure, and nothing of the system outside it but:
    /sbin/init                     a copy of the system's stage-2 init (`cp -a $toplevel/init`)
    /etc/os-release                a link into the store (`cp -a` of the etc entry)
    /nix-path-registration         the closure, for `nix-store --load-db`
    proc sys dev                   empty (lxc-container's extraCommands); Baguette adds
                                   boot run tmp mnt/shared mnt/stateful (nix/modules/baguette.nix)

No /bin, /usr, /home, /etc/passwd: NixOS's activation makes them at boot. The stand-in init
(/sbin/init = <system>/init) runs the system's `activate`, which does what NixOS's does that
ChromeOS relies on: /etc/static and a link per /etc entry, /etc/NIXOS, passwd/group/shadow
(root, the 11 groups vmc asks for, the uid-1000 `user` in them), an empty /etc/gshadow,
/bin/sh and /usr/bin/env (the only programs outside the store, as in NixOS), the dotfiles in
/etc/skel (and the declared user's home), /run/current-system, and, when the configuration
links them (`links=True`, as nix/modules/chromeos-guest.nix does), /usr/sbin/useradd,
/usr/sbin/usermod, /bin/bash and /usr/lib/openssh/sftp-server. Then it executes
/run/current-system/systemd/lib/systemd/systemd, a stand-in that only sleeps (no init system
here: a boot test replaces it). useradd and usermod are small scripts that do what maitred
asks of shadow's (`useradd --uid U --create-home --shell S --groups G NAME`,
`usermod --append --groups G NAME`). There is no /bin/cat and no /usr/bin/findmnt.

With `write_flake(..., init="systemd")` testhost-baguette is instead a system with a real
init that the conformance harness boots: Debian's own systemd 252, D-Bus, udev, logind, sudo,
bash, sftp-server, shadow and coreutils relocated into the store, ELF interpreter and RUNPATH
rewritten by patchelf to the store's glibc, units from upstream's and from nix/modules (copied
into the flake, so an edited module makes another image). tests/support/nixos_system.py, its
builder, says what it reads from the modules and what it mirrors by hand.

`activated_tree` runs that activation into an extracted copy, and `nixos_layout_problems`
reads such a tree for what ChromeOS (or a check) runs by absolute path and finds missing.

NIX_TEST_CONFIG is the test environment's Nix settings (the user's are never touched):
no substituters (no network here), no sandbox (the builder uses host tools) and no build
users (nix-bin without the daemon package has no nixbld group).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from pipeline.core.run import which
from tests.support.paths import ROOT
from tests.support.tools import tool_missing

MODULES = ROOT / "nix" / "modules"

NIX_TEST_CONFIG = "\n".join([
    "experimental-features = nix-command flakes",
    "substituters =",
    "sandbox = false",
    "build-users-group =",
])

HOSTS = {"crostini": "testhost", "baguette": "testhost-baguette"}
# what ChromeOS runs in a guest by absolute path (maitred: useradd, usermod and the user's
# shell it passes; garcon: sftp-server for the Files app; the kernel or LXD: /sbin/init)
CHROMEOS_RUNS = ("/sbin/init", "/bin/sh", "/usr/sbin/useradd", "/usr/sbin/usermod",
                 "/bin/bash", "/usr/lib/openssh/sftp-server")

FLAKE = r"""{
  description = "Test stand-in for NixOS configurations: their shape and layout, no nixpkgs";
  outputs = { self }:
    let
      system = "x86_64-linux";
      motd = builtins.readFile ./motd;  # a file the configuration reads
      # the Baguette system with a real init (tests/support/nixos_system.py)
      systemdTarball = derivation {
        name = "nixos-baguette-x86_64-linux.tar.xz";
        inherit system;
        builder = "/usr/bin/python3";
        args = [ ./make-system.py ];
        modules = ./modules;
        PATH = "/usr/bin:/bin:/usr/sbin:/sbin";
      };
      tarball = kind: if kind == "baguette" && INIT == "systemd" then systemdTarball
        else derivation {
        # the file names nix/modules/baguette.nix and NixOS's lxc-container give
        name = if kind == "baguette" then "nixos-baguette-x86_64-linux.tar.xz"
          else "nixos-system-x86_64-linux.tar.xz";
        inherit system motd kind;
        links = LINKS;
        builder = "/bin/sh";
        args = [ ./make-rootfs.sh ];
        failWith = FAIL;
      };
      metadata = derivation {
        name = "nixos-lxc-metadata.tar.xz";
        inherit system;
        builder = "/bin/sh";
        args = [ ./make-metadata.sh ];
        # NixOS writes metadata.yaml with lib.generators.toYAML, which emits JSON
        metadataYaml = builtins.toJSON {
          architecture = "x86_64";
          creation_date = 1;
          properties = { description = "NixOS test"; os = "nixos"; release = "testing"; };
          templates."/etc/nixos-container-name" = {
            when = [ "create" "copy" ];
            template = "container-name.tpl";
            properties = { };
          };
        };
      };
      host = kind: {
        config = {
          chromeos.guest.kind = kind;
          chromeos.guest.user = "user";  # the module option's default (declared=user below)
          boot.isContainer = kind == "crostini";
          system.build = { tarball = tarball kind; }
            // (if kind == "crostini" then { inherit metadata; } else { });
        };
      };
    in {
      nixosConfigurations = {
        testhost = host "crostini";
        testhost-baguette = host "baguette";
      };
    };
}
"""

# The builder: the store paths of a tiny NixOS system (busybox for every program), its
# stage-2 init and activation, then make-system-tarball's layout.
MAKE_ROOTFS = r"""set -eu
export PATH=/usr/bin:/bin
if [ "$failWith" != 0 ]; then
  echo "compiling the world"; echo "error: the test asked this build to fail" >&2
  exit "$failWith"
fi
echo "making the test rootfs ($kind)"
r=$PWD/root
S=/nix/store
h() { printf '%032d' "$1"; }  # a stand-in store hash
BB=$S/$(h 1)-busybox-1.35.0
SW=$S/$(h 2)-system-path
SHADOW=$S/$(h 3)-shadow-4.17
BASH=$S/$(h 4)-bash-interactive-5.2
SSH=$S/$(h 5)-openssh-10.0
OSREL=$S/$(h 6)-etc-os-release
MOTD=$S/$(h 7)-etc-motd
ETC=$S/$(h 8)-etc
DOT=$S/$(h 9)-dotfiles
SYSTEMD=$S/$(h 10)-systemd-stand-in
SYS=$S/$(h 11)-nixos-system-$kind-26.05
HELLO=$S/00000000000000000000000000000000-hello

script() {  # script PATH: a stand-in program (stdin) run by the store's busybox sh
  mkdir -p "$r$(dirname "$1")"
  { echo "#!$BB/bin/sh"; echo "PATH=$BB/bin:\$PATH"; cat; } > "$r$1"
  chmod 555 "$r$1"
}

mkdir -p $r$BB/bin $r$SW/bin $r$BASH/bin $r$ETC/etc $r$DOT $r$SYS $r$HELLO/bin
cp /bin/busybox $r$BB/bin/busybox
for a in sh ash cat ls ln cp mv rm mkdir chmod chown chgrp sleep hostname true false id \
         env grep sed awk head tail tr cut printf echo test mount umount ps kill dirname; do
  ln -s busybox $r$BB/bin/$a
  ln -s $BB/bin/$a $r$SW/bin/$a
done
ln -s $BB/bin/sh $r$BASH/bin/sh
# no bash applet in busybox: a login shell stands in for it
script $BASH/bin/bash <<EOF
exec $BB/bin/sh -l "\$@"
EOF
ln -s $BASH/bin/bash $r$SW/bin/bash
for p in useradd usermod; do ln -s $SHADOW/bin/$p $r$SW/bin/$p; done
script $SHADOW/bin/useradd <<'EOF'
# stand-in for shadow's useradd, as maitred calls it
set -e
uid= shell=/bin/sh groups= create=
while [ $# -gt 1 ]; do
  case "$1" in
    --uid|-u) uid=$2; shift 2;;
    --shell|-s) shell=$2; shift 2;;
    --groups|-G) groups=$2; shift 2;;
    --create-home|-m) create=1; shift;;
    *) echo "useradd: unsupported option $1" >&2; exit 2;;
  esac
done
name=$1
if grep -q "^$name:" /etc/passwd; then echo "useradd: user '$name' already exists" >&2; exit 9; fi
echo "$name:x:$uid:" >> /etc/group
echo "$name:x:$uid:$uid::/home/$name:$shell" >> /etc/passwd
echo "$name:!:1::::::" >> /etc/shadow
if [ -n "$groups" ]; then "$(dirname "$0")/usermod" --append --groups "$groups" "$name"; fi
if [ -n "$create" ]; then
  mkdir -p "/home/$name"
  cp -a /etc/skel/. "/home/$name/"
  chown -R "$uid:$uid" "/home/$name"
  chmod 0700 "/home/$name"
fi
EOF
script $SHADOW/bin/usermod <<'EOF'
# stand-in for shadow's usermod, as maitred calls it
set -e
if [ "$1" != --append ] || [ "$2" != --groups ]; then
  echo "usermod: only --append --groups GROUPS NAME" >&2; exit 2
fi
groups=$3 name=$4
if ! grep -q "^$name:" /etc/passwd; then echo "usermod: user '$name' does not exist" >&2; exit 6; fi
for g in $(echo "$groups" | tr , ' '); do
  if ! grep -q "^$g:" /etc/group; then echo "usermod: group '$g' does not exist" >&2; exit 6; fi
done
awk -F: -v OFS=: -v gs=",$groups," -v u="$name" '
  index(gs, "," $1 ",") { n = split($4, m, ","); seen = 0
    for (i = 1; i <= n; i++) if (m[i] == u) seen = 1
    if (!seen) $4 = ($4 == "" ? u : $4 "," u) }
  { print }' /etc/group > /etc/group.new
mv /etc/group.new /etc/group
EOF
script $SSH/libexec/sftp-server <<'EOF'
# stand-in for OpenSSH's sftp-server (garcon runs it for the Files app)
exit 0
EOF
script $SYSTEMD/lib/systemd/systemd <<EOF
# stand-in for systemd: the stand-in NixOS has no init system; a boot test replaces this
echo "NixOS stand-in: activated, no systemd here"
exec $BB/bin/sleep 2147483647
EOF

printf 'NAME=NixOS\nID=nixos\nVERSION_CODENAME=testing\nVERSION_ID="test"\n' > $r$OSREL
printf '%s' "$motd" > $r$MOTD
ln -s $OSREL $r$ETC/etc/os-release
ln -s $MOTD $r$ETC/etc/motd
printf '# the dotfiles of the NixOS stand-in\nexport NIXOS_STAND_IN_DOTFILES=1\n' > $r$DOT/.profile
printf '#!/bin/sh\necho hello\n' > $r$HELLO/bin/hello
chmod 555 $r$HELLO/bin/hello

ln -s $SW $r$SYS/sw
ln -s $ETC/etc $r$SYS/etc
ln -s $SYSTEMD $r$SYS/systemd
declared=user  # chromeos.guest.user's default
script $SYS/activate <<EOF
# stand-in for NixOS's activation script: what it does that ChromeOS relies on
systemConfig=$SYS
export PATH=$BB/bin
mkdir -p /etc /run /tmp /var/lib /root /home /bin /usr/bin
chmod 1777 /tmp
# etc (setup-etc.pl): /etc/static, a link per entry, the tag LXD looks for
ln -sfn \$systemConfig/etc /etc/static
for f in \$(ls /etc/static); do ln -sfn /etc/static/\$f /etc/\$f; done
: >> /etc/NIXOS
# users and groups (update-users-groups.pl; mutable: kept once made)
if [ ! -e /etc/passwd ]; then
  echo "root:x:0:0:System administrator:/root:/run/current-system/sw/bin/bash" > /etc/passwd
  echo "root:!:1::::::" > /etc/shadow
  printf '%s\n' root:x:0: wheel:x:1: disk:x:6: audio:x:17: floppy:x:18: cdrom:x:24: \
    video:x:26: dialout:x:27: users:x:100: tss:x:176: kvm:x:302: shadow:x:318: \
    netdev:x:997: plugdev:x:998: sudo:x:999: > /etc/group
  if [ -n "$declared" ]; then
    echo "$declared:x:1000:100::/home/$declared:/run/current-system/sw/bin/bash" >> /etc/passwd
    echo "$declared:!:1::::::" >> /etc/shadow
    vmc='audio|cdrom|dialout|disk|floppy|kvm|netdev|plugdev|sudo|tss|video'
    sed -i -E "/^(\$vmc):/s/\\\$/$declared/" /etc/group
  fi
  chgrp shadow /etc/shadow; chmod 0640 /etc/shadow
fi
: > /etc/gshadow; chgrp shadow /etc/gshadow; chmod 0640 /etc/gshadow
# binsh, usrbinenv
ln -sfn $BASH/bin/sh /bin/sh
ln -sfn $BB/bin/env /usr/bin/env
# chromeos-absolute-paths
if [ "$links" = 1 ]; then
  mkdir -p /usr/sbin /usr/lib/openssh
  ln -sfn $SHADOW/bin/useradd /usr/sbin/useradd
  ln -sfn $SHADOW/bin/usermod /usr/sbin/usermod
  ln -sfn $BASH/bin/bash /bin/bash
  ln -sfn $SSH/libexec/sftp-server /usr/lib/openssh/sftp-server
fi
# chromeos-dotfiles
rm -rf /etc/skel; cp -r $DOT /etc/skel
if [ -n "$declared" ] && [ ! -e /home/$declared ]; then
  cp -r $DOT /home/$declared; chown -R 1000:100 /home/$declared; chmod 0700 /home/$declared
fi
ln -sfn \$systemConfig /run/current-system
EOF
script $SYS/init <<EOF
# stand-in for NixOS's stage-2 init: the special filesystems, the activation, "systemd"
export PATH=$BB/bin
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
grep -q ' /run ' /proc/mounts || mount -t tmpfs -o mode=0755 tmpfs /run
$SYS/activate
ln -sfn $SYS /run/booted-system
exec /run/current-system/systemd/lib/systemd/systemd
EOF

# make-system-tarball: `contents` copied with cp -a, the closure, its registration
mkdir -p $r/sbin $r/etc
cp -a $r$SYS/init $r/sbin/init
cp -a $r$ETC/etc/os-release $r/etc/os-release
(cd $r && ls -d nix/store/* | sed 's|^|/|') > $r/nix-path-registration
mkdir -p $r/proc $r/sys $r/dev
if [ "$kind" = baguette ]; then mkdir -p $r/boot $r/run $r/tmp $r/mnt/shared $r/mnt/stateful; fi
mkdir -p $out/tarball $out/nix-support
tar -C $r --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -c . \
  | xz -1 > $out/tarball/$name
echo "file system-tarball $out/tarball/$name" > $out/nix-support/hydra-build-products
"""

MAKE_METADATA = r"""set -eu
export PATH=/usr/bin:/bin
m=$PWD/meta
mkdir -p $m/templates $out/tarball $out/nix-support
printf '%s\n' "$metadataYaml" > $m/metadata.yaml
printf '%s\n' '{{ container.name }} (from the NixOS metadata)' > $m/templates/container-name.tpl
tar -C $m --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -c . \
  | xz -1 > $out/tarball/nixos-lxc-metadata.tar.xz
echo "file system-tarball $out/tarball/nixos-lxc-metadata.tar.xz" \
  > $out/nix-support/hydra-build-products
"""


def write_flake(directory: Path, *, motd: str = "welcome\n", fail_with: int = 0,
                links: bool = True, flake_nix: str | None = None, init: str = "stand-in",
                modules: Path = MODULES) -> Path:
    """The stand-in flake in `directory`. `links=False` models a configuration that does
    not link what ChromeOS runs by absolute path (the modules' old defect:
    maitred's /usr/sbin/usermod missing).
    `init="systemd"` makes testhost-baguette the system with a real init
    (tests/support/nixos_system.py), from the module files in `modules`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flake.nix").write_text(
        flake_nix if flake_nix is not None
        else FLAKE.replace("FAIL", str(fail_with)).replace("LINKS", f'"{int(links)}"')
        .replace("INIT", f'"{init}"'))
    shutil.copy(Path(__file__).with_name("nixos_system.py"), directory / "make-system.py")
    shutil.rmtree(directory / "modules", ignore_errors=True)
    shutil.copytree(modules, directory / "modules")
    (directory / "make-rootfs.sh").write_text(MAKE_ROOTFS)
    (directory / "make-metadata.sh").write_text(MAKE_METADATA)
    (directory / "motd").write_text(motd)
    return directory


def build_tarball(flake: Path, kind: str) -> Path:
    """`nix build` the host's rootfs tarball (needs nix_env); returns the .tar.xz."""
    proc = subprocess.run(
        ["nix", "build", "--json", "--no-link",
         f"path:{flake}#nixosConfigurations.{HOSTS[kind]}.config.system.build.tarball"],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    out = Path(json.loads(proc.stdout)[0]["outputs"]["out"])
    [tarball] = (out / "tarball").glob("*.tar.xz")
    return tarball


def activated_tree(tarball: Path, dest: Path) -> Path:
    """The tree as it is once the image's NixOS activation has run at boot: the tarball
    extracted into `dest`, then the system's own `activate` run with `dest` as its root
    (in a chroot; needs root)."""
    if os.geteuid() != 0:
        tool_missing("running the image's activation needs a chroot (root)")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tf:
        tf.extractall(dest, filter="fully_trusted")
    init = (dest / "sbin/init").read_text()
    activate = next(line.split()[0] for line in init.splitlines()
                    if line.endswith("/activate"))
    subprocess.run([which("chroot") or "/usr/sbin/chroot", str(dest), activate], check=True,
                   capture_output=True, env={"PATH": "/usr/bin:/bin"})
    return dest


def resolve(tree: Path, path: str) -> Path | None:
    """`path` as the guest resolves it inside `tree` (absolute links stay in the tree)."""
    here = tree
    parts = [p for p in path.split("/") if p]
    for _ in range(40):
        if not parts:
            return here
        here = here / parts.pop(0)
        if here.is_symlink():
            target = os.readlink(here)
            parts = [p for p in target.split("/") if p] + parts
            here = tree if target.startswith("/") else here.parent
        elif not here.exists():
            return None
    return None


def nixos_layout_problems(tree: Path, kind: str, runs: Iterable[str] = CHROMEOS_RUNS,
                          *, booted: bool = True) -> list[str]:
    """What is wrong with a NixOS guest tree for ChromeOS, one line each: a program run by
    absolute path (`runs`) that the tree lacks or cannot execute, and, in a tarball
    (`booted=False`), a missing /etc/os-release or a /sbin/init outside the store's
    system. Programs resolve through the tree's own links (into /nix/store)."""
    problems = []
    for path in runs:
        if not booted and path != "/sbin/init":
            continue  # made at boot by the activation
        found = resolve(tree, path)
        if found is None or not found.is_file():
            problems.append(f"{path}: missing ({kind})")
        elif not found.stat().st_mode & stat.S_IXUSR:
            problems.append(f"{path}: not executable ({kind})")
    if not booted:
        if resolve(tree, "/etc/os-release") is None:
            problems.append(f"/etc/os-release: missing ({kind})")
        init = resolve(tree, "/sbin/init")
        first = init.read_text(errors="replace").splitlines()[0] if init else ""
        shell = resolve(tree, first[2:].split()[0]) if first.startswith("#!") else None
        if not first[2:].strip().startswith("/nix/store/") or shell is None:
            problems.append(f"/sbin/init: not a script of the system's closure ({kind})")
    return problems


def require_nix() -> None:
    """Skip where Nix or busybox is missing; in CI (CI=true) that is a failure."""
    missing = [t for t in ("nix", "nix-instantiate") if which(t) is None]
    if not Path("/bin/busybox").is_file():
        missing.append("/bin/busybox")
    if missing:
        tool_missing(f"missing {', '.join(missing)} "
                     "(run `python3 -m pipeline.hostsetup --tests`: nix-bin, busybox-static)")


@pytest.fixture
def nix_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own Nix settings, for this process and the doit processes it starts."""
    require_nix()
    monkeypatch.setenv("NIX_CONFIG", NIX_TEST_CONFIG)
