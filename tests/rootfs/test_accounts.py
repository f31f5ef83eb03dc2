"""The user the customize stage adds must not take over an existing account or group: a user
named like a group, or a uid whose gid is another group's, would get that group's rights
(`%sudo` in sudoers); and a user name that is a system account gets a hint images.toml
accepts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipeline import config
from pipeline.core.errors import ConfigError
from pipeline.rootfs.customize import customize

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = b"root:x:0:\nsudo:x:27:\nusers:x:100:\n"


def base(path: Path, group: bytes = GROUP) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("./", None), ("./etc/", None), ("./etc/passwd", PASSWD),
                           ("./etc/group", group)):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            ti.mode, ti.size = 0o755, len(data or b"")
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def build(tmp_path: Path, extra: str, group: bytes = GROUP) -> Path:
    tar = base(tmp_path / "base.tar", group)
    image = config.parse(f'[images.box]\nsource = "tarball"\ndotfiles = ""\n{extra}\n'
                         '[images.box.tarball]\npath = "base.tar"\n',
                         tmp_path / "images.toml").image("box")
    out = tmp_path / "rootfs.tar"
    (tmp_path / "work").mkdir(exist_ok=True)
    customize(tar, image, out, work_dir=tmp_path / "work", source_date_epoch=1)
    return out


@pytest.mark.parametrize("extra, key, says", [
    ('user = "sudo"', "images.box.user", "group 'sudo'"),
    ("uid = 27", "images.box.uid", "gid 27 already belongs to group 'sudo'"),
    ('user = "users"\nuid = 1000', "images.box.user", "group 'users'"),
])
def test_a_user_that_would_join_an_existing_group_is_refused(tmp_path: Path, extra: str,
                                                            key: str, says: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(tmp_path, extra)
    assert exc.value.message.startswith(f"{key}:") and says in exc.value.message
    assert exc.value.hint
    assert not (tmp_path / "rootfs.tar").exists()


def test_the_user_s_own_group_already_there_is_not_added_twice(tmp_path: Path) -> None:
    out = build(tmp_path, "", GROUP + b"user:x:1000:\n")
    with tarfile.open(out) as tf:
        f = tf.extractfile("./etc/group")
        assert f is not None
        assert f.read().decode().count("user:x:1000:") == 1


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_system_account_as_user_gets_a_hint_the_config_accepts(tmp_path: Path,
                                                                 user: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(tmp_path, f'user = "{user}"')
    assert "uid = 0" not in exc.value.hint and "uid = 65534" not in exc.value.hint
    assert "choose another user name" in exc.value.hint
