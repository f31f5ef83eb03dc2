"""The Crostini (LXC) writer without LXD: metadata structure and its validation, the rootfs
checks, and the three output shapes read back (tests/lxc/test_lxd.py imports them into LXD)."""

from __future__ import annotations

import hashlib
import io
import lzma
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline.core import tartree
from pipeline.core.errors import PipelineError
from pipeline.core.run import which
from pipeline.lxc import image as lxc
from pipeline.lxc import metadata as lxc_md
from pipeline.rootfs import facts
from tests.support import tree as manifest


def rootfs_tar(path: Path, *, init: bool = True, merged_usr: bool = True) -> Path:
    """A small rootfs shaped like Debian's: merged /usr, /sbin/init -> systemd, os-release."""
    def add(tf: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
            data: bytes = b"", link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.linkname, ti.mtime = kind, mode, link, 1_700_000_000
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data) if data else None)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "./", tarfile.DIRTYPE, 0o755)
        add(tf, "./etc/", tarfile.DIRTYPE, 0o755)
        add(tf, "./etc/os-release", tarfile.SYMTYPE, 0o777, link="../usr/lib/os-release")
        if merged_usr:
            add(tf, "./sbin", tarfile.SYMTYPE, 0o777, link="usr/sbin")
        add(tf, "./usr/", tarfile.DIRTYPE, 0o755)
        add(tf, "./usr/lib/", tarfile.DIRTYPE, 0o755)
        add(tf, "./usr/lib/os-release", data=b'NAME="Fixture Linux"\nID=fixture\n'
            b"VERSION_CODENAME=tiny\n")
        add(tf, "./usr/lib/systemd/", tarfile.DIRTYPE, 0o755)
        add(tf, "./usr/lib/systemd/systemd", mode=0o755, data=b"#!/bin/sh\n")
        add(tf, "./usr/sbin/", tarfile.DIRTYPE, 0o755)
        if init:
            add(tf, "./usr/sbin/init", tarfile.SYMTYPE, 0o777, link="../lib/systemd/systemd")
    return path


def options(**kw: object) -> tuple[lxc.Options, lxc_md.Properties]:
    """The writer's options and the image's properties, defaults changed by `kw`."""
    written = dict(rootfs_format="tar.xz", unified=False, compression_level=1)
    props = dict(description="", variant="default", release="", expiry_days=0,
                 architecture="x86_64")
    for k, v in kw.items():
        (written if k in written else props)[k] = v
    return (lxc.Options(**written),  # type: ignore[arg-type]
            lxc_md.Properties(**props))  # type: ignore[arg-type]


def test_metadata_from_os_release(tmp_path: Path) -> None:
    path = rootfs_tar(tmp_path / "r.tar")
    md = lxc_md.metadata(options(expiry_days=30)[1], facts.os_release(path, tartree.index(path)),
                      1_700_000_000)
    assert md.properties["os"] == "Fixture Linux"
    assert md.properties["release"] == "tiny"
    assert md.properties["serial"] == "20231114_2213"
    assert md.expiry_date == 1_700_000_000 + 30 * 86400
    text = md.to_yaml()
    assert '"architecture": "x86_64"' in text and '"creation_date": 1700000000' in text
    assert '"/etc/hostname":' in text and '"when": ["create", "copy"]' in text


@pytest.mark.parametrize(("change", "message"), [
    ({"architecture": "riscv64"}, "architecture 'riscv64'"),
    ({"creation_date": 0}, "creation_date 0 is missing"),
    ({"expiry_date": 1}, "expiry_date is not after creation_date"),
    ({"templates": {"/etc/hostname": lxc_md.Template("missing.tpl")}}, "missing.tpl"),
    ({"templates": {"etc/hostname": lxc_md.Template("hostname.tpl")}}, "not an absolute path"),
    ({"templates": {"/etc/hostname": lxc_md.Template("hostname.tpl", ("boot",))}}, "bad 'when'"),
])
def test_each_metadata_defect_has_its_own_message(change: dict[str, object],
                                                   message: str) -> None:
    fields = dict(architecture="x86_64", creation_date=1_700_000_000, properties={},
                  templates={"/etc/hostname": lxc_md.Template("hostname.tpl")})
    fields.update(change)
    with pytest.raises(PipelineError, match="LXC metadata: ") as err:
        lxc_md.validate(lxc_md.Metadata(**fields), lxc_md.TEMPLATE_FILES)  # type: ignore[arg-type]
    assert message in err.value.message
    assert err.value.hint


def test_resolve_follows_symlinks_like_the_container() -> None:
    def ti(kind: bytes, link: str = "") -> tarfile.TarInfo:
        t = tarfile.TarInfo("x")
        t.type, t.linkname = kind, link
        return t

    entries = {"sbin": ti(tarfile.SYMTYPE, "usr/sbin"), "usr": ti(tarfile.DIRTYPE),
               "usr/sbin": ti(tarfile.DIRTYPE), "usr/sbin/init": ti(tarfile.SYMTYPE, "/usr/x"),
               "usr/x": ti(tarfile.REGTYPE), "loop": ti(tarfile.SYMTYPE, "loop")}
    assert tartree.resolve(entries, "sbin/init") is entries["usr/x"]
    assert tartree.resolve(entries, "sbin/../x") is entries["usr/x"]  # .. of usr/sbin is usr
    assert tartree.resolve(entries, "loop") is None
    assert tartree.resolve(entries, "usr/missing") is None


@pytest.mark.parametrize("merged_usr", [True, False])
def test_rootfs_without_init_is_refused(tmp_path: Path, merged_usr: bool) -> None:
    path = rootfs_tar(tmp_path / "r.tar", init=False, merged_usr=merged_usr)
    with pytest.raises(PipelineError, match="no executable /sbin/init") as err:
        lxc.write_image(path, tmp_path, *options(), creation_date=1_700_000_000, work=tmp_path)
    assert "systemd-sysv" in err.value.hint
    assert not list(tmp_path.glob("*.xz")), "nothing is written for a refused rootfs"


def test_split_xz(tmp_path: Path) -> None:
    path = rootfs_tar(tmp_path / "r.tar")
    out = tmp_path / "out"
    out.mkdir()
    result = lxc.write_image(path, out, *options(), creation_date=1_700_000_000, work=tmp_path)
    assert result["files"] == "metadata.tar.xz rootfs.tar.xz"
    meta, root = out / "metadata.tar.xz", out / "rootfs.tar.xz"
    assert result["fingerprint"] == hashlib.sha256(meta.read_bytes() + root.read_bytes()
                                                   ).hexdigest()
    assert lzma.decompress(root.read_bytes()) == path.read_bytes()
    with tarfile.open(meta) as tf:
        names = tf.getnames()
        assert {m.uid for m in tf.getmembers()} == {0}
        assert {m.mtime for m in tf.getmembers()} == {1_700_000_000}
        yaml = tf.extractfile("metadata.yaml").read().decode()  # type: ignore[union-attr]
    assert names == ["metadata.yaml", "templates", "templates/hostname.tpl",
                     "templates/hosts.tpl"]
    assert '"os": "Fixture Linux"' in yaml


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    path = rootfs_tar(tmp_path / "r.tar")
    fps = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        out.mkdir()
        fps.append(lxc.write_image(path, out, *options(), creation_date=1_700_000_000,
                             work=tmp_path)["fingerprint"])
    assert fps[0] == fps[1]


def test_unified(tmp_path: Path) -> None:
    path = rootfs_tar(tmp_path / "r.tar")
    out = tmp_path / "out"
    out.mkdir()
    result = lxc.write_image(path, out, *options(unified=True), creation_date=1_700_000_000,
                       work=tmp_path)
    image = out / "image.tar.xz"
    assert result["fingerprint"] == hashlib.sha256(image.read_bytes()).hexdigest()
    with tarfile.open(image) as tf:
        names = tf.getnames()
    assert names[:4] == ["metadata.yaml", "templates", "templates/hostname.tpl",
                         "templates/hosts.tpl"]
    assert "rootfs" in names and "rootfs/usr/sbin/init" in names
    assert not (tmp_path / "unified.tar").exists()


@pytest.mark.skipif(which("tar2sqfs") is None or which("sqfs2tar") is None,
                    reason="squashfs-tools-ng is not installed")
def test_squashfs_holds_the_same_tree(tmp_path: Path) -> None:
    path = rootfs_tar(tmp_path / "r.tar")
    out = tmp_path / "out"
    out.mkdir()
    result = lxc.write_image(path, out, *options(rootfs_format="squashfs"),
                       creation_date=1_700_000_000, work=tmp_path)
    assert result["files"] == "metadata.tar.xz rootfs.squashfs"
    back = tmp_path / "back.tar"
    with open(back, "wb") as f:
        subprocess.run([which("sqfs2tar"), str(out / "rootfs.squashfs")], stdout=f, check=True)
    expected = manifest.read(path)
    del expected["/"]  # sqfs2tar writes no entry for the root itself
    actual = manifest.read(back)
    assert manifest.differences(expected, actual) == []


@pytest.mark.skipif(which("tar2sqfs") is None, reason="squashfs-tools-ng is not installed")
def test_squashfs_drops_acls_it_cannot_hold(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """systemd's journal directory carries POSIX ACLs; squashfs has no place for them."""
    path = rootfs_tar(tmp_path / "r.tar")
    with tarfile.open(path, "a", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("./var-log-journal")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o2755
        ti.pax_headers = {"SCHILY.xattr.system.posix_acl_default": "\x02\x00\x00\x00",
                          "SCHILY.xattr.user.kept": "yes"}
        tf.addfile(ti)
    out = tmp_path / "out"
    out.mkdir()
    lxc.write_image(path, out, *options(rootfs_format="squashfs"), creation_date=1_700_000_000,
              work=tmp_path)
    assert "dropped on: /var-log-journal" in capsys.readouterr().err
    assert not (tmp_path / "rootfs-for-squashfs.tar").exists()
    back = tmp_path / "back.tar"
    with open(back, "wb") as f:
        subprocess.run([which("sqfs2tar"), str(out / "rootfs.squashfs")], stdout=f, check=True)
    assert dict(manifest.read(back)["/var-log-journal"].xattrs) == {"user.kept": "yes"}


def _metadata_tar(path: Path, yaml_text: str) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in (("./metadata.yaml", yaml_text.encode()),
                           ("./templates/name.tpl", b"{{ container.name }}\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def test_source_templates_of_a_nixos_metadata_tarball(tmp_path: Path) -> None:
    """NixOS writes metadata.yaml as JSON; its templates and their files are read back,
    and YAML that is not that JSON is refused by name."""
    tar = _metadata_tar(tmp_path / "m.tar", '{"templates": {"/etc/name": {"when": ["create"], '
                        '"template": "name.tpl", "properties": {"a": 1}}}}')
    templates, files = lxc_md.source_templates(tar)
    assert templates == {"/etc/name": lxc_md.Template("name.tpl", ("create",), {"a": "1"})}
    assert files == {"name.tpl": "{{ container.name }}\n"}
    bad = _metadata_tar(tmp_path / "bad.tar", "templates:\n  /etc/name: {}\n")
    with pytest.raises(PipelineError, match="metadata.yaml is not in the JSON form NixOS"):
        lxc_md.source_templates(bad)
