"""Shared fixtures: the real VM helper appliance, and the rich rootfs tarball
(tests/support/rootfs.py). Helpers live in tests/support/, never in test files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.store.entries import Store
from pipeline.store.hashing import FileHashMemo
from pipeline.store.layout import Layout
from pipeline.vmhelper import appliance as appliance_mod
from tests.support.registry import Registry, running_registry
from tests.support.rootfs import write_rich_rootfs
from tests.support.tools import require_vm


@pytest.fixture(scope="session")
def store_root() -> Iterator[Path]:
    """A store outside pytest's 0700 temporary tree, so an unprivileged user can read it."""
    root = Path(tempfile.mkdtemp(prefix="pipeline-test-store."))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def appliance(store_root: Path) -> appliance_mod.Appliance:
    """The real appliance for this host's kernel, built once per test session."""
    require_vm()
    return appliance_mod.ensure(Store(Layout(store_root)), None,
                                FileHashMemo(store_root / "filehash.json"))


@pytest.fixture
def rich_rootfs(tmp_path: Path) -> Path:
    return write_rich_rootfs(tmp_path / "rootfs.tar")



@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1, TLS from a test CA, htpasswd auth; one per
    session (each test uses its own repository in it)."""
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg
