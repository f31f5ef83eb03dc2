"""The customize stage: base rootfs tarball + image config -> normalised plain tar."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from pipeline import config
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.rootfs.customize import customize, inputs

MTIME = 1_700_000_000
FUTURE = 1_800_000_000.75  # fractional and newer than SDE
SDE = 1_750_000_000
USER, UID, HOSTNAME, IMAGE = "alice", 1000, "guesthost", "testimg"

PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
GROUP = "root:x:0:\ndaemon:x:1:\nshadow:x:42:\n"
SHADOW = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
GSHADOW = "root:*::\ndaemon:*::\nshadow:*::\n"
SHARED = b"one inode, three names\n"


# --- helpers ---------------------------------------------------------------------------------


def _ti(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, uid: int = 0,
        gid: int | None = None, uname: str = "root", gname: str = "root",
        mtime: float = MTIME, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid = uid
    ti.gid = uid if gid is None else gid
    ti.uname, ti.gname = uname, gname
    ti.mtime = mtime
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def base_members(passwd: str = PASSWD, big: bytes = b"x" * 5000) -> list[tuple]:
    """(TarInfo, data) pairs of a small rootfs, deliberately not in sorted order."""
    d, lnk, sym = tarfile.DIRTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE
    xattr = _ti("./usr/bin/ping", mode=0o755)
    xattr.pax_headers = {"SCHILY.xattr.user.test": "hello", "comment": "dropped"}
    return [
        (_ti("./", d, mode=0o755), None),
        (_ti("./usr/bin/zz", mode=0o755), SHARED),  # the hardlink target sorts last
        (_ti("./usr/bin/aa", lnk, mode=0o755, linkname="./usr/bin/zz"), None),
        (_ti("./usr/sbin/mm", lnk, mode=0o755, linkname="usr/bin/zz"), None),
        (_ti("./etc/", d, mode=0o755), None),
        (_ti("./etc/passwd"), passwd.encode()),
        (_ti("./etc/group"), GROUP.encode()),
        (_ti("./etc/shadow", mode=0o640, gid=42, gname="shadow"), SHADOW.encode()),
        (_ti("./etc/gshadow", mode=0o640, gid=42, gname="shadow"), GSHADOW.encode()),
        (_ti("./etc/hostname"), b"buildhost\n"),
        (_ti("./etc/resolv.conf"), b"nameserver 192.0.2.53\n"),
        (_ti("./etc/hosts"), b"127.0.0.1\tlocalhost\n127.0.1.1\tbuildhost\n"),
        (_ti("./usr/", d, mode=0o755), None),
        (_ti("./usr/bin/", d, mode=0o755), None),
        (_ti("./usr/bin/sudo", mode=0o4755), b"#!setuid\n"),
        (xattr, b"ping\n"),
        (_ti("./usr/bin-extra", mode=0o644), b"sorts between usr/bin/* and usr/sbin\n"),
        (_ti("./bin", sym, mode=0o777, linkname="usr/bin"), None),
        (_ti("./usr/bin/sh", sym, mode=0o777, linkname="busybox"), None),
        (_ti("./var/lib/app/data", mode=0o600, uid=105, uname="app", gname="app",
             mtime=FUTURE), b"app data\n"),  # no parent entries for var/ or var/lib/
        (_ti("./usr/share/doc/pkg/README"), big),
        (_ti("./dev/", d, mode=0o755), None),
        (_ti("./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
        (_ti("./run/", d, mode=0o755), None),
        (_ti("./run/initctl", tarfile.FIFOTYPE, mode=0o600), None),
    ]


def write_tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def write_dotfiles(root: Path) -> Path:
    (root / ".config" / "nvim").mkdir(parents=True)
    (root / ".config").chmod(0o700)
    (root / ".bashrc").write_text("export EDITOR=nvim\n")
    (root / ".config" / "nvim" / "init.vim").write_text("set number\n")
    (root / "bin").mkdir()
    script = root / "bin" / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    (root / ".vimrc").symlink_to(".config/nvim/init.vim")
    return root


def make_image(tmp_path: Path, base: Path, *, user: str = USER, uid: int = UID,
               dotfiles: str = "dots", integration: bool = False) -> config.Image:
    """Integration files are off unless asked for: most tests look at exact account files."""
    toml = f"""
[images.{IMAGE}]
source = "tarball"
hostname = "{HOSTNAME}"
dotfiles = "{dotfiles}"
user = "{user}"
uid = {uid}
chromeos_integration = {"true" if integration else "false"}

[images.{IMAGE}.tarball]
path = "{base}"
"""
    return config.parse(toml, tmp_path / "images.toml").image(IMAGE)


def run_customize(tmp_path: Path, base: Path, image: config.Image, sde: int | None = SDE,
                  out_name: str = "rootfs.tar") -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    out = tmp_path / "out" / out_name
    count = customize(base, image, out, work_dir=work, source_date_epoch=sde)
    with tarfile.open(out) as tf:
        assert count == len(tf.getmembers())
    return out


def members(out: Path) -> dict[str, tarfile.TarInfo]:
    """Output members by name without the leading './'."""
    with tarfile.open(out) as tf:
        return {_strip(m.name): m for m in tf.getmembers()}


def names(out: Path) -> list[str]:
    with tarfile.open(out) as tf:
        return [_strip(m.name) for m in tf.getmembers()]


def read(out: Path, name: str) -> bytes:
    with tarfile.open(out) as tf:
        f = tf.extractfile(f"./{name}" if name else ".")
        assert f is not None
        return f.read()


def _strip(name: str) -> str:
    return "" if name in (".", "./") else name.removeprefix("./").rstrip("/")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, config.Image]:
    base = write_tar(tmp_path / "base.tar", base_members())
    write_dotfiles(tmp_path / "dots")
    return base, make_image(tmp_path, base)


@pytest.fixture
def out(tmp_path: Path, setup: tuple[Path, config.Image]) -> Path:
    base, image = setup
    return run_customize(tmp_path, base, image)


# --- order, owners, times ------------------------------------------------------------------


def test_entries_sorted_with_parents_first(out: Path) -> None:
    order = names(out)
    assert len(order) == len(set(order))
    assert order[0] == ""
    assert order == sorted(order, key=lambda n: n.split("/") if n else [])
    seen = {""}
    ms = members(out)
    for name in order[1:]:
        parent = name.rpartition("/")[0]
        assert parent in seen, f"{name} comes before its parent {parent!r}"
        assert ms[parent].isdir()
        seen.add(name)
    # parents that the base never listed were created
    assert ms["var"].isdir() and ms["var/lib"].isdir() and ms["var/lib/app"].isdir()


def test_owners_are_numeric_only(out: Path) -> None:
    ms = members(out)
    for m in ms.values():
        assert (m.uname, m.gname) == ("", ""), m.name
    assert (ms["var/lib/app/data"].uid, ms["var/lib/app/data"].gid) == (105, 105)
    assert ms["etc/shadow"].gid == 42


def test_mtimes_whole_seconds_and_clamped(out: Path) -> None:
    ms = members(out)
    for m in ms.values():
        assert isinstance(m.mtime, int) and "mtime" not in m.pax_headers, m.name
        assert m.mtime <= SDE, m.name
    assert ms["var/lib/app/data"].mtime == SDE
    assert ms["usr/bin/sudo"].mtime == MTIME  # older than SDE: kept
    assert ms[f"home/{USER}/.bashrc"].mtime == SDE


def test_mtimes_untouched_without_sde(tmp_path: Path, setup: tuple[Path, config.Image]) -> None:
    base, image = setup
    ms = members(run_customize(tmp_path, base, image, sde=None))
    for m in ms.values():
        assert isinstance(m.mtime, int) and "mtime" not in m.pax_headers, m.name
    assert ms["var/lib/app/data"].mtime == int(FUTURE)
    assert ms["usr/bin/sudo"].mtime == MTIME
    # what the image writes gets the newest mtime of the base
    assert ms["etc/passwd"].mtime == int(FUTURE)
    assert ms[f"home/{USER}/.bashrc"].mtime == int(FUTURE)


# --- what the base carries through -----------------------------------------------------------


def test_hardlinks_point_to_earlier_names_and_keep_content(out: Path) -> None:
    order = names(out)
    ms = members(out)
    group = {"usr/bin/aa", "usr/bin/zz", "usr/sbin/mm"}
    assert group <= set(order)
    for name, m in ms.items():
        if m.islnk():
            target = _strip(m.linkname)
            assert target in order[: order.index(name)], f"{name} -> {target} not earlier"
            assert ms[target].isreg()
    regular = [n for n in group if ms[n].isreg()]
    assert regular == ["usr/bin/aa"]  # the first name in sorted order carries the data
    for n in group:
        assert read(out, n) == SHARED
        assert ms[n].mode == 0o755


def test_special_files_modes_and_links(out: Path) -> None:
    ms = members(out)
    null = ms["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert null.mode == 0o666
    assert ms["run/initctl"].isfifo()
    assert ms["usr/bin/sudo"].mode == 0o4755
    assert ms["bin"].issym() and ms["bin"].linkname == "usr/bin"
    assert ms["usr/bin/sh"].issym() and ms["usr/bin/sh"].linkname == "busybox"
    assert read(out, "usr/share/doc/pkg/README") == b"x" * 5000


def test_xattr_survives_other_pax_headers_dropped(out: Path) -> None:
    ping = members(out)["usr/bin/ping"]
    assert ping.pax_headers.get("SCHILY.xattr.user.test") == "hello"
    assert "comment" not in ping.pax_headers
    assert read(out, "usr/bin/ping") == b"ping\n"


def test_gnu_tar_reads_output(out: Path) -> None:
    proc = subprocess.run(["tar", "-tvf", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == len(names(out))
    assert "./usr/bin/zz link to ./usr/bin/aa" in proc.stdout


# --- what the image adds -------------------------------------------------------------------


def test_dotfiles_land_in_home_owned_by_user(out: Path, tmp_path: Path) -> None:
    ms = members(out)
    home = f"home/{USER}"
    dots = tmp_path / "dots"
    expected = {".bashrc", ".config", ".config/nvim", ".config/nvim/init.vim", "bin",
                "bin/hello.sh", ".vimrc"}
    found = {n[len(home) + 1:] for n in ms if n.startswith(home + "/")}
    assert found == expected
    for rel in expected:
        m = ms[f"{home}/{rel}"]
        assert (m.uid, m.gid) == (UID, UID), rel
        if not m.issym():
            assert m.mode == stat.S_IMODE((dots / rel).lstat().st_mode), rel
    assert ms[f"{home}/bin/hello.sh"].mode == 0o755
    assert ms[f"{home}/.config"].mode == 0o700
    assert ms[f"{home}/.vimrc"].issym()
    assert ms[f"{home}/.vimrc"].linkname == ".config/nvim/init.vim"
    assert read(out, f"{home}/bin/hello.sh") == (dots / "bin/hello.sh").read_bytes()
    assert read(out, f"{home}/.config/nvim/init.vim") == b"set number\n"


def test_home_dir_is_private_to_user(out: Path) -> None:
    home = members(out)[f"home/{USER}"]
    assert home.isdir() and home.mode == 0o700 and (home.uid, home.gid) == (UID, UID)


def test_user_appended_to_account_files(out: Path) -> None:
    passwd = read(out, "etc/passwd").decode()
    assert passwd.startswith(PASSWD)
    assert passwd.splitlines()[-1] == f"{USER}:x:{UID}:{UID}::/home/{USER}:/bin/bash"
    group = read(out, "etc/group").decode()
    assert group.startswith(GROUP) and group.splitlines()[-1] == f"{USER}:x:{UID}:"
    shadow = read(out, "etc/shadow").decode()
    assert shadow.startswith(SHADOW) and shadow.splitlines()[-1].startswith(f"{USER}:!:")
    gshadow = read(out, "etc/gshadow").decode()
    assert gshadow.startswith(GSHADOW) and gshadow.splitlines()[-1] == f"{USER}:!::"
    ms = members(out)
    assert (ms["etc/shadow"].mode, ms["etc/shadow"].gid) == (0o640, 42)
    assert ms["etc/passwd"].mode == 0o644


def test_existing_user_with_same_uid_not_duplicated(tmp_path: Path) -> None:
    passwd = PASSWD + f"{USER}:x:{UID}:{UID}:Alice:/home/{USER}:/bin/zsh\n"
    base = write_tar(tmp_path / "base.tar", base_members(passwd=passwd))
    write_dotfiles(tmp_path / "dots")
    out = run_customize(tmp_path, base, make_image(tmp_path, base))
    assert read(out, "etc/passwd").decode() == passwd
    assert read(out, "etc/group").decode() == GROUP
    assert read(out, "etc/shadow").decode() == SHADOW


@pytest.mark.parametrize("line", [
    f"{USER}:x:1001:1001::/home/{USER}:/bin/sh",  # the name, with another uid
    f"bob:x:{UID}:{UID}::/home/bob:/bin/sh",  # the uid, under another name
])
def test_conflicting_account_is_config_error(tmp_path: Path, line: str) -> None:
    base = write_tar(tmp_path / "base.tar", base_members(passwd=PASSWD + line + "\n"))
    write_dotfiles(tmp_path / "dots")
    with pytest.raises(ConfigError, match=rf"images\.{IMAGE}\.uid"):
        run_customize(tmp_path, base, make_image(tmp_path, base))
    assert not (tmp_path / "out" / "rootfs.tar").exists()


def test_hostname_hosts_and_resolv_conf(out: Path) -> None:
    assert read(out, "etc/hostname") == f"{HOSTNAME}\n".encode()
    hosts = read(out, "etc/hosts").decode().splitlines()
    assert f"127.0.1.1\t{HOSTNAME}" in hosts
    assert "127.0.0.1\tlocalhost" in hosts
    assert not any("buildhost" in line for line in hosts)
    resolv = members(out)["etc/resolv.conf"]
    assert resolv.issym() and resolv.linkname == "../run/resolv.conf"


def test_image_without_dotfiles(tmp_path: Path) -> None:
    base = write_tar(tmp_path / "base.tar", base_members())
    out = run_customize(tmp_path, base, make_image(tmp_path, base, dotfiles=""))
    ms = members(out)
    assert ms[f"home/{USER}"].mode == 0o700
    assert not [n for n in ms if n.startswith(f"home/{USER}/")]


# --- inputs and reproducibility ------------------------------------------------------------


def test_inputs_follow_dotfile_content_and_mode_not_mtime(
        tmp_path: Path, setup: tuple[Path, config.Image]) -> None:
    _, image = setup
    bashrc = tmp_path / "dots" / ".bashrc"

    def key() -> str:
        return inputs(image, "basekey", SDE).key

    first = key()
    os.utime(bashrc, (MTIME, MTIME))
    assert key() == first
    bashrc.write_text("export EDITOR=vim\n")
    os.utime(bashrc, (MTIME, MTIME))
    second = key()
    assert second != first
    bashrc.chmod(0o600)
    assert key() != second
    assert inputs(image, "otherbase", SDE).key != inputs(image, "basekey", SDE).key


def test_two_runs_are_byte_identical(tmp_path: Path, setup: tuple[Path, config.Image]) -> None:
    base, image = setup
    one = run_customize(tmp_path, base, image, out_name="one.tar")
    for p in (tmp_path / "dots").rglob("*"):
        os.utime(p, (MTIME + 12345, MTIME + 12345), follow_symlinks=False)
    two = run_customize(tmp_path, base, image, out_name="two.tar")
    assert one.read_bytes() == two.read_bytes()


def test_zstd_base_gives_the_same_output(tmp_path: Path,
                                         setup: tuple[Path, config.Image]) -> None:
    base, image = setup
    plain = run_customize(tmp_path, base, image, out_name="plain.tar")
    zst = tmp_path / "base.tar.zst"  # the name does not matter: the content is sniffed
    zst.write_bytes(zstandard.ZstdCompressor().compress(base.read_bytes()))
    packed = run_customize(tmp_path, zst, image, out_name="zstd.tar")
    assert packed.read_bytes() == plain.read_bytes()


# --- bad bases -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    _ti("../escape"),
    _ti("/etc/absolute"),
    _ti("./usr/../../escape"),
    _ti("./usr/bin/hl", tarfile.LNKTYPE, linkname="../../outside"),
])
def test_escaping_entries_are_refused(tmp_path: Path, bad: tarfile.TarInfo) -> None:
    data = None if bad.islnk() else b"evil\n"
    base = write_tar(tmp_path / "base.tar", [*base_members(), (bad, data)])
    write_dotfiles(tmp_path / "dots")
    with pytest.raises(PipelineError, match="escapes the root"):
        run_customize(tmp_path, base, make_image(tmp_path, base))


def _cut_mid_data(raw: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        m = tf.getmember("./usr/share/doc/pkg/README")
    return m.offset_data + m.size // 2


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "zstd"])
def test_truncated_base_is_refused(tmp_path: Path, compress: bool) -> None:
    full = write_tar(tmp_path / "full.tar", base_members()).read_bytes()
    cut = full[: _cut_mid_data(full)]
    base = tmp_path / "base.tar"
    base.write_bytes(zstandard.ZstdCompressor().compress(cut) if compress else cut)
    write_dotfiles(tmp_path / "dots")
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        run_customize(tmp_path, base, make_image(tmp_path, base))
    assert not (tmp_path / "out" / "rootfs.tar").exists()


def test_chromeos_integration_files(tmp_path: Path) -> None:
    """Units (enabled through .wants links), udev rule, journald drop-in, the tools mount
    point and every group maitred may ask for; existing groups keep their gid."""
    base = write_tar(tmp_path / "base.tar", base_members())
    write_dotfiles(tmp_path / "dots")
    out = run_customize(tmp_path, base, make_image(tmp_path, base, integration=True))
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        group = tf.extractfile("./etc/group").read().decode()  # type: ignore[union-attr]
        wants = tf.getmember(
            "./etc/systemd/system/local-fs.target.wants/opt-google-cros\\x2dcontainers.mount")
        rule = tf.extractfile(  # type: ignore[union-attr]
            "./etc/udev/rules.d/10-cros-virtwl.rules").read()
    for unit in ("vshd.service", "maitred.service", "cros-port-listener.service",
                 "baguette-resize.service"):
        assert f"./etc/systemd/system/{unit}" in names
        assert f"./etc/systemd/system/multi-user.target.wants/{unit}" in names
    assert wants.issym() and wants.linkname.endswith("cros\\x2dcontainers.mount")
    assert "./opt/google/cros-containers" in names
    assert "./etc/systemd/user/cros-notificationd.service" in names
    for enabled, unit in (("sommelier@0.service", "sommelier@.service"),
                          ("sommelier-x@0.service", "sommelier-x@.service"),
                          ("cros-garcon.service", "cros-garcon.service")):
        assert f"./etc/systemd/user/{unit}" in names
        assert f"./etc/systemd/user/default.target.wants/{enabled}" in names
    assert {"./etc/profile.d/10-cros-guest-env.sh", "./etc/sudoers.d/10-cros-nopasswd",
            "./mnt/shared", "./mnt/stateful"} <= names
    assert "./etc/systemd/journald.conf.d/50-console.conf" in names
    assert rule == b'KERNEL=="wl*", MODE="0666"\n'
    groups = {line.split(":")[0]: line.split(":")[2] for line in group.splitlines()}
    for g in ("audio", "cdrom", "dialout", "disk", "floppy", "kvm", "netdev", "plugdev", "sudo",
              "tss", "video"):
        assert g in groups
    assert groups["shadow"] == "42"
    assert len(set(groups.values())) == len(groups), "a gid was given twice"
