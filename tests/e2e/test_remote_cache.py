"""The store shared through a real OCI registry (tests/support/registry.py), through the doit
CLI: machine A builds and pushes; machine B, an empty artifacts directory with the same
config, pulls every stage and builds none, and its image is A's byte for byte. Then the
faults: a registry that is down, a bad password, a corrupted blob, each with the build going
on locally, or failing in one line with `required = true`."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest

from tests.support.doit import doit
from tests.support.registry import Registry, docker_config, free_port
from tests.support.rootfs import add_sbin_init, write_rich_rootfs
from tests.support.tools import require_vm

pytestmark = pytest.mark.vm

IMAGE = "baguette_rootfs.img.zst"
# the step titles of a stage that builds (stages.py), and of the appliance
BUILD_STEPS = ("==> Base rootfs from", "==> Customizing the rootfs", "==> Packing the btrfs",
               "==> Compressing", "==> Building the VM helper appliance")
PULLED = ("base", "rootfs", "pack", "baguette", "appliance")


def machine(root: Path, name: str, remote: str, cache: str = "") -> Path:
    """A project directory as a checkout on another machine holds it: the config (its own
    artifacts directory), the rootfs tarball, the dotfiles."""
    d = root / name
    (d / "dotfiles").mkdir(parents=True)
    (d / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")
    shutil.copy(root / "rootfs.tar", d / "rootfs.tar")
    (d / "images.toml").write_text(f"""
[build]
accel = "tcg"
artifacts = "{d / 'artifacts'}"
[cache]
remote = "{remote}"
{cache}
[images.first]
source = "tarball"
dotfiles = "dotfiles"
[images.first.tarball]
path = "rootfs.tar"
""")
    return d


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, str, dict[str, str]]:
    """Machine A built the image and pushed every entry (credentials from a Docker config,
    as `docker login` writes it)."""
    require_vm()
    root = tmp_path_factory.mktemp("remote-e2e")
    add_sbin_init(write_rich_rootfs(root / "rootfs.tar"))
    remote = f"oci://{registry.host}/e2e/guest-cache"
    env = {"REQUESTS_CA_BUNDLE": str(registry.ca),
           "DOCKER_CONFIG": str(docker_config(root / "docker", registry.host))}
    a = machine(root, "a", remote, "push = true")
    build = doit(a, "build:baguette", env=env)
    for stage in PULLED:
        assert f"==> Pushing {stage} " in build.stderr, build.stderr[-3000:]
    assert "warning: remote cache" not in build.stderr
    return root, remote, env


def test_an_empty_machine_pulls_every_stage_and_builds_none(
        pushed: tuple[Path, str, dict[str, str]]) -> None:
    root, remote, env = pushed
    b = machine(root, "b", remote)
    build = doit(b, "build:baguette", env=env)
    for stage in PULLED:
        assert f"==> Pulling {stage} " in build.stderr, build.stderr[-3000:]
    for title in BUILD_STEPS:
        assert title not in build.stderr, build.stderr[-3000:]
    assert filecmp.cmp(root / "a" / "artifacts" / "first" / IMAGE,
                       b / "artifacts" / "first" / IMAGE, shallow=False)
    assert doit(b, "fsck", env=env).returncode == 0  # every pulled entry verifies in full
    again = doit(b, "build:baguette", env=env)
    assert "==> Pulling" not in again.stderr and "==> " not in again.stderr


def test_registry_down_builds_locally_or_fails_when_required(
        pushed: tuple[Path, str, dict[str, str]]) -> None:
    root, _remote, env = pushed
    down = f"oci://127.0.0.1:{free_port()}/e2e/guest-cache"  # nothing listens there
    c = machine(root, "down", down)
    build = doit(c, "base:first", env=env)
    warnings = [line for line in build.stderr.splitlines() if "remote cache" in line]
    assert len(warnings) == 1, build.stderr  # said once, then the remote is left alone
    assert "cannot be reached (Connection refused)" in warnings[0]
    assert "the build goes on locally" in warnings[0]
    assert "==> Base rootfs from" in build.stderr

    d = machine(root, "required", down, "required = true")
    failed = doit(d, "base:first", env=env, check=False)
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "Traceback" not in out
    assert "remote cache (pull):" in out and "Connection refused" in out
    assert not list((d / "artifacts" / "store").glob("base/*"))


def test_bad_password_is_one_line_and_the_build_goes_on(
        pushed: tuple[Path, str, dict[str, str]], registry: Registry) -> None:
    root, remote, env = pushed
    e = machine(root, "badpw", remote)
    bad = dict(env, DOCKER_CONFIG=str(docker_config(root / "docker-bad", registry.host,
                                                    password="wrong")))
    build = doit(e, "base:first", env=bad)
    (warning,) = [line for line in build.stderr.splitlines() if "remote cache" in line]
    assert "refused the credentials" in warning and "401" in warning
    assert "docker-bad/config.json" in warning and "wrong" not in warning
    assert "==> Base rootfs from" in build.stderr


def test_a_corrupted_blob_never_enters_the_store(
        pushed: tuple[Path, str, dict[str, str]], registry: Registry) -> None:
    root, remote, env = pushed
    (base_entry,) = (root / "a" / "artifacts" / "store" / "base").glob("[!.]*")
    manifest = json.loads(registry.manifest_file("e2e/guest-cache", base_entry.name).read_text())
    (layer,) = [x for x in manifest["layers"]
                if x["annotations"]["org.opencontainers.image.title"] == "base.tar"]
    blob = registry.blob_file(layer["digest"])
    original = blob.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    try:
        f = machine(root, "corrupt", remote)
        build = doit(f, "base:first", env=env)
        (warning,) = [line for line in build.stderr.splitlines() if "remote cache" in line]
        assert layer["digest"] in warning and "base.tar" in warning, warning
        assert "==> Base rootfs from" in build.stderr  # built here instead
        assert (f / "artifacts" / "store" / "base" / base_entry.name / "base.tar").read_bytes() \
            == (base_entry / "base.tar").read_bytes()
        g = machine(root, "corrupt-required", remote, "required = true")
        failed = doit(g, "base:first", env=env, check=False)
        out = failed.stdout + failed.stderr
        assert failed.returncode != 0 and layer["digest"] in out and "Traceback" not in out
        assert not list((g / "artifacts" / "store").glob("base/*"))
        assert not list((g / "artifacts" / "store").glob("base/.*.tmp"))
    finally:
        blob.write_bytes(original)
