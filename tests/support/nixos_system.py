"""The builder of the stand-in flake's Baguette system with a real init: Debian's own
systemd, D-Bus, udev, logind, sudo, bash, sftp-server, shadow and coreutils relocated into a
Nix store, as NixOS lays a system out. Run by `nix build` (builder = python3; standard library
only, so it can run outside the project) with `$out`, `$name` and `$modules` (a copy of
nix/modules) in its environment.

What it makes (read from nixpkgs: nixos/lib/make-system-tarball.sh, top-level.nix,
system/etc/setup-etc.pl, stage-2-init.sh, systemd.nix):

    /nix/store/<hash>-<package>-<version>/   one store path per Debian package, its files
                         without the /usr prefix (bin/, sbin/, lib/, libexec/, share/); every
                         ELF's interpreter is the store glibc's ld-linux and its RUNPATH names
                         the store paths of the libraries it links (patchelf), so nothing
                         runs from /lib, /lib64 or /usr/lib
    <system>/init        stage 2: the special filesystems, `activate`, then systemd
    <system>/activate    /etc/static and a link per /etc entry, users and groups, /bin/sh and
                         /usr/bin/env (the only programs outside the store), the links the
                         configuration declares for ChromeOS (read from the module), the
                         setuid wrappers in /run/wrappers, /run/current-system
    <etc>/etc            /etc: systemd/system and systemd/user (store unit dirs), the
                         generators, udev rules, dbus-1, pam.d (modules by store path),
                         sudoers, fstab, profile, hosts, tmpfiles.d
    /sbin/init, /etc/os-release, /nix-path-registration, proc sys dev ...

Debian's systemd has /lib/systemd/ and /lib/udev/ compiled in (its shutdown binary, the
generator and rules directories); NixOS compiles store paths in instead. Here those two
prefixes are rewritten in place, at the same length, to /etc/systemd/ and /etc/udev/, which
/etc links into the store, so they too lead into the store.

The units are upstream's (the host's, their programs rewritten to store paths, as NixOS's
systemd module takes them from its systemd package) plus those nix/modules declares, mirrored
here from the module source by reading the module files: the paths ChromeOS runs by absolute
name (`absolutePaths` in chromeos-guest.nix), and the tools mount (a `systemd.mounts` entry,
or a `fileSystems` entry whose options go to /etc/fstab for systemd-fstab-generator, as NixOS
writes it) with the `user@` drop-in. The other services are mirrored by hand from the module
definitions (ExecStart, After, Requires, Wants, ConditionPathExists, PATH), not read.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE = "/nix/store"
TOOLS = "/opt/google/cros-containers"
TOOLS_MOUNT = r"opt-google-cros\x2dcontainers.mount"
VMC_GROUPS = ("audio", "cdrom", "dialout", "disk", "floppy", "kvm", "netdev", "plugdev",
              "sudo", "tss", "video")
PACKAGES = {  # Debian package -> the nixpkgs attribute it stands in for
    "libc6": "glibc", "systemd": "systemd", "udev": "udev", "libpam-systemd": "pam_systemd",
    "dbus-daemon": "dbus", "dbus-bin": "dbus-bin", "sudo": "sudo",
    "openssh-sftp-server": "openssh", "bash": "bashInteractive", "coreutils": "coreutils",
    "grep": "gnugrep", "libc-bin": "glibc-bin", "sed": "gnused", "findutils": "findutils",
    "mount": "util-linux",
    "util-linux": "util-linux-bin", "passwd": "shadow", "libpam-modules": "pam",
    "libpam-modules-bin": "pam-bin", "btrfs-progs": "btrfs-progs", "xauth": "xauth",
}
SKIP = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/locale/", "/usr/share/info/",
        "/usr/share/lintian/", "/usr/share/bash-completion/", "/usr/share/zsh/", "/etc/",
        "/usr/lib/systemd/system/", "/lib/systemd/system/", "/usr/lib/systemd/user/",
        "/usr/share/doc-base/", "/usr/share/bug/")
SYSTEM_UNITS = (
    "basic.target", "sysinit.target", "local-fs.target", "local-fs-pre.target",
    "sockets.target", "timers.target", "paths.target", "slices.target", "swap.target",
    "network.target", "network-pre.target", "network-online.target", "multi-user.target",
    "shutdown.target", "umount.target", "final.target", "poweroff.target", "reboot.target",
    "halt.target", "exit.target", "emergency.target", "emergency.service", "rescue.target",
    "rescue.service", "nss-user-lookup.target", "remote-fs.target", "remote-fs-pre.target",
    "time-set.target", "time-sync.target", "getty.target", "sound.target",
    "systemd-poweroff.service", "systemd-reboot.service", "systemd-halt.service",
    "systemd-exit.service", "user.slice",
    "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
    "systemd-journal-flush.service", "systemd-udevd.service", "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket", "systemd-udev-trigger.service", "systemd-logind.service",
    "user@.service", "user-runtime-dir@.service", "systemd-user-sessions.service",
    "dbus.service", "dbus.socket", "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
)
USER_UNITS = ("default.target", "basic.target", "sockets.target", "timers.target",
              "paths.target", "shutdown.target", "exit.target", "systemd-exit.service",
              "app.slice", "background.slice", "session.slice", "graphical-session.target",
              "graphical-session-pre.target", "dbus.socket", "dbus.service")
GENERATORS = ("systemd-fstab-generator",)


def store_hash(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return "".join(NIX32[b % 32] for b in digest[:32])


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


class Store:
    """The store under `root`: Debian packages relocated, with a map of host path -> store
    path for everything copied."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, str] = {}  # host file -> store file
        self.tops: dict[str, str] = {}  # Debian package -> store path
        self.owner: dict[str, str] = {}

    def path(self, name: str) -> str:
        return f"{STORE}/{store_hash(name)}-{name}"

    def add_text(self, name: str, rel: str, text: str, mode: int = 0o444) -> str:
        top = self.path(name)
        dest = self.root / top.lstrip("/") / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)
        return f"{top}/{rel}"

    def package(self, pkg: str) -> str:
        if pkg in self.tops:
            return self.tops[pkg]
        version = sh("dpkg-query", "-W", "-f", "${Version}", pkg).split(":")[-1].split("-")[0]
        top = self.path(f"{PACKAGES.get(pkg, pkg)}-{version}")
        self.tops[pkg] = top
        for f in sh("dpkg-query", "-L", pkg).splitlines():
            if not f.startswith("/") or f.startswith(SKIP) or os.path.isdir(f):
                continue
            if not os.path.lexists(f):
                continue
            rel = f[len("/usr/"):] if f.startswith("/usr/") else f[1:]
            rel = re.sub(r"^lib(64)?/x86_64-linux-gnu/", "lib/", rel)
            rel = re.sub(r"^lib64/", "lib/", rel)
            dest = self.root / top.lstrip("/") / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() and not dest.is_symlink():
                self.paths.setdefault(f, f"{top}/{rel}")
                continue  # a link and its target relocate to one name (/lib64 -> /lib)
            if os.path.islink(f):
                target = os.readlink(f)
                if target.startswith("/"):
                    target = os.path.realpath(f)
                    self.paths[f] = ""  # resolved once everything is copied
                    self._late_links.append((dest, target))
                else:
                    dest.unlink(missing_ok=True)
                    dest.symlink_to(target)
            else:
                dest.unlink(missing_ok=True)
                shutil.copyfile(f, dest)  # the store holds no setuid file (Nix refuses it)
                dest.chmod(os.stat(f).st_mode & 0o777)
            self.paths[f] = f"{top}/{rel}"
            self.paths.setdefault(os.path.realpath(f), f"{top}/{rel}")
        return top

    _late_links: list[tuple[Path, str]] = []

    def finish_links(self) -> None:
        for dest, target in self._late_links:
            store = self.paths.get(target)
            if store and Path(self.root, store.lstrip("/")) != dest:
                dest.unlink(missing_ok=True)
                dest.symlink_to(store)

    def find(self, host: str) -> str:
        """The store file of a host file (by its resolved path too)."""
        for p in (host, os.path.realpath(host)):
            if self.paths.get(p):
                return self.paths[p]
        raise SystemExit(f"nixos_system: {host} was not relocated (add its package)")


def is_elf(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"\x7fELF"


def rewrite_prefixes(p: Path) -> None:
    """Debian's /lib/systemd/ and /lib/udev/ -> /etc/systemd/ and /etc/udev/ (same length)."""
    data = p.read_bytes()
    # not /var/lib/systemd/ (linger, random seed, timers): state, not the package
    new = re.sub(rb"(?<!/var)/lib/(systemd|udev)/", rb"/etc/\1/", data)
    new = new.replace(b"/bin/mount\0", b"/etc/mount\0").replace(
        b"/bin/umount\0", b"/etc/umount\0")
    if new != data:
        mode = p.stat().st_mode
        p.chmod(0o755)
        p.write_bytes(new)
        p.chmod(mode)


def patch_elves(store: Store, glibc: str) -> None:
    """Every ELF of the store: interpreter and RUNPATH into the store."""
    interp = f"{glibc}/lib/ld-linux-x86-64.so.2"
    done: set[str] = set()
    while set(store.tops) - done:
        pkg = sorted(set(store.tops) - done)[0]
        done.add(pkg)
        patch_package(store, pkg, interp)


def patch_package(store: Store, pkg: str, interp: str) -> None:
    host_of = {v: k for k, v in store.paths.items() if v}
    top = store.tops[pkg]
    if True:
        for dirpath, _dirs, files in os.walk(store.root / top.lstrip("/")):
            for fn in files:
                p = Path(dirpath) / fn
                if p.is_symlink() or not is_elf(p):
                    continue
                if pkg in ("systemd", "udev", "libpam-systemd", "libsystemd-shared"):
                    rewrite_prefixes(p)
                if pkg == "libc6":  # glibc's own: only the interpreter
                    if has_interp(p) and not p.name.startswith("ld-linux"):
                        subprocess.run(["patchelf", "--set-interpreter", interp, str(p)],
                                       check=True)
                    continue
                host = host_of.get("/" + str(p.relative_to(store.root)))
                libs = ldd(host) if host else []
                dirs = []
                for lib in libs:
                    owner = owner_package(lib)
                    if owner not in store.tops:
                        store.package(owner)
                    d = os.path.dirname(store.find(lib))
                    if d not in dirs:
                        dirs.append(d)
                mode = p.stat().st_mode
                p.chmod(0o755)
                args = ["patchelf", "--set-rpath", ":".join(dirs)]
                if has_interp(p):
                    args += ["--set-interpreter", interp]
                subprocess.run([*args, str(p)], check=True)
                p.chmod(mode)


def has_interp(p: Path) -> bool:
    out = subprocess.run(["patchelf", "--print-interpreter", str(p)], capture_output=True,
                         text=True, check=False)
    return out.returncode == 0 and bool(out.stdout.strip())


def ldd(host: str) -> list[str]:
    out = subprocess.run(["ldd", host], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        m = re.match(r"\s*\S+ => (/\S+)", line)
        if m:
            libs.append(m[1])
    return libs


_OWNERS: dict[str, str] = {}


def owner_package(path: str) -> str:
    if path not in _OWNERS:
        for p in (path, os.path.realpath(path), path.replace("/lib/", "/usr/lib/", 1),
                  os.path.realpath(path).replace("/usr/lib/", "/lib/", 1)):
            out = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True,
                                 check=False)
            if out.returncode == 0:
                _OWNERS[path] = out.stdout.split(":")[0].split(",")[0].strip()
                break
        else:
            raise SystemExit(f"nixos_system: no package owns {path}")
    return _OWNERS[path]


# --- reading the modules ------------------------------------------------------------------

def module_links(modules: Path, store: Store) -> dict[str, str]:
    """`absolutePaths` of chromeos-guest.nix: path -> store file."""
    text = (modules / "chromeos-guest.nix").read_text()
    block = re.search(r"absolutePaths = \{(.*?)\n  \};", text, re.S)
    if not block:
        raise SystemExit("nixos_system: no absolutePaths in chromeos-guest.nix")
    pkgs = {"shadow": "passwd", "bashInteractive": "bash", "openssh": "openssh-sftp-server",
            "coreutils": "coreutils", "util-linux": "mount"}
    out = {}
    for path, pkg, rel in re.findall(r'"(/[^"]+)" = "\$\{pkgs\.([\w-]+)\}/([^"]+)";', block[1]):
        top = store.package(pkgs[pkg])
        cand = [rel, rel.replace("bin/", "sbin/", 1), rel.replace("libexec/", "lib/openssh/")]
        found = next((c for c in cand if (store.root / top.lstrip("/") / c).exists()), None)
        if found is None:
            raise SystemExit(f"nixos_system: {pkg} has no {rel}")
        out[path] = f"{top}/{found}"
    return out


def nix_list(text: str, key: str) -> list[str]:
    m = re.search(rf"\b{key} = \[([^\]]*)\]", text)
    return re.findall(r'"([^"]+)"', m[1]) if m else []


def tools_mount(modules: Path) -> tuple[str, str, list[str]]:
    """The tools mount as baguette.nix declares it: (fstab line or "", mount unit or "",
    the user@ drop-in's lines)."""
    text = (modules / "baguette.nix").read_text()
    unit, fstab = "", ""
    mounts = re.search(r"systemd\.mounts = \[\{(.*?)\}\];", text, re.S)
    if mounts and "where = tools;" in mounts[1]:
        body = mounts[1]
        opt = re.search(r'options = "([^"]*)";', body)
        typ = re.search(r'type = "([^"]*)";', body)
        what = re.search(r'what = "([^"]*)";', body)
        timeout = re.search(r'TimeoutSec = "([^"]*)";', body)
        lines = ["[Unit]"]
        if "DefaultDependencies = false" in body:
            lines.append("DefaultDependencies=no")
        for key, unit_key in (("before", "Before"), ("after", "After"),
                              ("conflicts", "Conflicts"), ("wants", "Wants"),
                              ("requires", "Requires")):
            vals = nix_list(body, key)
            if vals:
                lines.append(f"{unit_key}={' '.join(vals)}")
        lines += ["[Mount]", f"What={what[1] if what else ''}", f"Where={TOOLS}"]
        if typ:
            lines.append(f"Type={typ[1]}")
        if opt:
            lines.append(f"Options={opt[1]}")
        if timeout:
            lines.append(f"TimeoutSec={timeout[1]}")
        unit = "\n".join(lines) + "\n"
        wanted = nix_list(body, "wantedBy")
        unit += f"[Install]\nWantedBy={' '.join(wanted)}\n" if wanted else ""
    fs = re.search(r'fileSystems\.(?:"\$\{tools\}"|"/opt/google/cros-containers") = \{(.*?)\};',
                   text, re.S)
    if fs:
        dev = re.search(r'device = "([^"]+)";', fs[1])
        typ = re.search(r'fsType = "([^"]+)";', fs[1])
        fstab = (f"{dev[1] if dev else 'none'} {TOOLS} {typ[1] if typ else 'auto'} "
                 f"{','.join(nix_list(fs[1], 'options')) or 'defaults'} 0 0\n")
    if not unit and not fstab:
        raise SystemExit("nixos_system: baguette.nix declares no tools mount")
    dropin = []
    user = re.search(r'systemd\.services\."user@\$\{[^}]*\}" = \{(.*?)\};', text, re.S)
    if user:
        for key, unit_key in (("after", "After"), ("wants", "Wants"), ("requires", "Requires")):
            if re.search(rf"\b{key} = \[ toolsMount \]", user[1]):
                dropin.append(f"{unit_key}={TOOLS_MOUNT}")
    return fstab, unit, dropin


# --- the system -----------------------------------------------------------------------------

def upstream_unit(store: Store, path: str) -> str:
    text = Path(path).read_text()
    text = text.replace("/lib/systemd/system/", "/etc/systemd/system/")

    def program(m: re.Match[str]) -> str:
        prefix, prog = m[1], m[2]
        try:
            return prefix + store.find(prog)
        except SystemExit:
            return m[0]
    text = re.sub(r"^((?:Exec\w+|ExecStartPost)=[-@!+:]*)(/\S+)", program, text, flags=re.M)
    # bare program names (ExecStart=udevadm ...) resolve through the unit's PATH in systemd
    # 252 against its compiled-in directories, which NixOS has not: name the store program
    for name, pkg_path in (("udevadm", "/bin/udevadm"),
                           ("systemd-tmpfiles", "/bin/systemd-tmpfiles"),
                           ("journalctl", "/bin/journalctl")):
        text = re.sub(rf"^((?:Exec\w+)=[-@!+:]*){name}\b", lambda m, p=pkg_path:
                      m[1] + store.find(p), text, flags=re.M)
    return text


def main() -> None:
    out = Path(os.environ["out"])  # noqa: SIM112 (Nix names it)
    name = os.environ["name"]  # noqa: SIM112
    modules = Path(os.environ["modules"])  # noqa: SIM112
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "nixos-root"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = Store(work)
    for pkg in PACKAGES:
        store.package(pkg)
    links = module_links(modules, store)
    store.finish_links()
    glibc = store.tops["libc6"]
    patch_elves(store, glibc)
    store.finish_links()
    f = store.find
    bash = f("/bin/bash")
    systemd_bin = f("/lib/systemd/systemd")
    systemctl = f("/bin/systemctl")
    coreutils = os.path.dirname(f("/bin/cat"))
    path_of = lambda *pkgs: ":".join(  # noqa: E731  makeBinPath
        f"{store.tops[p]}/bin" for p in pkgs)
    default_path = path_of("coreutils", "findutils", "grep", "sed", "systemd")

    # /etc/systemd/system: upstream's units, then the modules'
    units: dict[str, str] = {}
    dropins: dict[str, str] = {}
    for u in SYSTEM_UNITS:
        units[u] = upstream_unit(store, f"/lib/systemd/system/{u}")
    wants: dict[str, list[str]] = {}
    for d in Path("/lib/systemd/system").glob("*.wants"):
        for w in d.iterdir():
            if w.name in units and d.name[:-6] in units:
                wants.setdefault(d.name, []).append(w.name)
    fstab_tools, mount_unit, user_dropin = tools_mount(modules)
    if mount_unit:
        units[TOOLS_MOUNT] = mount_unit
        wants.setdefault("local-fs.target.wants", []).append(TOOLS_MOUNT)
    units["dbus.service"] = units["dbus.service"].replace(
        "dbus-daemon --system ", "dbus-daemon --config-file=/etc/dbus-1/system.conf ")

    def service(desc: str, exec_start: str, *, after: str = "", requires: str = "",
                wants_: str = "", extra: str = "", path: str = default_path,
                wanted_by: str = "multi-user.target", service_extra: str = "") -> str:
        unit = f"[Unit]\nDescription={desc}\n"
        unit += f"After={after}\n" if after else ""
        unit += f"Requires={requires}\n" if requires else ""
        unit += f"Wants={wants_}\n" if wants_ else ""
        unit += extra
        unit += (f'[Service]\nEnvironment="LOCALE_ARCHIVE=" "PATH={path}"\n'
                 f"ExecStart={exec_start}\n{service_extra}")
        if wanted_by:
            wants.setdefault(f"{wanted_by}.wants", []).append("")
        return unit

    def daemon(unit_name: str, desc: str, cmd: str, path: str = default_path) -> None:
        units[unit_name] = service(desc, f"{TOOLS}/bin/{cmd}", after=TOOLS_MOUNT,
                                   requires=TOOLS_MOUNT, path=path,
                                   service_extra="Restart=always\nRestartSec=1\n")
        wants.setdefault("multi-user.target.wants", []).append(unit_name)
    daemon("vshd.service", "ChromeOS vsh daemon", "vshd")
    maitred_path = (f"{TOOLS}/bin:/usr/sbin:/usr/bin:/sbin:/bin:"
                    + path_of("btrfs-progs", "mount", "passwd", "coreutils"))
    daemon("maitred.service", "ChromeOS maitred", "maitred", maitred_path)
    daemon("cros-port-listener.service", "ChromeOS port listener", "port_listener")
    units["baguette-resize.service"] = service(
        "Grow the root btrfs to the disk ChromeOS gave the VM",
        f"{store.tops['btrfs-progs']}/bin/btrfs filesystem resize max /",
        service_extra="Type=oneshot\n")
    wants.setdefault("multi-user.target.wants", []).append("baguette-resize.service")
    if re.search(r"\blinger = true;", (modules / "chromeos-guest.nix").read_text()):
        # users.users.<name>.linger = true (nixos/modules/config/users-groups.nix)
        loginctl = f("/bin/loginctl")
        units["linger-users.service"] = service(
            "Configure lingering for declared users", f"{loginctl} enable-linger user",
            after="systemd-logind.service", requires="systemd-logind.service",
            service_extra="Type=oneshot\nRemainAfterExit=yes\n")
        wants.setdefault("multi-user.target.wants", []).append("linger-users.service")
    for k in list(wants):
        wants[k] = [w for w in wants[k] if w]
    if user_dropin:
        dropins["user@1000.service.d/overrides.conf"] = "[Unit]\n" + "\n".join(user_dropin) + "\n"

    # /etc/systemd/user: upstream's (dbus-user-session's) and the modules'
    uunits = {}
    for u in USER_UNITS:
        src = Path("/usr/lib/systemd/user") / u
        uunits[u] = upstream_unit(store, str(src))
    uunits["dbus.service"] = uunits["dbus.service"].replace(
        "dbus-daemon --session ", "dbus-daemon --config-file=/etc/dbus-1/session.conf ")
    user_path = default_path
    tools_cond = lambda b: f"ConditionPathExists={TOOLS}/bin/{b}\n"  # noqa: E731
    x_ready = store.add_text("sommelier-x-ready", "bin/sommelier-x-ready", (
        f"#!{bash}\nset -e\nsystemctl --user import-environment DISPLAY XCURSOR_SIZE\n"
        f'{coreutils}/touch "$HOME/.Xauthority"\n'
        f'{store.tops["xauth"]}/bin/xauth -f "$HOME/.Xauthority" add "$DISPLAY" . '
        f'"$({store.tops["util-linux"]}/bin/mcookie)"\n'), 0o555)
    xwayland = store.add_text("xwayland-stand-in", "bin/Xwayland",
                              "#!/bin/sh\n# sommelier's stand-in starts no X server\nexit 1\n",
                              0o555)
    guest_nix = (modules / "chromeos-guest.nix").read_text()
    notify_access = ("NotifyAccess=all\n" if 'NotifyAccess = "all";' in guest_nix else "")
    uunits["sommelier@.service"] = (
        "[Unit]\nDescription=Wayland forwarding to ChromeOS (sommelier, socket wayland-%i)\n"
        + tools_cond("sommelier") + f'[Service]\nEnvironment="PATH={user_path}"\n'
        f"ExecStart={TOOLS}/bin/sommelier --parent --sd-notify=READY=1 --socket=wayland-%i "
        f"--stable-scaling {bash} -c 'systemctl --user import-environment WAYLAND_DISPLAY'\n"
        "Restart=always\nType=notify\n" + notify_access)
    uunits["sommelier-x@.service"] = (
        "[Unit]\nDescription=X forwarding to ChromeOS (sommelier -X, display :%i)\n"
        + tools_cond("sommelier")
        + f'[Service]\nEnvironment="PATH={os.path.dirname(xwayland)}:{user_path}"\n'
        f"ExecStart={TOOLS}/bin/sommelier -X --x-display=%i --sd-notify=READY=1 "
        f"--no-exit-with-child --x-auth=%h/.Xauthority --stable-scaling "
        f"--xwayland-path={xwayland} {x_ready}\nRestart=always\nType=notify\n" + notify_access)
    browser = ""
    if 'BROWSER = "${urlHandler}";' in guest_nix:
        browser = store.add_text("garcon-url-handler", "garcon-url-handler",
                                 f'#!{bash}\nexec {TOOLS}/bin/garcon --client --url "$@"\n', 0o555)
    uunits["cros-garcon.service"] = (
        "[Unit]\nAfter=sommelier@0.service sommelier-x@0.service\n"
        "Description=ChromeOS app and file bridge (garcon)\n" + tools_cond("garcon")
        + f'[Service]\nEnvironment="PATH={user_path}" "XDG_CURRENT_DESKTOP=X-Generic" '
        '"XDG_SESSION_TYPE=wayland"' + (f' "BROWSER={browser}"' if browser else "") + "\n"
        f"ExecStart={TOOLS}/bin/garcon --server\nRestart=always\n")
    uunits["cros-notificationd.service"] = (
        "[Unit]\nDescription=ChromeOS notification server\n" + tools_cond("notificationd")
        + f'[Service]\nEnvironment="PATH={user_path}"\nBusName=org.freedesktop.Notifications\n'
        f"ExecStart={TOOLS}/bin/notificationd --virtwl_device=/dev/wl0\nRestart=always\n"
        "Type=dbus\n")
    uwants = {"default.target.wants": ["cros-garcon.service", "sommelier@0.service",
                                       "sommelier-x@0.service"],
              "sockets.target.wants": ["dbus.socket"]}

    def unit_dir(tag: str, units_: dict[str, str], wants_: dict[str, list[str]],
                 dropins_: dict[str, str], default: str) -> str:
        top = store.path(tag)
        root = work / top.lstrip("/")
        root.mkdir(parents=True)
        for n, text in units_.items():
            (root / n).write_text(text)
        if default:
            (root / "default.target").unlink(missing_ok=True)
            (root / "default.target").symlink_to(default)
        for d, ws in wants_.items():
            (root / d).mkdir(exist_ok=True)
            for w in ws:
                target = w.replace("@0.", "@.") if "@0." in w else w
                (root / d / w).symlink_to(f"../{target}")
        for n, text in dropins_.items():
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_text(text)
        return top
    system_units = unit_dir("system-units", units, wants, dropins, "multi-user.target")
    user_units = unit_dir("user-units", uunits, uwants, {}, "")
    generators = store.path("system-generators")
    (work / generators.lstrip("/")).mkdir(parents=True)
    for g in GENERATORS:
        (work / generators.lstrip("/") / g).symlink_to(f(f"/lib/systemd/system-generators/{g}"))
    rules = store.path("udev-rules")
    (work / rules.lstrip("/")).mkdir(parents=True)
    for r in Path("/lib/udev/rules.d").glob("*.rules"):
        if r.name.startswith(("50-", "60-persistent-storage", "99-systemd", "75-net",
                              "80-net", "73-", "71-")):
            text = re.sub(r"/(?:usr/)?lib/systemd/[\w.-]+", lambda m: f(m[0]), r.read_text())
            text = text.replace("/lib/udev/", "/etc/udev/")
            (work / rules.lstrip("/") / r.name).write_text(text)
    (work / rules.lstrip("/") / "99-local.rules").write_text('KERNEL=="wl*", MODE="0666"\n')

    # /etc
    etc = store.path("etc") + "/etc"
    e = work / etc.lstrip("/")
    e.mkdir(parents=True)

    def put(rel: str, text: str = "", link: str = "", mode: int = 0o444) -> None:
        p = e / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if link:
            p.symlink_to(link)
        else:
            p.write_text(text)
            p.chmod(mode)
    put("systemd/system", link=system_units)
    put("systemd/user", link=user_units)
    put("systemd/system-generators", link=generators)
    put("systemd/systemd-shutdown", link=f("/lib/systemd/systemd-shutdown"))
    put("mount", link=f("/bin/mount"))
    put("umount", link=f("/bin/umount"))
    put("systemd/journald.conf.d/50-console.conf", "[Journal]\nForwardToConsole=yes\n")
    put("udev/rules.d", link=rules)
    put("os-release", 'NAME=NixOS\nID=nixos\nVERSION_ID="26.05"\nPRETTY_NAME="NixOS stand-in"\n')
    put("fstab", "/dev/vdb / btrfs defaults 0 0\n" + fstab_tools)
    put("hosts", "127.0.0.1 localhost\n::1 localhost\n100.115.92.2 arc\n")
    put("resolv.conf", link="/run/resolv.conf")
    put("nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")
    put("login.defs", "MAIL_DIR /var/empty\nUID_MIN 1000\nGID_MIN 1000\nENCRYPT_METHOD SHA512\n")
    put("profile", "export PATH=/run/wrappers/bin:/run/current-system/sw/bin\n"
        "export WAYLAND_DISPLAY=wayland-0 DISPLAY=:0 XDG_SESSION_TYPE=wayland\n"
        + (f"export BROWSER={browser}\n" if browser else ""))
    put("bashrc", "")
    put("tmpfiles.d/00-nixos.conf", "d /mnt/shared 0755 root root -\n"
        "d /mnt/stateful 0755 root root -\nd /var/lib/systemd 0755 root root -\n")
    conf = Path("/usr/share/dbus-1/system.conf").read_text()
    conf = re.sub(r"<servicehelper>.*?</servicehelper>", "", conf)
    conf = conf.replace("<standard_system_servicedirs/>", "").replace("<fork/>", "")
    conf = conf.replace('<include ignore_missing="yes">/etc/dbus-1/system.conf</include>', "")
    put("dbus-1/system.conf", conf)
    for pol in Path("/usr/share/dbus-1/system.d").glob("org.freedesktop.login1.conf"):
        put(f"dbus-1/system.d/{pol.name}", pol.read_text())
    put("dbus-1/system.d/org.freedesktop.systemd1.conf",
        Path("/usr/share/dbus-1/system.d/org.freedesktop.systemd1.conf").read_text())
    sess = Path("/usr/share/dbus-1/session.conf").read_text()
    sess = sess.replace('<include ignore_missing="yes">/etc/dbus-1/session.conf</include>', "")
    sess = sess.replace("<standard_session_servicedirs />",
                        "<servicedir>/run/current-system/sw/share/dbus-1/services</servicedir>")
    sess = re.sub(r"<servicehelper>.*?</servicehelper>", "", sess)
    put("dbus-1/session.conf", sess)
    notif = store.add_text(
        "cros-notificationd-dbus", "share/dbus-1/services/org.freedesktop.Notifications.service",
        "[D-BUS Service]\nName=org.freedesktop.Notifications\nExec=/bin/false\n"
        "SystemdService=cros-notificationd.service\n")
    pam = {n: f(f"/lib/x86_64-linux-gnu/security/{n}.so") for n in
           ("pam_unix", "pam_permit", "pam_rootok", "pam_deny", "pam_env", "pam_loginuid")}
    pam["pam_systemd"] = f("/lib/x86_64-linux-gnu/security/pam_systemd.so")
    put("pam.d/other", f"auth required {pam['pam_deny']}\naccount required {pam['pam_deny']}\n"
        f"password required {pam['pam_deny']}\nsession required {pam['pam_deny']}\n")
    put("pam.d/systemd-user", f"account required {pam['pam_unix']}\n"
        f"auth sufficient {pam['pam_unix']} likeauth try_first_pass\n"
        f"auth required {pam['pam_deny']}\npassword required {pam['pam_deny']}\n"
        f"session optional {pam['pam_loginuid']}\nsession required {pam['pam_env']} "
        "conffile=/etc/pam/environment readenv=0\n"
        f"session required {pam['pam_unix']}\nsession optional {pam['pam_systemd']}\n")
    put("pam/environment", "WAYLAND_DISPLAY DEFAULT=wayland-0\nDISPLAY DEFAULT=:0\n"
        "XDG_SESSION_TYPE DEFAULT=wayland\n")
    put("pam.d/sudo", f"account required {pam['pam_unix']}\nauth sufficient {pam['pam_rootok']}"
        f"\nauth required {pam['pam_unix']}\npassword required {pam['pam_unix']}\n"
        f"session required {pam['pam_env']} conffile=/etc/pam/environment readenv=0\n"
        f"session required {pam['pam_unix']}\n")
    for svc in ("useradd", "usermod"):
        put(f"pam.d/{svc}", f"auth sufficient {pam['pam_rootok']}\n"
            f"auth required {pam['pam_deny']}\naccount required {pam['pam_permit']}\n"
            f"password required {pam['pam_permit']}\nsession required {pam['pam_permit']}\n")
    sudo_top = store.tops["sudo"]
    sudoers_so = next(v for k, v in store.paths.items() if v and k.endswith("/sudoers.so"))
    put("sudo.conf", f"Plugin sudoers_policy {sudoers_so}\nPlugin sudoers_io {sudoers_so}\n"
        f"Plugin sudoers_audit {sudoers_so}\n")
    put("sudoers", "root ALL=(ALL:ALL) SETENV: ALL\n%wheel ALL=(ALL:ALL) NOPASSWD: SETENV: ALL\n"
        "%sudo ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)

    # system-path: what environment.systemPackages (and the defaults) put on PATH
    sw = store.path("system-path")
    swd = work / sw.lstrip("/")
    for sub in ("bin", "share/dbus-1/services"):
        (swd / sub).mkdir(parents=True)
    for pkg in ("coreutils", "bash", "grep", "sed", "findutils", "mount", "util-linux",
                "systemd", "udev", "dbus-bin", "passwd", "btrfs-progs", "sudo", "xauth"):
        for sub in ("bin", "sbin"):
            d = work / store.tops[pkg].lstrip("/") / sub
            if d.is_dir():
                for prog in d.iterdir():
                    if not (swd / "bin" / prog.name).exists():
                        (swd / "bin" / prog.name).symlink_to(f"{store.tops[pkg]}/{sub}/{prog.name}")
    (swd / "share/dbus-1/services/org.freedesktop.Notifications.service").symlink_to(notif)

    system = store.path("nixos-system-testhost-baguette-26.05")
    sysd = work / system.lstrip("/")
    sysd.mkdir(parents=True)
    (sysd / "sw").symlink_to(sw)
    (sysd / "etc").symlink_to(etc)
    (sysd / "systemd").symlink_to(store.tops["systemd"])
    cu = coreutils
    link_lines = "".join(f"{cu}/mkdir -p {os.path.dirname(p)}\n{cu}/ln -sfn {t} {p}\n"
                         for p, t in links.items())
    groups = ["root:x:0:", "wheel:x:1:", "messagebus:x:4:", "disk:x:6:", "audio:x:17:",
              "floppy:x:18:", "cdrom:x:24:", "video:x:26:", "dialout:x:27:", "users:x:100:",
              "tss:x:176:", "kvm:x:302:", "shadow:x:318:", "systemd-journal:x:62:",
              "netdev:x:997:", "plugdev:x:998:", "sudo:x:999:", "nogroup:x:65534:"]
    groups = [g + ("user" if g.split(":")[0] in VMC_GROUPS else "") for g in groups]
    activate = f"""#!{bash}
# NixOS's activation script, what of it ChromeOS relies on
systemConfig={system}
export PATH={cu}:{os.path.dirname(f('/bin/grep'))}
mkdir -p /etc /run /tmp /var/lib /var/log /root /home /bin /usr/bin /run/wrappers
ln -sfn /run /var/run
chmod 1777 /tmp
# etc (setup-etc.pl)
ln -sfn $systemConfig/etc /etc/static
for f in $(ls /etc/static); do
  if [ "$f" = sudoers ]; then cp /etc/static/sudoers /etc/sudoers; chmod 0440 /etc/sudoers
  else ln -sfn /etc/static/$f /etc/$f; fi
done
: >> /etc/NIXOS
[ -s /etc/machine-id ] || tr -d - < /proc/sys/kernel/random/uuid > /etc/machine-id
# users and groups (update-users-groups.pl; mutable users are kept)
if [ ! -e /etc/passwd ]; then
  printf '%s\\n' "root:x:0:0:System administrator:/root:/run/current-system/sw/bin/bash" \\
    "messagebus:x:4:4:D-Bus daemon:/run/dbus:/run/current-system/sw/bin/nologin" \\
    "user:x:1000:100::/home/user:/run/current-system/sw/bin/bash" \\
    "nobody:x:65534:65534:Unprivileged account:/var/empty:/run/current-system/sw/bin/nologin" \\
    > /etc/passwd
  printf '%s\\n' root:!:1:::::: messagebus:!:1:::::: user:!:1:::::: nobody:!:1:::::: > /etc/shadow
  printf '%s\\n' {' '.join(groups)} > /etc/group
  chgrp shadow /etc/shadow; chmod 0640 /etc/shadow
  mkdir -p /home/user; chown 1000:100 /home/user; chmod 0700 /home/user
fi
[ -e /etc/gshadow ] || {{ : > /etc/gshadow; chgrp shadow /etc/gshadow; chmod 0640 /etc/gshadow; }}
mkdir -p /etc/skel
# binsh, usrbinenv
ln -sfn {bash} /bin/sh
ln -sfn {cu}/env /usr/bin/env
# chromeos-absolute-paths (nix/modules/chromeos-guest.nix)
{link_lines}# wrappers (security.wrappers): setuid copies on their own tmpfs (/run is nosuid)
{f('/bin/mountpoint')} -q /run/wrappers ||
  {f('/bin/mount')} -t tmpfs -o nodev,mode=755 tmpfs /run/wrappers
mkdir -p /run/wrappers/bin
cp {sudo_top}/bin/sudo /run/wrappers/bin/sudo
chown root:root /run/wrappers/bin/sudo; chmod 4511 /run/wrappers/bin/sudo
ln -sfn $systemConfig /run/current-system
"""
    init = f"""#!{bash}
# NixOS's stage-2 init: the special filesystems, the activation, systemd
export PATH={cu}:{os.path.dirname(f('/bin/mount'))}
mountpoint() {{ {f('/bin/mountpoint')} -q "$1"; }}
mountpoint /proc || mount -t proc proc /proc
mountpoint /sys || mount -t sysfs sysfs /sys
mountpoint /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint /dev/pts || mount -t devpts -o gid=3,mode=620 devpts /dev/pts
mountpoint /dev/shm || mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mountpoint /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
{system}/activate
ln -sfn {system} /run/booted-system
exec {systemd_bin}
"""
    for n, text in (("activate", activate), ("init", init)):
        (sysd / n).write_text(text)
        (sysd / n).chmod(0o555)
    _ = systemctl

    # make-system-tarball
    (work / "sbin").mkdir()
    shutil.copyfile(sysd / "init", work / "sbin/init")
    (work / "sbin/init").chmod(0o555)
    (work / "etc").mkdir()
    (work / "etc/os-release").symlink_to(f"{etc}/os-release")
    paths = sorted("/nix/store/" + p.name for p in (work / "nix/store").iterdir())
    (work / "nix-path-registration").write_text("".join(p + "\n" for p in paths))
    for d in ("proc", "sys", "dev", "boot", "run", "tmp", "mnt/shared", "mnt/stateful"):
        (work / d).mkdir(parents=True, exist_ok=True)
    check_layout(work)
    (out / "tarball").mkdir(parents=True)
    (out / "nix-support").mkdir()
    dest = out / "tarball" / name
    with tarfile.open(dest, "w:xz", preset=1) as tf:
        for p in sorted(work.rglob("*")):
            ti = tf.gettarinfo(str(p), "./" + str(p.relative_to(work)))
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mtime = 1
            if ti.name.startswith("./nix/store/"):
                ti.mode &= 0o777  # the store holds no setuid file: wrappers do that
            if p.is_file() and not p.is_symlink():
                with open(p, "rb") as fh:
                    tf.addfile(ti, fh)
            else:
                tf.addfile(ti)
    (out / "nix-support/hydra-build-products").write_text(f"file system-tarball {dest}\n")


def check_layout(root: Path) -> None:
    """Nothing of the system outside the store but what NixOS has there."""
    for top in ("lib", "lib64", "usr", "bin"):
        if (root / top).exists():
            raise SystemExit(f"nixos_system: /{top} in the tarball")
    for p in (root / "nix/store").rglob("*"):
        if p.is_file() and not p.is_symlink() and is_elf(p) and has_interp(p):
            interp = subprocess.run(["patchelf", "--print-interpreter", str(p)],
                                    capture_output=True, text=True, check=True).stdout.strip()
            if not interp.startswith(STORE):
                raise SystemExit(f"nixos_system: {p} runs {interp}")


if __name__ == "__main__":
    sys.exit(main())
