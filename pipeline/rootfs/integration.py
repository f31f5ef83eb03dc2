"""ChromeOS guest integration for non-Nix images: files the customize stage writes.

ChromeOS brings the guest tools (vshd, maitred, port_listener, notificationd, garcon,
sommelier) on its tools disk, an ext4 labelled `cros-vm-tools`; the image only needs the units
that start them, so nothing comes from Google's package repository. Two guest kinds, two sets
of files (all of it switched off by `chromeos_integration = false`):

Both kinds (Baguette VM and Crostini container):
- garcon (app launching, the Files app through /usr/lib/openssh/sftp-server, URLs through
  BROWSER=garcon-url-handler) and sommelier (Wayland `sommelier@0`, X `sommelier-x@0` with an
  X cookie) as user services of every user, started with the user's session; notificationd as
  a D-Bus-activated user service. garcon and sommelier run only as uid 1000 on ChromeOS, and
  `vmc start` waits for garcon before it sets up the user, so the image's uid-1000 user lingers
  (its session starts at boot, not at a login);
- a udev rule giving /dev/wl* mode 0666 (sommelier's Wayland forwarding), the groups vmc asks
  maitred to put the user in (maitred refuses the whole request when one is missing), a
  profile script with the session environment, passwordless sudo for the `sudo` group (the
  user has no password), /mnt/shared.

Baguette only (the VM boots the image's own init with the tools disk as /dev/vda):
- the read-only mount of the tools disk at /opt/google/cros-containers, ordered before
  local-fs.target and before every user's session, so a user unit never looks for its binary
  before the disk is there;
- vshd, maitred (PATH with the tools first, /usr/sbin for btrfs; it calls /usr/sbin/useradd and
  /usr/sbin/usermod by absolute path) and port_listener as system services;
- `btrfs filesystem resize max /` at boot (ChromeOS grows the disk, not the filesystem),
  journald forwarding to the console, /etc/resolv.conf -> /run/resolv.conf (maitred writes it),
  `100.115.92.2 arc` in /etc/hosts, /mnt/chromeos with the fonts mount point and
  `shared -> /mnt/shared`, as ChromeOS's own Baguette image has them.

In a Crostini container the tools directory is bind-mounted by the termina VM and the container
has no maitred or vshd of its own: none of the VM units is there. Its address and DNS come from
LXD's DHCP on eth0 (`iface eth0 inet dhcp` for ifupdown, as in ChromeOS's own container image;
garcon is reached on that address).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

VERSION = 4  # bump when the files below change: it is part of the rootfs stage's key
TOOLS = "/opt/google/cros-containers"
MOUNT_UNIT = r"opt-google-cros\x2dcontainers.mount"
GROUPS = ("audio", "cdrom", "dialout", "disk", "floppy", "kvm", "netdev", "plugdev", "sudo",
          "tss", "video")  # vmc's default groups for the ChromeOS user
CHROMEOS_UID = 1000  # garcon refuses any other uid
ARC_HOSTS = "100.115.92.2\tarc"


class Kind(Enum):
    VM = "baguette"
    CONTAINER = "crostini"


@dataclass(frozen=True)
class File:
    path: str  # inside the rootfs, no leading slash
    text: str = ""
    mode: int = 0o644
    link: str = ""  # a symlink when set
    directory: bool = False


_AFTER_TOOLS = f"After={MOUNT_UNIT}\nRequires={MOUNT_UNIT}\n"


def _service(description: str, exec_start: str, extra: str = "") -> str:
    return (f"[Unit]\nDescription={description}\n{_AFTER_TOOLS}\n"
            f"[Service]\nExecStart={TOOLS}/bin/{exec_start}\n{extra}"
            "Restart=always\nRestartSec=1\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


VM_UNITS = {
    MOUNT_UNIT: (
        "[Unit]\nDescription=ChromeOS guest tools\nDefaultDependencies=no\n"
        "Before=local-fs.target umount.target\nConflicts=umount.target\n\n"
        f"[Mount]\nWhat=LABEL=cros-vm-tools\nWhere={TOOLS}\nType=ext4\nOptions=ro\n"
        "TimeoutSec=10\n\n[Install]\nWantedBy=local-fs.target\n"),
    "vshd.service": _service("ChromeOS vsh daemon", "vshd"),
    "maitred.service": _service(
        "ChromeOS maitred", "maitred",
        f"Environment=PATH={TOOLS}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
        "/sbin:/bin\n"),
    "cros-port-listener.service": _service("ChromeOS port listener", "port_listener"),
    "baguette-resize.service": (
        "[Unit]\nDescription=Grow the root btrfs to the disk ChromeOS gave the VM\n"
        "ConditionPathExists=/usr/bin/btrfs\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/bin/btrfs filesystem resize max /\n\n"
        "[Install]\nWantedBy=multi-user.target\n"),
}
WANTED_BY = {MOUNT_UNIT: "local-fs.target"}
# every user's manager waits for the tools disk: its units' binaries live there
USER_MANAGER_DROPIN = f"[Unit]\nWants={MOUNT_UNIT}\nAfter={MOUNT_UNIT}\n"

NOTIFICATIOND = (
    "[Unit]\nDescription=ChromeOS notification server\n"
    f"ConditionPathExists={TOOLS}/bin/notificationd\n\n"
    "[Service]\nType=dbus\nBusName=org.freedesktop.Notifications\n"
    f"ExecStart={TOOLS}/bin/notificationd --virtwl_device=/dev/wl0\n"
    "Restart=always\nRestartSec=1\n")
NOTIFICATIONS_DBUS = ("[D-BUS Service]\nName=org.freedesktop.Notifications\nExec=/bin/false\n"
                      "SystemdService=cros-notificationd.service\n")


def _sommelier(description: str, command: str, extra: str = "") -> str:
    # sommelier reports readiness (--sd-notify) once it listens and has run the given
    # command, which hands its display to the user manager's environment; garcon starts
    # after that and inherits it. NotifyAccess=all also admits a helper's report.
    return (f"[Unit]\nDescription={description}\n"
            f"ConditionPathExists={TOOLS}/bin/sommelier\n\n"
            f"[Service]\nType=notify\nNotifyAccess=all\n{extra}"
            f"ExecStart={TOOLS}/bin/{command}\n"
            "Restart=always\nRestartSec=1\n\n[Install]\nWantedBy=default.target\n")


XAUTH_COOKIE = ("touch %h/.Xauthority && xauth -f %h/.Xauthority add :%i . "
                "$(xxd -l 16 -p /dev/urandom)")
USER_UNITS = {
    "sommelier@.service": _sommelier(
        "Wayland forwarding to ChromeOS (sommelier, socket wayland-%i)",
        "sommelier --parent --sd-notify=READY=1 --socket=wayland-%i --stable-scaling "
        "/bin/sh -c 'systemctl --user import-environment WAYLAND_DISPLAY'"),
    "sommelier-x@.service": _sommelier(
        "X forwarding to ChromeOS (sommelier -X, display :%i)",
        "sommelier -X --x-display=%i --sd-notify=READY=1 --no-exit-with-child "
        "--x-auth=%h/.Xauthority --stable-scaling "
        f"/bin/sh -c '{XAUTH_COOKIE}; "
        "systemctl --user import-environment DISPLAY XCURSOR_SIZE'"),
    "cros-garcon.service": (
        "[Unit]\nDescription=ChromeOS app and file bridge (garcon)\n"
        f"ConditionPathExists={TOOLS}/bin/garcon\n"
        "After=sommelier@0.service sommelier-x@0.service\n\n"
        f"[Service]\nExecStart={TOOLS}/bin/garcon --server\n"
        "Environment=BROWSER=/usr/bin/garcon-url-handler XDG_CURRENT_DESKTOP=X-Generic "
        "XDG_SESSION_TYPE=wayland\n"
        "Restart=always\nRestartSec=1\n\n[Install]\nWantedBy=default.target\n"),
    "cros-notificationd.service": NOTIFICATIOND,
}
USER_ENABLED = {"sommelier@0.service": "sommelier@.service",
                "sommelier-x@0.service": "sommelier-x@.service",
                "cros-garcon.service": "cros-garcon.service"}

URL_HANDLER = f'#!/bin/sh\nexec {TOOLS}/bin/garcon --client --url "$@"\n'

PROFILE = """# The session environment ChromeOS's guest tools expect.
uid=$(id -u)
[ -n "$XDG_RUNTIME_DIR" ] || export XDG_RUNTIME_DIR="/run/user/$uid"
[ -n "$DBUS_SESSION_BUS_ADDRESS" ] ||
    export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
[ -n "$XDG_SESSION_TYPE" ] || export XDG_SESSION_TYPE=wayland
[ -n "$WAYLAND_DISPLAY" ] || export WAYLAND_DISPLAY=wayland-0
[ -n "$DISPLAY" ] || export DISPLAY=:0
[ -n "$BROWSER" ] || export BROWSER=/usr/bin/garcon-url-handler
[ -n "$USER" ] || export USER="$(id -un)"
unset uid
"""


def _common() -> list[File]:
    out = [File(TOOLS.lstrip("/"), directory=True, mode=0o755)]
    for name, text in USER_UNITS.items():
        out.append(File(f"etc/systemd/user/{name}", text))
    for name, unit in USER_ENABLED.items():
        out.append(File(f"etc/systemd/user/default.target.wants/{name}",
                        link=f"/etc/systemd/user/{unit}"))
    return out + [
        File("usr/bin/garcon-url-handler", URL_HANDLER, mode=0o755),
        File("etc/profile.d/10-cros-guest-env.sh", PROFILE),
        File("etc/sudoers.d/10-cros-nopasswd", "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n",
             mode=0o440),
        File("mnt/shared", directory=True, mode=0o755),
        File("usr/share/dbus-1/services/org.freedesktop.Notifications.service",
             NOTIFICATIONS_DBUS),
        File("etc/udev/rules.d/10-cros-virtwl.rules", 'KERNEL=="wl*", MODE="0666"\n'),
    ]


def _vm() -> list[File]:
    out = []
    for name, text in VM_UNITS.items():
        out.append(File(f"etc/systemd/system/{name}", text))
        target = WANTED_BY.get(name, "multi-user.target")
        out.append(File(f"etc/systemd/system/{target}.wants/{name}",
                        link=f"/etc/systemd/system/{name}"))
    return out + [
        File("etc/systemd/system/user@.service.d/10-cros-tools.conf", USER_MANAGER_DROPIN),
        File("etc/systemd/journald.conf.d/50-console.conf", "[Journal]\nForwardToConsole=yes\n"),
        File("etc/resolv.conf", link="../run/resolv.conf"),
        File("mnt/chromeos", directory=True, mode=0o755),
        File("mnt/chromeos/fonts", directory=True, mode=0o755),
        File("mnt/chromeos/shared", link="/mnt/shared"),
        File("mnt/stateful", directory=True, mode=0o755),
    ]


def _container() -> list[File]:
    return [File("etc/network/interfaces.d/eth0", "auto eth0\niface eth0 inet dhcp\n")]


def files(kind: Kind) -> list[File]:
    """The integration files of one guest kind."""
    return _common() + (_vm() if kind is Kind.VM else _container())


def vm_only_paths() -> set[str]:
    """Paths written for the VM only (a container rootfs must hold none of them)."""
    return {f.path for f in _vm()} - {f.path for f in _common()}


def hosts_lines(kind: Kind) -> list[str]:
    """Lines /etc/hosts gets for this kind (a container's /etc/hosts comes from LXD's
    template)."""
    return [ARC_HOSTS] if kind is Kind.VM else []


def add_groups(group: str, gshadow: str | None) -> tuple[str, str | None]:
    """/etc/group (and gshadow) with every group maitred may ask for; system gids from 900
    down, skipping those in use."""
    lines = group.splitlines()
    names = {ln.split(":")[0] for ln in lines if ":" in ln}
    used = {int(f[2]) for f in (ln.split(":") for ln in lines) if len(f) > 2 and f[2].isdigit()}
    gid = 900
    new_g, new_s = [], []
    for name in GROUPS:
        if name in names:
            continue
        while gid in used:
            gid -= 1
        used.add(gid)
        new_g.append(f"{name}:x:{gid}:")
        new_s.append(f"{name}:!::")
    group_out = "".join(ln + "\n" for ln in lines + new_g)
    shadow_out = None if gshadow is None else "".join(
        ln + "\n" for ln in gshadow.splitlines() + new_s)
    return group_out, shadow_out


def add_members(group: str, user: str, names: tuple[str, ...] = GROUPS) -> str:
    """/etc/group with `user` a member of each of `names` (those that exist)."""
    out = []
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) == 4 and fields[0] in names:
            members = [m for m in fields[3].split(",") if m]
            if user not in members:
                fields[3] = ",".join([*members, user])
            line = ":".join(fields)
        out.append(line)
    return "".join(ln + "\n" for ln in out)
