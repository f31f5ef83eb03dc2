"""pipeline/publish/tree.py: the published tree (SHA256SUMS, manifest.json, the simplestreams
index), versions kept and pruned, atomicity, verification of a tampered tree, and
`doit publish` / `doit publish --verify` through the real CLI. No VM: the images here are
small busybox trees from the tarball source, published as Crostini images."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import PipelineError
from pipeline.publish import simplestreams as ss
from pipeline.publish import tree as publish
from tests.support.projects import built, write_project

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime.datetime(2026, 11, 24, 8, 0, tzinfo=datetime.UTC)
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nothing_built_is_a_clear_error(tmp_path: Path) -> None:
    ctx = stages.open_run(config.load(write_project(tmp_path)), 1_700_000_000)
    with pytest.raises(PipelineError) as exc:
        publish.publish(ctx, T0)
    assert "nothing is built to publish" in exc.value.message
    assert "doit build:lxc" in exc.value.hint
    assert not (tmp_path / "artifacts" / "publish").exists()


def test_tree_sums_index_and_manifest(tmp_path: Path) -> None:
    ctx = built(write_project(tmp_path))
    done = publish.publish(ctx, T0)
    root = tmp_path / "artifacts" / "publish"
    assert done.root == root and done.versions == {"tiny": "20261124_0800"}
    vdir = root / "images" / "tiny" / "x86_64" / "20261124_0800"
    assert sorted(os.listdir(vdir)) == ["SHA256SUMS", "manifest.json", "metadata.tar.xz",
                                        "rootfs.tar.xz"]
    # SHA256SUMS covers every other file of the tree, with the right digests
    sums = dict(reversed(line.split("  ")) for line in (root / "SHA256SUMS").read_text()
                .splitlines())
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and not p.name.startswith("."))  # .publish.lock
    assert sorted(sums) == [f for f in files if f != "SHA256SUMS"]
    assert all(sha256(root / f) == d for f, d in sums.items())

    m = json.loads((vdir / "manifest.json").read_text())
    assert m["image"] == "tiny" and m["version"] == "20261124_0800" and m["arch"] == "x86_64"
    assert m["source"]["kind"] == "tarball"
    assert m["source"]["key"] == stages.key(ctx, stages.BASE, ctx.config.image("tiny")).key
    assert m["source"]["tarball"] == sha256(tmp_path / "rootfs.tar")
    assert set(m["stages"]) == {"base", "rootfs", "lxc"}  # nothing packed: no VM here
    for stage in m["stages"].values():
        assert len(stage["key"]) == 32 and stage["seconds"] >= 0 and stage["built_at"] > 0
    assert m["build_seconds"] == pytest.approx(sum(s["seconds"] for s in m["stages"].values()),
                                               abs=0.01)
    assert m["accel"] is None  # recorded by the pack stage only
    assert m["files"]["rootfs.tar.xz"] == {"sha256": sha256(vdir / "rootfs.tar.xz"),
                                           "size": (vdir / "rootfs.tar.xz").stat().st_size}
    assert m["packages"] == {"format": "dpkg", "list": [
        {"name": "base-files", "version": "12.4+deb12u5", "architecture": "amd64"},
        {"name": "busybox", "version": "1:1.35.0-4+b3", "architecture": "amd64"}]}
    assert m["setuid"] == ["/usr/bin/su"] and m["setgid"] == ["/usr/bin/wall"]
    assert m["capabilities"] == {"/usr/bin/ping": "cap_net_raw+ep"}
    fp = (tmp_path / "artifacts" / "tiny" / "lxc" / "fingerprint").read_text().strip()
    assert m["lxc"]["fingerprint"] == fp

    index = json.loads((root / "streams/v1/index.json").read_text())
    images = json.loads((root / "streams/v1/images.json").read_text())
    (product,) = ss.read_products(index, images)
    assert product.name == "tiny:tiny:amd64:default" and product.aliases == ("tiny",)
    assert product.os == "Busybox Fixture" and product.arch == "amd64"
    version = product.versions["20261124_0800"]
    assert version.fingerprint() == fp
    meta = version.items["lxd.tar.xz"]
    assert meta.combined == {"combined_rootxz_sha256": fp, "combined_sha256": fp}
    assert meta.path == "images/tiny/x86_64/20261124_0800/metadata.tar.xz"
    assert version.items["root.tar.xz"].sha256 == sha256(vdir / "rootfs.tar.xz")
    assert publish.verify_tree(root) == publish.Verified(files=len(sums), products=1, versions=1)


def test_republishing_the_same_build_adds_no_version(tmp_path: Path) -> None:
    ctx = built(write_project(tmp_path))
    publish.publish(ctx, T0)
    before = (tmp_path / "artifacts" / "publish" / "SHA256SUMS").read_bytes()
    again = publish.publish(ctx, T0 + datetime.timedelta(hours=1))
    assert again.new == [] and again.versions == {"tiny": "20261124_0800"}
    assert (tmp_path / "artifacts" / "publish" / "SHA256SUMS").read_bytes() == before


def test_keeps_the_newest_versions(tmp_path: Path) -> None:
    root = tmp_path / "artifacts" / "publish"
    names = []
    for n in range(4):
        toml = write_project(tmp_path, "[publish]\nkeep = 2\n", description=f"build {n}")
        done = publish.publish(built(toml), T0 + datetime.timedelta(minutes=n))
        names.append(done.versions["tiny"])
        assert done.new == ["tiny"]
    assert names == ["20261124_0800", "20261124_0801", "20261124_0802", "20261124_0803"]
    assert sorted(os.listdir(root / "images" / "tiny" / "x86_64")) == names[2:]
    images = json.loads((root / "streams/v1/images.json").read_text())
    (product,) = images["products"].values()
    assert sorted(product["versions"]) == names[2:]
    assert "20261124_0801" not in (root / "SHA256SUMS").read_text()
    publish.verify_tree(root)


def test_a_failed_publish_leaves_no_half_version(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = built(write_project(tmp_path))
    publish.publish(ctx, T0)
    root = tmp_path / "artifacts" / "publish"
    index = (root / "streams/v1/images.json").read_bytes()
    ctx2 = built(write_project(tmp_path, description="changed"))

    def broken(*args: object, **kwargs: object) -> None:
        raise PipelineError("disk on fire")

    monkeypatch.setattr(publish, "manifest", broken)
    with pytest.raises(PipelineError, match="disk on fire"):
        publish.publish(ctx2, T0 + datetime.timedelta(minutes=1))
    assert os.listdir(root / "images" / "tiny" / "x86_64") == ["20261124_0800"]
    assert (root / "streams/v1/images.json").read_bytes() == index
    publish.verify_tree(root)

    # a publish killed outright leaves its temporary directory; the next one removes it
    leftover = root / "images" / "tiny" / "x86_64" / ".20261124_0801.x1y2.tmp"
    leftover.mkdir()
    (leftover / "rootfs.tar.xz").write_bytes(b"half")
    publish.verify_tree(root)  # dot names are in no index and no SHA256SUMS
    monkeypatch.undo()
    publish.publish(ctx2, T0 + datetime.timedelta(minutes=1))
    assert sorted(os.listdir(root / "images" / "tiny" / "x86_64")) == ["20261124_0800",
                                                                "20261124_0801"]


def test_verify_names_a_tampered_file(tmp_path: Path) -> None:
    publish.publish(built(write_project(tmp_path)), T0)
    root = tmp_path / "artifacts" / "publish"
    rootfs = root / "images/tiny/x86_64/20261124_0800/rootfs.tar.xz"
    data = bytearray(rootfs.read_bytes())
    data[len(data) // 2] ^= 0x01
    st = rootfs.stat()
    tampered = rootfs.with_name("tampered")
    tampered.write_bytes(bytes(data))
    os.utime(tampered, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    os.replace(tampered, rootfs)
    with pytest.raises(PipelineError) as exc:
        publish.verify_tree(root)
    msg = exc.value.message
    rel = "images/tiny/x86_64/20261124_0800/rootfs.tar.xz"
    assert f"{rel}: sha256 differs from SHA256SUMS" in msg
    assert f"{rel}: sha256 differs from streams/v1/images.json" in msg
    assert "combined_rootxz_sha256" in msg
    assert "manifest.json" not in msg and "metadata.tar.xz" not in msg


def test_verify_reports_missing_extra_and_inconsistent_index(tmp_path: Path) -> None:
    publish.publish(built(write_project(tmp_path)), T0)
    root = tmp_path / "artifacts" / "publish"
    (root / "images/tiny/x86_64/20261124_0800/metadata.tar.xz").unlink()
    (root / "stray.txt").write_text("not published\n")
    with pytest.raises(PipelineError) as exc:
        publish.verify_tree(root)
    assert "metadata.tar.xz: listed in SHA256SUMS but missing" in exc.value.message
    assert "stray.txt: not listed in SHA256SUMS" in exc.value.message
    index = json.loads((root / "streams/v1/index.json").read_text())
    index["index"]["images"]["products"] = ["other:product"]
    (root / "streams/v1/index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineError, match="index.json lists products"):
        publish.verify_tree(root)


def test_verify_of_a_tree_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as exc:
        publish.verify_tree(tmp_path)
    assert "not a published tree" in exc.value.message and "doit publish" in exc.value.hint


def test_version_names_are_what_lxd_reads() -> None:
    assert publish.version_name(T0) == "20261124_0800"
    east = datetime.timezone(datetime.timedelta(hours=5))
    assert publish.version_name(datetime.datetime(2026, 1, 2, 3, 4, tzinfo=east)) \
        == "20260101_2204"
    good = {"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json", "products": ["p"]}}}
    item = {"ftype": "lxd_combined.tar.gz", "path": "x", "sha256": "0" * 64, "size": 1}
    images = {"format": "products:1.0", "datatype": "image-downloads", "products": {"p": {
        "aliases": "a", "arch": "amd64", "os": "o", "release": "r", "release_title": "t",
        "versions": {"latest": {"items": {"i": item}}}}}}
    with pytest.raises(PipelineError, match="not named YYYYMMDD_HHMM"):
        ss.read_products(good, images)


def doit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IMAGES_TOML=str(project / "images.toml"))
    env.pop("SOURCE_DATE_EPOCH", None)
    return subprocess.run(
        [sys.executable, "-m", "doit", "run", "-f", str(ROOT / "dodo.py"),
         "--db-file", str(project / ".doit.db"), *args],
        capture_output=True, text=True, env=env, check=False)


def test_doit_publish_and_verify(tmp_path: Path) -> None:
    write_project(tmp_path, f'[publish]\ndir = "{tmp_path / "site"}"\n'
                            'base_url = "https://images.example/cros"\n', rich=False)
    nothing = doit(tmp_path, "publish")
    assert nothing.returncode != 0
    assert "nothing is built to publish" in nothing.stdout + nothing.stderr
    assert "Traceback" not in nothing.stderr
    assert doit(tmp_path, "build:lxc").returncode == 0
    done = doit(tmp_path, "publish")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lxc remote add NAME https://images.example/cros --protocol simplestreams" \
        in done.stdout
    assert "lxc launch NAME:tiny tiny-1" in done.stdout
    checked = doit(tmp_path, "publish", "--verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "all hashes match" in checked.stderr
    (vdir,) = (tmp_path / "site" / "images" / "tiny" / "x86_64").iterdir()
    with open(vdir / "metadata.tar.xz", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = doit(tmp_path, "publish", "--verify")
    assert bad.returncode != 0
    assert f"images/tiny/x86_64/{vdir.name}/metadata.tar.xz: sha256 differs" in bad.stdout


def test_instructions_offer_only_the_containers_the_index_holds(tmp_path: Path) -> None:
    """A tree with no LXC image (only Baguette disks, say) offers no `lxc launch` line."""
    ctx = built(write_project(tmp_path, 'accel = "tcg"', rich=False))
    done = publish.publish(ctx)
    text = publish.remote_instructions("https://h/p", done)
    assert "lxc remote add NAME https://h/p --protocol simplestreams" in text
    assert "lxc launch NAME:tiny tiny-1" in text
    (done.root / ss.IMAGES_PATH).write_text(
        '{"content_id": "images", "datatype": "image-downloads", "format": "products:1.0", '
        '"products": {}}')
    empty = publish.remote_instructions("https://h/p", done)
    assert "lxc launch" not in empty and "lxc remote add" not in empty
    assert "`doit build:lxc` first" in empty
