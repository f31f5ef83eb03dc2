"""pipeline/rootfs/integration.py: the ChromeOS guest files written into a non-Nix rootfs, one
set per guest kind (Baguette VM, Crostini container): units, udev rule, sudoers, profile
script, user units enabled for every user, the resolv.conf link, groups. Read as data without
running anything, then through the customize stage on a tiny busybox tarball, with
`chromeos_integration` on and off."""

from __future__ import annotations

import configparser
import io
import tarfile
from pathlib import Path

import pytest

from pipeline import config
from pipeline.rootfs import integration
from pipeline.rootfs.customize import customize, inputs
from pipeline.rootfs.integration import File, Kind
from tests.support.rootfs import busybox_rootfs

TOOLS_BIN = "/opt/google/cros-containers/bin"
MOUNT = r"opt-google-cros\x2dcontainers.mount"
SDE = 1_700_000_000
VM, CONTAINER = Kind.VM, Kind.CONTAINER
SYSTEM_SERVICES = ("vshd.service", "maitred.service", "cros-port-listener.service",
                   "baguette-resize.service")


def by_path(kind: Kind = VM) -> dict[str, File]:
    return {f.path: f for f in integration.files(kind)}


def unit(text: str) -> configparser.ConfigParser:
    """A systemd unit's sections and keys (no interpolation: `%i`, `%h` stay as written)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def system_unit(name: str) -> configparser.ConfigParser:
    return unit(by_path(VM)[f"etc/systemd/system/{name}"].text)


def user_unit(name: str, kind: Kind = VM) -> configparser.ConfigParser:
    return unit(by_path(kind)[f"etc/systemd/user/{name}"].text)


# --- the file lists --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_paths_are_relative_unique_and_of_one_kind_each(kind: Kind) -> None:
    files = integration.files(kind)
    paths = [f.path for f in files]
    assert len(paths) == len(set(paths))
    assert not [p for p in paths if p.startswith("/") or ".." in p.split("/")]
    for f in files:
        assert not (f.directory and (f.link or f.text)), f.path
        assert not (f.link and f.text), f.path


def test_the_container_gets_the_vm_files_minus_the_vm_only_ones() -> None:
    vm, container = set(by_path(VM)), set(by_path(CONTAINER))
    dhcp = "etc/network/interfaces.d/eth0"  # the container's only file of its own
    assert container - vm == {dhcp}
    assert by_path(CONTAINER)[dhcp].text == "auto eth0\niface eth0 inet dhcp\n"
    assert integration.vm_only_paths() == vm - container
    assert {f"etc/systemd/system/{MOUNT}", "etc/resolv.conf",
            "etc/systemd/journald.conf.d/50-console.conf"} <= integration.vm_only_paths()
    assert not [p for p in container if p.startswith("etc/systemd/system/")]


def test_directories_for_the_tools_and_chromeos_mounts() -> None:
    def dirs(kind: Kind) -> dict[str, int]:
        return {f.path: f.mode for f in integration.files(kind) if f.directory}

    assert dirs(CONTAINER) == {"opt/google/cros-containers": 0o755, "mnt/shared": 0o755}
    assert dirs(VM) == {"opt/google/cros-containers": 0o755, "mnt/shared": 0o755,
                        "mnt/chromeos": 0o755, "mnt/chromeos/fonts": 0o755,
                        "mnt/stateful": 0o755}
    assert by_path(VM)["mnt/chromeos/shared"].link == "/mnt/shared"


def test_tools_mount_unit() -> None:
    u = system_unit(MOUNT)
    assert dict(u["Mount"]) == {"What": "LABEL=cros-vm-tools",
                                "Where": "/opt/google/cros-containers", "Type": "ext4",
                                "Options": "ro", "TimeoutSec": "10"}
    assert u["Unit"]["DefaultDependencies"] == "no"
    assert u["Install"]["WantedBy"] == "local-fs.target"
    # the unit's name is its mount point, escaped as systemd requires ("-" in a name: \x2d)
    assert integration.MOUNT_UNIT == MOUNT


def test_every_user_manager_waits_for_the_tools_disk() -> None:
    u = unit(by_path(VM)["etc/systemd/system/user@.service.d/10-cros-tools.conf"].text)
    assert dict(u["Unit"]) == {"Wants": MOUNT, "After": MOUNT}


@pytest.mark.parametrize("name, exec_start", [
    ("vshd.service", f"{TOOLS_BIN}/vshd"),
    ("maitred.service", f"{TOOLS_BIN}/maitred"),
    ("cros-port-listener.service", f"{TOOLS_BIN}/port_listener"),
])
def test_system_services_start_the_tools_after_the_mount(name: str, exec_start: str) -> None:
    u = system_unit(name)
    assert u["Service"]["ExecStart"] == exec_start
    assert u["Service"]["Restart"] == "always"
    assert u["Unit"]["After"] == MOUNT and u["Unit"]["Requires"] == MOUNT
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_maitred_path_has_the_tools_first_and_sbin() -> None:
    path = system_unit("maitred.service")["Service"]["Environment"]
    assert path.startswith("PATH=")
    dirs = path.removeprefix("PATH=").split(":")
    assert dirs[0] == TOOLS_BIN
    assert "/usr/sbin" in dirs and "/usr/bin" in dirs and "/sbin" in dirs
    assert "Environment" not in system_unit("vshd.service")["Service"]


def test_resize_service_grows_the_root_btrfs() -> None:
    u = system_unit("baguette-resize.service")
    assert u["Service"]["Type"] == "oneshot"
    assert u["Service"]["ExecStart"] == "/usr/bin/btrfs filesystem resize max /"
    assert u["Unit"]["ConditionPathExists"] == "/usr/bin/btrfs"
    assert "Requires" not in u["Unit"]  # it needs no tools disk


def test_system_units_are_enabled_through_wants_links() -> None:
    files = by_path(VM)
    links = {p: f.link for p, f in files.items() if f.link and p.startswith("etc/systemd/system")}
    assert links == {
        f"etc/systemd/system/local-fs.target.wants/{MOUNT}": f"/etc/systemd/system/{MOUNT}",
        **{f"etc/systemd/system/multi-user.target.wants/{n}": f"/etc/systemd/system/{n}"
           for n in SYSTEM_SERVICES},
    }
    for target in links.values():
        assert files[target.lstrip("/")].text  # each link points at a unit written here


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("name, command, program", [
    ("sommelier@.service", "sommelier --parent --sd-notify=READY=1 --socket=wayland-%i",
     "sommelier"),
    ("sommelier-x@.service", "sommelier -X --x-display=%i", "sommelier"),
    ("cros-garcon.service", "garcon --server", "garcon"),
    ("cros-notificationd.service", "notificationd --virtwl_device=/dev/wl0", "notificationd"),
])
def test_user_units_start_the_tools_when_they_are_there(kind: Kind, name: str, command: str,
                                                       program: str) -> None:
    u = user_unit(name, kind)
    assert u["Service"]["ExecStart"].startswith(f"{TOOLS_BIN}/{command}")
    assert u["Unit"]["ConditionPathExists"] == f"{TOOLS_BIN}/{program}"
    assert u["Service"]["Restart"] == "always"


def test_sommelier_hands_its_display_to_the_user_manager() -> None:
    wayland = user_unit("sommelier@.service")["Service"]
    x = user_unit("sommelier-x@.service")["Service"]
    assert wayland["Type"] == x["Type"] == "notify"
    assert wayland["NotifyAccess"] == x["NotifyAccess"] == "all"
    assert wayland["ExecStart"].endswith(
        "/bin/sh -c 'systemctl --user import-environment WAYLAND_DISPLAY'")
    assert "--x-auth=%h/.Xauthority" in x["ExecStart"]
    assert "xauth -f %h/.Xauthority add :%i ." in x["ExecStart"]  # the X cookie
    assert x["ExecStart"].endswith("import-environment DISPLAY XCURSOR_SIZE'")


def test_garcon_opens_urls_through_its_handler() -> None:
    garcon = user_unit("cros-garcon.service")
    assert garcon["Unit"]["After"] == "sommelier@0.service sommelier-x@0.service"
    env = dict(kv.split("=", 1) for kv in garcon["Service"]["Environment"].split())
    assert env == {"BROWSER": "/usr/bin/garcon-url-handler",
                   "XDG_CURRENT_DESKTOP": "X-Generic", "XDG_SESSION_TYPE": "wayland"}
    handler = by_path(CONTAINER)["usr/bin/garcon-url-handler"]
    assert handler.mode == 0o755
    assert handler.text == f'#!/bin/sh\nexec {TOOLS_BIN}/garcon --client --url "$@"\n'


@pytest.mark.parametrize("kind", list(Kind))
def test_user_units_are_enabled_for_every_user_in_default_target_wants(kind: Kind) -> None:
    files = by_path(kind)
    wants = {p.rsplit("/", 1)[1]: f.link for p, f in files.items()
             if p.startswith("etc/systemd/user/default.target.wants/")}
    assert wants == {"sommelier@0.service": "/etc/systemd/user/sommelier@.service",
                     "sommelier-x@0.service": "/etc/systemd/user/sommelier-x@.service",
                     "cros-garcon.service": "/etc/systemd/user/cros-garcon.service"}
    for target in wants.values():
        assert unit(files[target.lstrip("/")].text)["Install"]["WantedBy"] == "default.target"


def test_notificationd_is_dbus_activated_not_enabled() -> None:
    files = by_path(CONTAINER)
    u = unit(files["etc/systemd/user/cros-notificationd.service"].text)
    assert u["Service"]["Type"] == "dbus"
    assert u["Service"]["BusName"] == "org.freedesktop.Notifications"
    assert "Install" not in u
    dbus = files["usr/share/dbus-1/services/org.freedesktop.Notifications.service"].text
    assert dict(unit(dbus)["D-BUS Service"]) == {
        "Name": "org.freedesktop.Notifications", "Exec": "/bin/false",
        "SystemdService": "cros-notificationd.service"}


@pytest.mark.parametrize("kind", list(Kind))
def test_udev_rule_opens_dev_wl_to_everyone(kind: Kind) -> None:
    f = by_path(kind)["etc/udev/rules.d/10-cros-virtwl.rules"]
    assert f.text == 'KERNEL=="wl*", MODE="0666"\n'
    assert f.mode == 0o644


@pytest.mark.parametrize("kind", list(Kind))
def test_sudoers_drop_in_is_0440_and_passwordless_for_sudo(kind: Kind) -> None:
    f = by_path(kind)["etc/sudoers.d/10-cros-nopasswd"]
    assert f.mode == 0o440
    assert f.text == "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n"


def test_journald_forwards_to_the_console_in_the_vm() -> None:
    text = by_path(VM)["etc/systemd/journald.conf.d/50-console.conf"].text
    assert dict(unit(text)["Journal"]) == {"ForwardToConsole": "yes"}


def test_resolv_conf_links_to_run_in_the_vm_only() -> None:
    f = by_path(VM)["etc/resolv.conf"]
    assert f.link == "../run/resolv.conf" and not f.text  # /etc/../run: /run/resolv.conf
    assert "etc/resolv.conf" not in by_path(CONTAINER)


def test_hosts_lines_name_arc_in_the_vm_only() -> None:
    assert integration.hosts_lines(VM) == ["100.115.92.2\tarc"]
    assert integration.hosts_lines(CONTAINER) == []


def test_profile_script_sets_the_session_environment_without_overriding() -> None:
    f = by_path(CONTAINER)["etc/profile.d/10-cros-guest-env.sh"]
    assert f.mode == 0o644
    text = f.text
    for line in ('[ -n "$XDG_RUNTIME_DIR" ] || export XDG_RUNTIME_DIR="/run/user/$uid"',
                 'export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"',
                 '[ -n "$WAYLAND_DISPLAY" ] || export WAYLAND_DISPLAY=wayland-0',
                 '[ -n "$DISPLAY" ] || export DISPLAY=:0',
                 '[ -n "$XDG_SESSION_TYPE" ] || export XDG_SESSION_TYPE=wayland',
                 '[ -n "$BROWSER" ] || export BROWSER=/usr/bin/garcon-url-handler'):
        assert line in text
    assert text.rstrip().endswith("unset uid")


# --- groups vmc asks maitred for ---------------------------------------------------------------


def test_add_groups_adds_the_missing_ones_below_900_skipping_used_gids() -> None:
    group = "root:x:0:\nsudo:x:27:\nkvm:x:900:\naudio:x:29:\nlocal:x:899:"
    out, shadow = integration.add_groups(group, "root:*::\nsudo:*::\n")
    lines = out.splitlines()
    assert lines[:5] == group.splitlines()  # existing lines kept, in order, with their gids
    added = {ln.split(":")[0]: int(ln.split(":")[2]) for ln in lines[5:]}
    assert set(added) == {"cdrom", "dialout", "disk", "floppy", "netdev", "plugdev", "tss",
                          "video"}
    assert sorted(added.values(), reverse=True) == list(added.values())  # in GROUPS order
    assert added["cdrom"] == 898  # 900 and 899 are taken
    assert min(added.values()) == 891
    assert shadow is not None
    assert shadow.splitlines()[:2] == ["root:*::", "sudo:*::"]
    assert shadow.splitlines()[2:] == [f"{n}:!::" for n in added]


def test_add_groups_without_gshadow_and_when_nothing_is_missing() -> None:
    full = "".join(f"{g}:x:{100 + i}:\n" for i, g in enumerate(integration.GROUPS))
    assert integration.add_groups(full, None) == (full, None)


def test_add_members_puts_the_user_in_each_existing_group_once() -> None:
    group = "root:x:0:\nsudo:x:27:alice\naudio:x:29:bob\nvideo:x:44:\nusers:x:100:"
    out = integration.add_members(group, "alice")
    assert out.splitlines() == ["root:x:0:", "sudo:x:27:alice", "audio:x:29:bob,alice",
                                "video:x:44:alice", "users:x:100:"]
    assert integration.add_members(out, "alice") == out


# --- through the customize stage -------------------------------------------------------------


PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
GROUP = b"root:x:0:\nsudo:x:27:\n"


def tiny_base(path: Path) -> Path:
    """The busybox tree with account files, so the user is added and can linger."""
    busybox_rootfs(path)
    with tarfile.open(path, "a", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("./etc/passwd", PASSWD), ("./etc/group", GROUP)):
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime, ti.size = 0o644, SDE, len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def tiny_image(tmp_path: Path, integration_on: bool) -> tuple[Path, config.Image]:
    base = tiny_base(tmp_path / "base.tar")
    toml = f"""
[images.tiny]
source = "tarball"
dotfiles = ""
user = "alice"
chromeos_integration = {"true" if integration_on else "false"}
[images.tiny.tarball]
path = "{base}"
"""
    return base, config.parse(toml, tmp_path / "images.toml").image("tiny")


Tree = dict[str, tuple[tarfile.TarInfo, bytes]]


def customized(tmp_path: Path, integration_on: bool) -> tuple[Tree, Tree]:
    """(the VM tree, the container tree) of the tiny image: members with their data."""
    base, image = tiny_image(tmp_path, integration_on)
    (tmp_path / "work").mkdir()
    vm, container = tmp_path / "rootfs.tar", tmp_path / "container.tar"
    customize(base, image, vm, work_dir=tmp_path / "work", source_date_epoch=SDE,
              container_out=container)

    def read(path: Path) -> Tree:
        with tarfile.open(path) as tf:
            return {m.name.removeprefix("./").rstrip("/"): (
                m, tf.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
                for m in tf.getmembers()}
    return read(vm), read(container)


def test_integration_off_writes_none_of_it(tmp_path: Path) -> None:
    vm, container = customized(tmp_path, integration_on=False)
    written = {f.path for f in integration.files(VM)} - {"etc/resolv.conf"}
    assert written & vm.keys() == set()
    assert written & container.keys() == set()
    for tree in (vm, container):
        assert not [n for n in tree if n.startswith(("etc/systemd", "opt/", "mnt/"))]
        assert "var/lib/systemd/linger/alice" not in tree
        assert tree["etc/group"][1] == b"root:x:0:\nsudo:x:27:\nalice:x:1000:\n"
        assert b"arc" not in tree["etc/hosts"][1]
        assert tree["etc/passwd"][1].endswith(b"alice:x:1000:1000::/home/alice:/bin/bash\n")
    # the resolver is never the build host's: a link in the VM, empty in the container
    resolv = vm["etc/resolv.conf"][0]
    assert resolv.issym() and resolv.linkname == "../run/resolv.conf"
    resolv = container["etc/resolv.conf"][0]
    assert resolv.isreg() and resolv.size == 0


@pytest.mark.parametrize("kind", list(Kind))
def test_integration_on_writes_every_file_with_its_mode_and_link(tmp_path: Path,
                                                                 kind: Kind) -> None:
    tree = customized(tmp_path, integration_on=True)[0 if kind is VM else 1]
    for f in integration.files(kind):
        m, data = tree[f.path]
        if f.directory:
            assert m.isdir() and m.mode & 0o7777 == f.mode, f.path
        elif f.link:
            assert m.issym() and m.linkname == f.link, f.path
        else:
            assert m.isreg() and m.mode & 0o7777 == f.mode, f.path
            assert data == f.text.encode(), f.path
        assert (m.uid, m.gid) == (0, 0), f.path
    assert tree["etc/sudoers.d/10-cros-nopasswd"][0].mode & 0o7777 == 0o440
    assert tree["var/lib/systemd/linger/alice"][0].isreg()
    groups = {ln.split(":")[0]: ln.split(":")[3]
              for ln in tree["etc/group"][1].decode().splitlines()}
    assert set(integration.GROUPS) <= groups.keys()
    assert all(groups[g] == "alice" for g in integration.GROUPS)


def test_the_container_tree_has_no_vm_files(tmp_path: Path) -> None:
    vm, container = customized(tmp_path, integration_on=True)
    assert integration.vm_only_paths() <= vm.keys()
    assert integration.vm_only_paths() & container.keys() == {"etc/resolv.conf"}
    resolv = container["etc/resolv.conf"][0]
    assert resolv.isreg() and resolv.size == 0  # LXD's DHCP fills it, not maitred
    assert b"100.115.92.2\tarc\n" in vm["etc/hosts"][1]
    assert b"arc" not in container["etc/hosts"][1]


def test_integration_is_part_of_the_rootfs_key(tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    _, on = tiny_image(tmp_path / "on", True)
    _, off = tiny_image(tmp_path / "off", False)
    key_on, key_off = inputs(on, "b" * 32, SDE), inputs(off, "b" * 32, SDE)
    assert key_on.inputs["chromeos_integration"] == integration.VERSION
    assert key_off.inputs["chromeos_integration"] is None
    assert key_on.key != key_off.key
