"""ChromeOS guest integration for non-Nix images: files the customize stage writes.

ChromeOS brings the guest tools (vshd, maitred, port_listener, notificationd, garcon,
sommelier) on its tools disk, an ext4 labelled `cros-vm-tools` that the guest mounts read-only
at /opt/google/cros-containers; the image only needs the units that start them, so nothing
comes from Google's package repository. What is written (all of it switched off by
`chromeos_integration = false`):

- the tools mount, and vshd, maitred (with a PATH that finds /usr/sbin/usermod) and
  port_listener as system services;
- garcon (app launching, file sharing) and sommelier (Wayland, and X through Xwayland) as
  user services, enabled for every user; notificationd as a user service (D-Bus activated);
  all of them wait for the tools disk (ConditionPathExists), so an image started elsewhere
  (a plain LXD, a test VM) boots without failed units;
- a udev rule giving /dev/wl* mode 0666 (Wayland forwarding), journald forwarding to the
  console, a boot-time `btrfs filesystem resize max /` (ChromeOS grows the disk, not the
  filesystem), the groups maitred may add the user to, a profile script with the session
  environment (D-Bus, XDG runtime dir, Wayland/X displays), passwordless sudo for the `sudo`
  group (the user has no password), and /mnt/shared and /mnt/stateful (ChromeOS mounts
  there).
/etc/resolv.conf -> /run/resolv.conf is the customize stage's in every image.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = 2  # bump when the files below change: it is part of the rootfs stage's key
TOOLS = "/opt/google/cros-containers"
MOUNT_UNIT = r"opt-google-cros\x2dcontainers.mount"
GROUPS = ("audio", "cdrom", "dialout", "disk", "floppy", "kvm", "netdev", "plugdev", "sudo",
          "tss", "video")

_AFTER_TOOLS = f"After={MOUNT_UNIT}\nRequires={MOUNT_UNIT}\n"


@dataclass(frozen=True)
class File:
    path: str  # inside the rootfs, no leading slash
    text: str = ""
    mode: int = 0o644
    link: str = ""  # a symlink when set
    directory: bool = False


def _service(description: str, exec_start: str, extra: str = "") -> str:
    return (f"[Unit]\nDescription={description}\n{_AFTER_TOOLS}\n"
            f"[Service]\nExecStart={TOOLS}/bin/{exec_start}\n{extra}"
            "Restart=always\nRestartSec=1\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


SYSTEM_UNITS = {
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

NOTIFICATIOND = (
    "[Unit]\nDescription=ChromeOS notification server\n"
    f"After={MOUNT_UNIT}\n\n"
    "[Service]\nType=dbus\nBusName=org.freedesktop.Notifications\n"
    f"ExecStart={TOOLS}/bin/notificationd --virtwl_device=/dev/wl0\n"
    "Restart=always\nRestartSec=1\n")
NOTIFICATIONS_DBUS = ("[D-BUS Service]\nName=org.freedesktop.Notifications\nExec=/bin/false\n"
                      "SystemdService=cros-notificationd.service\n")


def _user_service(description: str, command: str, extra: str = "") -> str:
    return (f"[Unit]\nDescription={description}\n"
            f"ConditionPathExists={TOOLS}/bin/{command.split()[0]}\n{extra}\n"
            f"[Service]\nType=notify\nExecStart={TOOLS}/bin/{command}\n"
            "Restart=always\nRestartSec=1\n\n[Install]\nWantedBy=default.target\n")


# sommelier reports readiness itself (--sd-notify) and runs the given command once it
# listens, which hands its display to the user manager's environment for later services
USER_UNITS = {
    "sommelier@.service": _user_service(
        "Wayland forwarding to ChromeOS (sommelier, socket wayland-%i)",
        "sommelier --parent --sd-notify=READY=1 --socket=wayland-%i --stable-scaling "
        "/bin/sh -c 'systemctl --user import-environment WAYLAND_DISPLAY'"),
    "sommelier-x@.service": _user_service(
        "X forwarding to ChromeOS (sommelier -X, display :%i)",
        "sommelier -X --x-display=%i --sd-notify=READY=1 --no-exit-with-child "
        "--x-auth=%h/.Xauthority --stable-scaling "
        "/bin/sh -c 'systemctl --user import-environment DISPLAY XCURSOR_SIZE'"),
    "cros-garcon.service": (
        "[Unit]\nDescription=ChromeOS app and file bridge (garcon)\n"
        f"ConditionPathExists={TOOLS}/bin/garcon\n"
        "After=sommelier@0.service sommelier-x@0.service\n\n"
        f"[Service]\nExecStart={TOOLS}/bin/garcon --server\n"
        "Environment=XDG_CURRENT_DESKTOP=X-Generic XDG_SESSION_TYPE=wayland\n"
        "Restart=always\nRestartSec=1\n\n[Install]\nWantedBy=default.target\n"),
}
USER_ENABLED = {"sommelier@0.service": "sommelier@.service",
                "sommelier-x@0.service": "sommelier-x@.service",
                "cros-garcon.service": "cros-garcon.service"}

PROFILE = """# The session environment ChromeOS's guest tools expect.
uid=$(id -u)
[ -n "$XDG_RUNTIME_DIR" ] || export XDG_RUNTIME_DIR="/run/user/$uid"
[ -n "$DBUS_SESSION_BUS_ADDRESS" ] ||
    export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
[ -n "$XDG_SESSION_TYPE" ] || export XDG_SESSION_TYPE=wayland
[ -n "$WAYLAND_DISPLAY" ] || export WAYLAND_DISPLAY=wayland-0
[ -n "$DISPLAY" ] || export DISPLAY=:0
[ -n "$USER" ] || export USER="$(id -un)"
unset uid
"""


def files() -> list[File]:
    out = [File(TOOLS.lstrip("/"), directory=True, mode=0o755)]
    for name, text in SYSTEM_UNITS.items():
        out.append(File(f"etc/systemd/system/{name}", text))
        target = WANTED_BY.get(name, "multi-user.target")
        out.append(File(f"etc/systemd/system/{target}.wants/{name}",
                        link=f"/etc/systemd/system/{name}"))
    for name, text in USER_UNITS.items():
        out.append(File(f"etc/systemd/user/{name}", text))
    for name, unit in USER_ENABLED.items():
        out.append(File(f"etc/systemd/user/default.target.wants/{name}",
                        link=f"/etc/systemd/user/{unit}"))
    out += [
        File("etc/systemd/user/cros-notificationd.service", NOTIFICATIOND),
        File("etc/profile.d/10-cros-guest-env.sh", PROFILE),
        File("etc/sudoers.d/10-cros-nopasswd", "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n",
             mode=0o440),
        File("mnt/shared", directory=True, mode=0o755),
        File("mnt/stateful", directory=True, mode=0o755),
        File("usr/share/dbus-1/services/org.freedesktop.Notifications.service",
             NOTIFICATIONS_DBUS),
        File("etc/udev/rules.d/10-cros-virtwl.rules", 'KERNEL=="wl*", MODE="0666"\n'),
        File("etc/systemd/journald.conf.d/50-console.conf", "[Journal]\nForwardToConsole=yes\n"),
    ]
    return out


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
