"""The bad-input corpus: configs, tarballs and environments a build must refuse on purpose.

Each case runs the real entry (the config loader and the stage functions in process, or
`doit` as a subprocess for a few), expects a PipelineError (or a non-zero exit) whose message
names the cause, and then checks that the failing stage left no store entry, no half-built
`.tmp` entry and no temporary files. The rules for tarballs are in pipeline/core/tarballs.py
(TreeRules) and the README's "Rootfs tarballs" section.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import PipelineError
from tests.support.projects import lxc_outputs

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("base", "rootfs", "lxc", "pack", "baguette")  # a case fails in one (or before)


# --- tarball factory -------------------------------------------------------------------------


@dataclass
class M:
    """One member: name, kind (f d l h p c or a raw type byte), data, link target."""

    name: str
    kind: str | bytes = "f"
    data: bytes = b"x\n"
    link: str = ""
    size: int | None = None  # a header claiming this size (no data follows)
    mode: int = 0o644


KIND = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
        "h": tarfile.LNKTYPE, "p": tarfile.FIFOTYPE, "c": tarfile.CHRTYPE}
# every guest needs an init: the rootfs stage refuses a tree without one
BASE = [M("./", "d", mode=0o755), M("./etc/", "d", mode=0o755), M("./etc/hostname"),
        M("./sbin/", "d", mode=0o755), M("./sbin/init", data=b"#!/bin/sh\n", mode=0o755)]


def tar(*members: M, base: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        for m in [*(BASE if base else []), *members]:
            ti = tarfile.TarInfo(m.name)
            ti.type = KIND[m.kind] if isinstance(m.kind, str) else m.kind
            ti.mode = m.mode
            ti.mtime = 1_600_000_000
            ti.linkname = m.link
            if m.size is not None:
                ti.size = m.size
                tf.addfile(ti)  # the header only: the data the size claims is not there
            elif ti.type == tarfile.REGTYPE:
                ti.size = len(m.data)
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("etc/hostname", "x\n")
    return buf.getvalue()


def corrupt_checksum() -> bytes:
    data = bytearray(tar())
    data[512 + 148] ^= 0xFF  # the second header's checksum field
    return bytes(data)


def cut_after_last_member() -> bytes:
    """A good archive stopped right after its last member's data: no end-of-archive block."""
    data = tar()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    return data[:last.offset_data + (last.size + 511) // 512 * 512]


def sbin_init() -> list[M]:
    return [M("./sbin/", "d", mode=0o755), M("./sbin/init", data=b"#!/bin/sh\n", mode=0o755)]


# --- config texts ----------------------------------------------------------------------------

GOOD_IMAGE = """
[images.first]
source = "tarball"
dotfiles = "dotfiles"
[images.first.tarball]
path = "rootfs.tar"
"""


def toml(image: str = GOOD_IMAGE, build_extra: str = "") -> Callable[[Path], str]:
    def text(project: Path) -> str:
        return (f'[build]\naccel = "tcg"\nartifacts = "{project / "artifacts"}"\n'
                f'{build_extra}\n{image}')
    return text


def image_with(extra: str, table: str = "") -> Callable[[Path], str]:
    """The good image with `extra` lines in [images.first] and a `table` after it."""
    return toml(GOOD_IMAGE.replace('dotfiles = "dotfiles"\n', f'dotfiles = "dotfiles"\n{extra}\n')
                + table)


# --- the cases -------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    expect: str  # text the error message must hold
    stage: str = "config"  # where it fails: config | env | base | rootfs | lxc
    toml: Callable[[Path], str] = field(default_factory=toml)
    tarball: bytes | None = None  # rootfs.tar's bytes (default: a good small tree)
    setup: Callable[[Path], None] | None = None  # more files in the project
    env: dict[str, str] = field(default_factory=dict)
    via_doit: bool = False


def secret_dotfile(project: Path) -> None:
    (project / "dotfiles" / ".aws").mkdir(parents=True)
    (project / "dotfiles" / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKIA" + "Q" * 16 + "\n")


def dotfile_bashrc(project: Path) -> None:
    (project / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")


def artifacts_is_a_file(project: Path) -> None:
    (project / "artifacts").write_text("not a directory\n")


def fake_tool(name: str, version_text: str) -> Callable[[Path], None]:
    """<project>/bin/NAME printing `version_text` (set PATH=<project>/bin:$PATH)."""
    def setup(project: Path) -> None:
        bindir = project / "bin"
        bindir.mkdir()
        (bindir / name).write_text(f"#!/bin/sh\necho '{version_text}'\n")
        (bindir / name).chmod(0o755)
    return setup


FAKE_PATH = {"PATH": "{project}/bin:" + os.environ.get("PATH", "/usr/bin:/bin")}


def path_without(*tools: str) -> Callable[[Path], None]:
    """A PATH of symlinks to the host's tools, except `tools` (set PATH=<project>/bin)."""
    def setup(project: Path) -> None:
        bindir = project / "bin"
        bindir.mkdir()
        for d in ("/usr/bin", "/bin"):
            for tool in os.listdir(d):
                if tool not in tools and not (bindir / tool).exists():
                    (bindir / tool).symlink_to(Path(d) / tool)
    return setup


CASES = [
    # --- images.toml ---
    Case("config-unknown-key-typo", "images.first.dotfile: unknown key",
         toml=toml(GOOD_IMAGE.replace("dotfiles =", "dotfile ="))),
    Case("config-wrong-type", "images.first.uid: expected an integer",
         toml=image_with('uid = "1000"')),
    Case("config-unknown-source-kind", "images.first.source: 'rpm' is not one of",
         toml=toml(GOOD_IMAGE.replace('source = "tarball"', 'source = "rpm"'))),
    Case("config-image-name-with-slash", 'images.a/b: bad image name',
         toml=toml(GOOD_IMAGE.replace("images.first", 'images."a/b"'))),
    Case("config-image-name-dotdot", "images...: bad image name",
         toml=toml(GOOD_IMAGE.replace("images.first", 'images.".."'))),
    Case("config-dotfiles-missing", "images.first.dotfiles:",
         toml=toml(GOOD_IMAGE.replace('dotfiles = "dotfiles"', 'dotfiles = "no-such-dir"'))),
    Case("config-uid-zero", "images.first.uid: 0 is out of range", toml=image_with("uid = 0")),
    Case("config-uid-too-big", "images.first.uid: 70000 is out of range",
         toml=image_with("uid = 70000")),
    Case("config-label-too-long", "images.first.baguette.label: too long",
         toml=image_with("", f'[images.first.baguette]\nlabel = "{"x" * 300}"\n')),
    Case("config-bad-size-string", "'4 parsecs' is not a size",
         toml=image_with("", '[images.first.baguette]\nsize = "4 parsecs"\n')),
    Case("config-size-too-small", "images.first.baguette.size: 1048576 bytes is too small",
         toml=image_with("", '[images.first.baguette]\nsize = "1MiB"\n')),
    Case("config-negative-slack", "a size cannot be negative",
         toml=image_with("", "[images.first.baguette]\nslack = -1\n")),
    Case("config-zstd-level", "compression_level: 42 is out of range",
         toml=image_with("", "[images.first.baguette]\ncompression_level = 42\n")),
    Case("config-tarball-missing", "images.first.tarball.path:",
         toml=toml(GOOD_IMAGE.replace('path = "rootfs.tar"', 'path = "gone.tar"'))),
    Case("config-bad-user-name", "images.first.user: 'Root!' is not a valid user name",
         toml=image_with('user = "Root!"')),
    Case("config-table-for-other-source", "images.first.debian: this table is for source",
         toml=image_with("", "[images.first.debian]\nsuite = \"bookworm\"\n")),
    Case("config-unknown-top-level", "imgs: unknown top-level table",
         toml=lambda p: toml()(p) + "\n[imgs.x]\nsource = \"debian\"\n"),
    Case("config-not-toml", "not valid TOML", toml=lambda p: "[build\naccel = tcg\n"),
    Case("config-no-images", "images: no image declared", toml=toml(image="")),
    Case("config-default-image-unknown", "build.default_images: no image named 'second'",
         toml=toml(build_extra='default_images = ["second"]')),
    Case("config-accel", "build.accel: 'fast' is not one of",
         toml=lambda p: toml()(p).replace('accel = "tcg"', 'accel = "fast"')),
    Case("config-squashfs-unified", "images.first.lxc.unified",
         toml=image_with("", '[images.first.lxc]\nunified = true\nrootfs_format = "squashfs"\n')),
    # --- rootfs tarballs (the base stage refuses them) ---
    Case("tar-dotdot", "tarball entry './../x' escapes the root (it holds ..)", "base",
         tarball=tar(M("./../x"))),
    Case("tar-absolute", "tarball entry '/etc/passwd' escapes the root (an absolute path)",
         "base", tarball=tar(M("/etc/passwd"))),
    Case("tar-write-through-escaping-symlink",
         "'./a/passwd' would be written through 'a', which is a symlink", "base",
         tarball=tar(M("./a", "l", link="../../etc"), M("./a/passwd"))),
    Case("tar-write-through-absolute-symlink",
         "'./etc/sub/x' would be written through 'etc/sub', which is a symlink", "base",
         tarball=tar(M("./etc/sub", "l", link="/tmp"), M("./etc/sub/x"))),
    Case("tar-dir-under-symlink", "'./lnk/dir' would be written through 'lnk'", "base",
         tarball=tar(M("./lnk", "l", link="/"), M("./lnk/dir", "d", mode=0o755))),
    Case("tar-under-a-file", "'./etc/hostname/x' would be written through 'etc/hostname', "
         "which is a file", "base", tarball=tar(M("./etc/hostname/x"))),
    Case("tar-hardlink-escaping", "hardlink target of './etc/pw' '../../etc/passwd' escapes",
         "base", tarball=tar(M("./etc/pw", "h", link="../../etc/passwd"))),
    Case("tar-hardlink-absolute", "hardlink target of './etc/pw' '/etc/passwd' escapes",
         "base", tarball=tar(M("./etc/pw", "h", link="/etc/passwd"))),
    Case("tar-hardlink-to-missing", "'./etc/b' is a hardlink to './etc/nothing', which is not "
         "a regular file earlier", "base", tarball=tar(M("./etc/b", "h", link="./etc/nothing"))),
    Case("tar-hardlink-forward", "'./etc/b' is a hardlink to './etc/later'", "base",
         tarball=tar(M("./etc/b", "h", link="./etc/later"), M("./etc/later"))),
    Case("tar-hardlink-to-directory", "is a hardlink to './etc', which is not a regular file",
         "base", tarball=tar(M("./etc/b", "h", link="./etc"))),
    Case("tar-hardlink-to-itself", "'./etc/hostname' is a hardlink to itself", "base",
         tarball=tar(M("./etc/hostname", "h", link="./etc/hostname"))),
    Case("tar-duplicate-dir-becomes-file",
         "replaces the directory 'etc', which holds entries, with a file", "base",
         tarball=tar(M("./etc"))),
    Case("tar-duplicate-dir-becomes-symlink",
         "replaces the directory 'etc', which holds entries, with a symlink", "base",
         tarball=tar(M("./etc", "l", link="/tmp"))),
    Case("tar-root-is-a-file", "tarball entry '.' makes the root itself a file", "base",
         tarball=tar(M("."), base=False)),
    Case("tar-unknown-member-type", "has the unsupported member type b'Z'", "base",
         tarball=tar(M("./etc/odd", b"Z"))),
    Case("tar-non-utf8-name-under-file", r"'./etc/hostname/\udcff' would be written", "base",
         tarball=tar(M("./etc/hostname/\udcff"))),
    Case("tar-huge-size-claim", "corrupt or truncated tarball (EOFError: ./etc/huge is cut "
         "short)", "base", tarball=tar(M("./etc/huge", size=1 << 40))),
    Case("tar-truncated-gzip", "corrupt or truncated", "base",
         tarball=gzip.compress(tar(M("./etc/big", data=os.urandom(64 << 10))))[:20_000]),
    Case("tar-corrupt-header", "corrupt or truncated", "base", tarball=corrupt_checksum()),
    Case("tar-cut-at-member-boundary", "ends without its end-of-archive block", "base",
         tarball=cut_after_last_member()),
    Case("tar-zip-renamed", "is not a rootfs tarball: libmagic says 'Zip archive", "base",
         tarball=zip_bytes()),
    Case("tar-empty-file", "is not a rootfs tarball", "base", tarball=b""),
    Case("tar-random-bytes", "is not a rootfs tarball", "base",
         tarball=b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
    Case("tar-gzip-of-zeros", "the tarball holds no entries", "base",
         tarball=gzip.compress(bytes(8 << 20))),
    Case("tar-decompression-bomb-after-the-archive", "more than 64 MiB follow the archive's "
         "end-of-archive block", "base", tarball=gzip.compress(tar() + bytes(80 << 20), 1)),
    # --- the rootfs stage ---
    Case("rootfs-secret-in-dotfiles", "/home/user/.aws/credentials:2: aws-access-token", "rootfs",
         setup=secret_dotfile),
    Case("rootfs-dotfile-over-a-base-directory", "dotfiles: /home/user/.bashrc is a directory "
         "in the base rootfs", "rootfs", setup=dotfile_bashrc,
         tarball=tar(M("./home/", "d"), M("./home/user/", "d"), M("./home/user/.bashrc/", "d"),
                     M("./home/user/.bashrc/x"))),
    Case("rootfs-uid-taken", "images.first.uid: uid 1000 already belongs to 'other'", "rootfs",
         tarball=tar(M("./etc/passwd", data=b"other:x:1000:1000::/home/other:/bin/sh\n"))),
    Case("rootfs-integration-through-a-symlink",
         "/etc/udev/rules.d/10-cros-virtwl.rules would be written through /etc/udev/rules.d, "
         "which is a symlink to '/lib/udev/rules.d'", "rootfs",
         tarball=tar(M("./etc/udev/", "d"),
                     M("./etc/udev/rules.d", "l", link="/lib/udev/rules.d"))),
    # --- the environment ---
    Case("env-source-date-epoch-not-a-number", "SOURCE_DATE_EPOCH='abc' is not a number", "env",
         env={"SOURCE_DATE_EPOCH": "abc"}),
    Case("env-artifacts-is-a-file", "artifacts is not a directory", "env",
         setup=artifacts_is_a_file),
    Case("env-missing-xz", "host tool 'xz' is not installed", "lxc",
         tarball=tar(*sbin_init()), setup=path_without("xz"), env={"PATH": "{project}/bin"}),
    Case("env-missing-mmdebstrap", "host tool 'mmdebstrap' is not installed", "base",
         toml=toml(GOOD_IMAGE.replace('source = "tarball"', 'source = "debian"')
                   .replace('[images.first.tarball]\npath = "rootfs.tar"\n', "")),
         setup=path_without("mmdebstrap"), env={"PATH": "{project}/bin"}),
    Case("env-btrfs-progs-too-old", "mkfs.btrfs 4.9.1 (", "pack",
         setup=fake_tool("mkfs.btrfs", "mkfs.btrfs, part of btrfs-progs v4.9.1"),
         env=FAKE_PATH),
    Case("env-qemu-too-old", "qemu-system-x86_64 2.11.1 (", "pack",
         setup=fake_tool("qemu-system-x86_64", "QEMU emulator version 2.11.1(Debian 1:2.11)"),
         env=FAKE_PATH),
    # --- through the doit command line ---
    Case("doit-images-toml-nowhere", "not found", "env", via_doit=True,
         env={"IMAGES_TOML": "{project}/nowhere/images.toml"}),
    Case("doit-source-date-epoch", "SOURCE_DATE_EPOCH='12abc' is not a number", "env",
         via_doit=True, env={"SOURCE_DATE_EPOCH": "12abc"}),
    Case("doit-escaping-symlink", "would be written through 'a', which is a symlink", "base",
         via_doit=True, tarball=tar(M("./a", "l", link="../../etc"), M("./a/passwd"))),
    Case("doit-artifacts-is-a-file", "artifacts is not a directory", "env", via_doit=True,
         setup=artifacts_is_a_file),
]


# --- running a case --------------------------------------------------------------------------


def _store_entries(artifacts: Path, stage: str) -> list[Path]:
    return sorted(p for p in (artifacts / "store" / stage).glob("*") if (p / "inputs.json")
                  .is_file()) if (artifacts / "store").is_dir() else []


def _leftovers(artifacts: Path) -> list[Path]:
    if not artifacts.is_dir():
        return []
    left = list(artifacts.glob("store/*/.*.tmp"))
    tmp = artifacts / "tmp"
    if tmp.is_dir():
        left += [p for p in tmp.iterdir() if not _live_and_empty(tmp, p.name.removesuffix(".lock"))]
    return left


def _live_and_empty(tmp: Path, name: str) -> bool:
    """A run still open in this process holds its own (empty) work directory and lock."""
    try:
        with open(tmp / f"{name}.lock") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
    except BlockingIOError:
        return not (tmp / name).is_dir() or not any((tmp / name).iterdir())
    except OSError:
        return False


def _in_process(project: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in case.env.items():
        monkeypatch.setenv(k, v.format(project=project))
    with pytest.raises(PipelineError) as err:
        cfg = config.load(project / "images.toml")
        ctx = stages.open_run(cfg, config.source_date_epoch())
        image = cfg.image("first")
        stages.build(ctx, stages.BASE, image)
        stages.build(ctx, stages.ROOTFS, image)
        if case.stage == "pack":
            stages.build(ctx, stages.PACK, image)
        else:
            lxc_outputs(ctx, image)
    return str(err.value)


def _via_doit(project: Path, case: Case) -> str:
    env = dict(os.environ, IMAGES_TOML=str(project / "images.toml"))
    env.pop("SOURCE_DATE_EPOCH", None)
    env.update({k: v.format(project=project) for k, v in case.env.items()})
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
         "--db-file", str(project / ".doit.db"), "rootfs:first"],
        capture_output=True, text=True, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_stores_nothing(case: Case, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path
    (project / "dotfiles").mkdir()
    (project / "rootfs.tar").write_bytes(tar() if case.tarball is None else case.tarball)
    if case.setup is not None:
        case.setup(project)
    (project / "images.toml").write_text(case.toml(project))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)

    message = _via_doit(project, case) if case.via_doit else _in_process(project, case,
                                                                         monkeypatch)
    assert case.expect in message, message
    assert "hint:" in message, f"no hint: {message}"

    artifacts = project / "artifacts"
    failed = STAGES.index(case.stage) if case.stage in STAGES else 0
    for stage in STAGES[failed:]:
        assert _store_entries(artifacts, stage) == [], f"{stage} stored an entry"
    assert _leftovers(artifacts) == [], "temporary files were left behind"


# --- the host extraction stays in its directory ----------------------------------------------


def _canary(tmp_path: Path) -> Path:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("untouched\n")
    return canary


def _canary_intact(canary: Path) -> bool:
    return sorted(p.name for p in canary.iterdir()) == ["keep"] and \
        (canary / "keep").read_text() == "untouched\n"


@pytest.mark.parametrize("members", [
    pytest.param(lambda c: [M("./etc/sub", "l", link=str(c)), M("./etc/sub/x")],
                 id="file-through-absolute-symlink"),
    pytest.param(lambda c: [M("./etc/sub", "l", link=str(c)), M("./etc/sub/d", "d")],
                 id="dir-through-absolute-symlink"),
    pytest.param(lambda c: [M("./etc/sub", "l", link="../../canary"), M("./etc/sub/x")],
                 id="file-through-relative-symlink"),
    pytest.param(lambda c: [M("./etc/sub", "l", link=str(c)), M("./etc/sub/p", "p")],
                 id="fifo-through-symlink"),
    pytest.param(lambda c: [M("./etc/pw", "h", link=str(c / "keep"))], id="hardlink-absolute"),
    pytest.param(lambda c: [M("./etc/pw", "h", link="../canary/keep")], id="hardlink-dotdot"),
    pytest.param(lambda c: [M(str(c / "x"))], id="absolute-name"),
    pytest.param(lambda c: [M("./../canary/x")], id="dotdot-name"),
])
def test_host_extraction_refuses_writing_outside(
        members: Callable[[Path], list[M]], tmp_path: Path) -> None:
    """pack.extract fed directly (not through the base and rootfs stages' checks): every
    way out of the staging tree is refused, and the canary directory beside it is intact."""
    from pipeline.baguette import pack

    canary = _canary(tmp_path)
    tarball = tmp_path / "hostile.tar"
    tarball.write_bytes(tar(*members(canary)))
    tree = tmp_path / "work" / "tree"
    tree.mkdir(parents=True)
    with pytest.raises(PipelineError, match="escapes the root|written through"):
        pack.extract(tarball, tree)
    assert _canary_intact(canary)


def test_host_extraction_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    """A file, fifo or directory that comes after a symlink of the same name replaces the
    link (GNU tar's last-one-wins); nothing is written where the link pointed."""
    from pipeline.baguette import pack

    canary = _canary(tmp_path)
    tarball = tmp_path / "dups.tar"
    tarball.write_bytes(tar(
        M("./etc/a", "l", link=str(canary / "keep")), M("./etc/a", data=b"mine\n"),
        M("./etc/b", "l", link=str(canary)), M("./etc/b", "d", mode=0o755),
        M("./etc/c", "l", link=str(canary / "keep")), M("./etc/c", "p")))
    tree = tmp_path / "tree"
    tree.mkdir()
    pack.extract(tarball, tree)
    assert (tree / "etc/a").read_bytes() == b"mine\n" and not (tree / "etc/a").is_symlink()
    assert (tree / "etc/b").is_dir() and not (tree / "etc/b").is_symlink()
    assert not (tree / "etc/c").is_symlink()
    assert _canary_intact(canary)


# --- accepted on purpose, with the documented meaning ----------------------------------------


def _rootfs_of(project: Path, tarball: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """The rootfs stage's output for `tarball`: each member and its data, by name."""
    (project / "rootfs.tar").write_bytes(tarball)
    (project / "images.toml").write_text(toml()(project))
    cfg = config.load(project / "images.toml")
    ctx = stages.open_run(cfg, 1_700_000_000)
    image = cfg.image("first")
    stages.build(ctx, stages.BASE, image)
    out = (stages.build(ctx, stages.ROOTFS, image) / "rootfs.tar")
    with tarfile.open(out, encoding="utf-8", errors="surrogateescape") as tf:
        return {m.name: (m, tf.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
                for m in tf.getmembers()}


def test_accepted_hostile_looking_inputs(tmp_path: Path) -> None:
    """Duplicates: the last one wins (GNU tar); a non-UTF-8 name is kept as its bytes;
    symlink targets are kept verbatim wherever they point (resolved in the guest)."""
    (tmp_path / "dotfiles").mkdir()
    got = _rootfs_of(tmp_path, tar(
        M("./etc/dup", data=b"first\n"), M("./etc/dup", data=b"second\n"),
        M("./etc/", "d", mode=0o700),  # a directory declared again: its last metadata
        M("./etc/caf\udce9"),  # 'café' in Latin-1
        M("./etc/localtime", "l", link="/usr/share/zoneinfo/UTC"),
        M("./etc/up", "l", link="../../../../outside")))
    assert got["./etc/dup"][1] == b"second\n"
    assert got["./etc"][0].mode == 0o700
    assert "./etc/caf\udce9" in got
    assert got["./etc/localtime"][0].linkname == "/usr/share/zoneinfo/UTC"
    assert got["./etc/up"][0].linkname == "../../../../outside"


def test_dotfiles_special_files_are_skipped_and_said(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A socket or fifo in the dotfiles (a gpg-agent socket, say) and a device node are not
    copied into the image; the log names each."""
    dots = tmp_path / "dotfiles"
    (dots / ".gnupg").mkdir(parents=True)
    os.mkfifo(dots / ".gnupg" / "S.gpg-agent")
    if os.geteuid() == 0:
        os.mknod(dots / "null", 0o600 | 0o020000, os.makedev(1, 3))
    got = _rootfs_of(tmp_path, tar())
    err = capsys.readouterr().err
    assert "skipping" in err and "S.gpg-agent" in err
    assert "./home/user/.gnupg/S.gpg-agent" not in got and "./home/user/null" not in got
    assert "./home/user/.gnupg" in got
