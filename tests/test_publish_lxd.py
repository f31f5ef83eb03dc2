"""A published tree served over HTTPS as a simplestreams remote of the real LXD daemon
(tests/lxd.py): `lxc remote add ... --protocol simplestreams`, then `lxc launch REMOTE:ALIAS`;
and a tampered rootfs that verification reports and LXD refuses."""

from __future__ import annotations

import datetime
import json
import shutil
import time
from pathlib import Path

import pytest

from pipeline import publish
from pipeline.errors import PipelineError
from tests.https import serve_https
from tests.lxd import LXD, LXDError, lxd  # noqa: F401 (the fixture)
from tests.test_publish import built, write_project

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


def test_launch_from_the_published_tree_and_refuse_a_tampered_one(
        tmp_path: Path, lxd: LXD) -> None:  # noqa: F811
    ctx = built(write_project(tmp_path, rich=False))
    t0 = time.monotonic()
    done = publish.publish(ctx, T0)
    published = time.monotonic()
    root = done.root
    (vdir,) = (root / "images" / "tiny" / "x86_64").iterdir()
    fingerprint = json.loads((vdir / "manifest.json").read_text())["lxc"]["fingerprint"]
    with serve_https(root, tmp_path) as (url, cert, requests):
        add_remote(lxd, "pub", url, cert)
        try:
            listed = json.loads(lxd.lxc("image", "list", "pub:", "--format", "json").stdout)
            assert [i["fingerprint"] for i in listed] == [fingerprint]
            assert {a["name"] for a in listed[0]["aliases"]} >= {"tiny", "tiny/amd64"}
            t1 = time.monotonic()
            lxd.launch("pub:tiny", "from-remote")
            launched = time.monotonic()
            try:
                assert "ID=busybox-fixture" in lxd.exec("from-remote", "cat", "/etc/os-release")
                assert lxd.exec("from-remote", "cat", "/etc/hostname").strip() == "from-remote"
            finally:
                lxd.delete("from-remote")
            assert f"GET /{vdir.relative_to(root)}/rootfs.tar.xz" in requests
            cached = json.loads(lxd.lxc("image", "list", "--format", "json").stdout)
            assert fingerprint in {i["fingerprint"] for i in cached}
            lxd.delete_image(fingerprint)  # LXD must download it again below
            print(f"\npublish {published - t0:.2f} s; launch from the HTTPS remote "
                  f"{launched - t1:.2f} s")

            # one byte of the published rootfs changed (a new file: the store keeps its own)
            rootfs = vdir / "rootfs.tar.xz"
            data = bytearray(rootfs.read_bytes())
            data[len(data) // 2] ^= 0x01
            tampered = vdir / ".tampered"
            tampered.write_bytes(bytes(data))
            tampered.replace(rootfs)
            with pytest.raises(PipelineError) as exc:
                publish.verify(root)
            assert f"{rootfs.relative_to(root)}: sha256 differs" in exc.value.message
            with pytest.raises(LXDError) as refused:
                lxd.launch("pub:tiny", "from-tampered", timeout=120)
            lxd.delete("from-tampered")
            why = [line for line in str(refused.value).splitlines() if "Error:" in line]
            assert f"Hash mismatch for {url}/{rootfs.relative_to(root)}" in why[0], why
            print(f"LXD refused the tampered image: {why[0]}")
            left = json.loads(lxd.lxc("image", "list", "--format", "json").stdout)
            assert fingerprint not in {i["fingerprint"] for i in left}
        finally:
            remove_remote(lxd, "pub")
