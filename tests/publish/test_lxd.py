"""A published tree served over HTTPS as a simplestreams remote of the real LXD daemon
(tests/support/lxd.py): `lxc remote add ... --protocol simplestreams`, then
`lxc launch REMOTE:ALIAS`;
and a tampered rootfs that verification reports and LXD refuses."""

from __future__ import annotations

import datetime
import json
import shutil
import time
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.publish import tree as publish
from tests.support.https import serve_https
from tests.support.lxd import LXD, LXDError, lxd  # noqa: F401 (the fixture)
from tests.support.projects import built, write_project
from tests.support.rootfs import FORMATS
from tests.support.tools import tool_missing

T0 = datetime.datetime(2026, 11, 24, 9, 30, tzinfo=datetime.UTC)


def add_remote(lxd: LXD, name: str, url: str, cert: Path) -> None:  # noqa: F811
    """A simplestreams remote whose self-signed certificate the client trusts: LXD reads
    it from `$LXD_CONF/servercerts/<remote>.crt` and hands it to the daemon that downloads."""
    servercerts = lxd.conf_dir / "servercerts"
    servercerts.mkdir(exist_ok=True)
    shutil.copyfile(cert, servercerts / f"{name}.crt")
    lxd.lxc("remote", "add", name, url, "--protocol", "simplestreams")


def remove_remote(lxd: LXD, name: str) -> None:  # noqa: F811
    lxd.lxc("remote", "remove", name, check=False)
    (lxd.conf_dir / "servercerts" / f"{name}.crt").unlink(missing_ok=True)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_launch_from_the_published_tree(fmt: str, tmp_path: Path, lxd: LXD) -> None:  # noqa: F811
    """Every Crostini format, served as a simplestreams remote: LXD lists the image under its
    alias with our fingerprint, launches it, and (split xz) refuses it once tampered with."""
    if fmt == "squashfs" and shutil.which("tar2sqfs") is None:
        tool_missing("squashfs-tools-ng is not installed (run `python3 -m pipeline.hostsetup`)")
    ctx = built(write_project(tmp_path, rich=False, lxc=FORMATS[fmt]))
    t0 = time.monotonic()
    done = publish.publish(ctx, T0)
    published = time.monotonic()
    root = done.root
    (vdir,) = (root / "images" / "tiny" / "x86_64").iterdir()
    fingerprint = json.loads((vdir / "manifest.json").read_text())["lxc"]["fingerprint"]
    remote, name = f"pub-{fmt}", f"from-{fmt}"
    with serve_https(root, tmp_path) as (url, cert, requests):
        add_remote(lxd, remote, url, cert)
        try:
            listed = json.loads(lxd.lxc("image", "list", f"{remote}:", "--format",
                                        "json").stdout)
            assert [i["fingerprint"] for i in listed] == [fingerprint]
            assert {a["name"] for a in listed[0]["aliases"]} >= {"tiny", "tiny/amd64"}
            t1 = time.monotonic()
            lxd.launch(f"{remote}:tiny", name)
            launched = time.monotonic()
            try:
                assert "ID=busybox-fixture" in lxd.exec(name, "cat", "/etc/os-release")
                assert lxd.exec(name, "cat", "/etc/hostname").strip() == name
            finally:
                lxd.delete(name)
            for f in vdir.iterdir():
                if f.name not in ("manifest.json", "SHA256SUMS"):
                    assert f"GET /{f.relative_to(root)}" in requests, requests
            cached = json.loads(lxd.lxc("image", "list", "--format", "json").stdout)
            assert fingerprint in {i["fingerprint"] for i in cached}
            lxd.delete_image(fingerprint)  # LXD must download it again below
            print(f"\n{fmt}: publish {published - t0:.2f} s; launch from the HTTPS remote "
                  f"{launched - t1:.2f} s")
            if fmt == "split-xz":
                refuse_tampered(lxd, root, vdir, remote, url, fingerprint)
        finally:
            remove_remote(lxd, remote)


def refuse_tampered(lxd: LXD, root: Path, vdir: Path, remote: str,  # noqa: F811
                    url: str, fingerprint: str) -> None:
    """One byte of the published rootfs changed (in a new file: the store keeps its own):
    verification names it, and LXD refuses the download."""
    rootfs = vdir / "rootfs.tar.xz"
    data = bytearray(rootfs.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = vdir / ".tampered"
    tampered.write_bytes(bytes(data))
    tampered.replace(rootfs)
    with pytest.raises(PipelineError) as exc:
        publish.verify_tree(root)
    assert f"{rootfs.relative_to(root)}: sha256 differs" in exc.value.message
    with pytest.raises(LXDError) as refused:
        lxd.launch(f"{remote}:tiny", "from-tampered", timeout=120)
    lxd.delete("from-tampered")
    why = [line for line in str(refused.value).splitlines() if "Error:" in line]
    assert f"Hash mismatch for {url}/{rootfs.relative_to(root)}" in why[0], why
    print(f"LXD refused the tampered image: {why[0]}")
    left = json.loads(lxd.lxc("image", "list", "--format", "json").stdout)
    assert fingerprint not in {i["fingerprint"] for i in left}, "LXD kept the tampered image"
