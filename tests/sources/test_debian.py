"""Source `debian`: the host's apt mirror, the package list, the key, the mmdebstrap call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import config
from pipeline.core.errors import ToolError
from pipeline.sources import debian
from pipeline.store.hashing import FileHashMemo

MIRROR = "http://mirror.example.org/debian"


def make_image(tmp_path: Path, *, suite: str = "bookworm", packages: tuple[str, ...] = (),
               mirror: str = MIRROR, variant: str = "minbase",
               integration: bool = False) -> config.Image:
    toml = f"""
[images.deb]
source = "debian"
dotfiles = ""
chromeos_integration = {"true" if integration else "false"}

[images.deb.debian]
suite = "{suite}"
variant = "{variant}"
packages = {json.dumps(list(packages))}
mirror = "{mirror}"
"""
    return config.parse(toml, tmp_path / "images.toml").image("deb")


@pytest.fixture
def apt(tmp_path: Path) -> Path:
    (tmp_path / "apt" / "sources.list.d").mkdir(parents=True)
    return tmp_path / "apt"


# --- host_mirror -----------------------------------------------------------------------------


def test_one_line_sources_with_options(apt: Path) -> None:
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://updates.example/debian bookworm-updates main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://one.example/debian/ bookworm main contrib\n"
        "deb http://later.example/debian bookworm main\n"
    )
    assert debian.host_mirror("bookworm", apt) == "http://one.example/debian"
    assert debian.host_mirror("bookworm-updates", apt) == "http://updates.example/debian"


def test_list_files_in_sources_list_d(apt: Path) -> None:
    (apt / "sources.list.d" / "b.list").write_text("deb http://b.example/debian trixie main\n")
    (apt / "sources.list.d" / "a.list").write_text("deb http://a.example/debian trixie main\n")
    assert debian.host_mirror("trixie", apt) == "http://a.example/debian"


def test_deb822_sources_stanzas(apt: Path) -> None:
    (apt / "sources.list.d" / "debian.sources").write_text(
        "# a comment before the first stanza\n"
        "Types: deb\n"
        "URIs: http://disabled.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Enabled: no\n"
        "\n"
        "Types: deb-src\n"
        "URIs: http://src.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "\n"
        "Types: deb deb-src\n"
        "URIs: http://match.example/debian/ http://second.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://later.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
    )
    assert debian.host_mirror("bookworm", apt) == "http://match.example/debian"


def test_deb822_signed_by_block_does_not_confuse_fields(apt: Path) -> None:
    """An inline key (indented continuation lines holding colons) is not a field."""
    (apt / "sources.list.d" / "k.sources").write_text(
        "Types: deb\n"
        "URIs: http://keyed.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Signed-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        " Enabled: no\n"
        " .\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n"
    )
    assert debian.host_mirror("bookworm", apt) == "http://keyed.example/debian"


def test_nothing_matching_gives_default(apt: Path) -> None:
    (apt / "sources.list").write_text("deb http://other.example/debian bullseye main\n")
    (apt / "sources.list.d" / "x.sources").write_text(
        "Types: deb\nURIs: http://x.example/debian\nSuites: bullseye\nComponents: main\n")
    assert debian.host_mirror("bookworm", apt) == debian.DEFAULT_MIRROR


def test_missing_apt_dir_gives_default(tmp_path: Path) -> None:
    assert debian.host_mirror("bookworm", tmp_path / "nowhere") == debian.DEFAULT_MIRROR


# --- packages, mirror and inputs -----------------------------------------------------------


def test_packages_always_has_systemd_sysv_sorted_unique(tmp_path: Path) -> None:
    assert debian.packages(make_image(tmp_path)) == ["systemd-sysv"]
    image = make_image(tmp_path, packages=("vim", "git", "vim", "systemd-sysv", "curl"))
    assert debian.packages(image) == ["curl", "git", "systemd-sysv", "vim"]


def test_chromeos_integration_adds_what_the_guest_tools_need(tmp_path: Path) -> None:
    got = debian.packages(make_image(tmp_path, packages=("dbus", "vim"), integration=True))
    assert got == sorted({"dbus", "dbus-user-session", "libpam-systemd", "udev",
                          "openssh-sftp-server", "xdg-utils", "xauth", "xxd", "systemd-sysv",
                          "ifupdown", "isc-dhcp-client", "vim"})


def test_guest_sources_are_deb822_with_updates_and_security(tmp_path: Path) -> None:
    text = debian.guest_sources(make_image(tmp_path, mirror=""))
    stanzas = [dict(ln.split(": ", 1) for ln in s.splitlines()) for s in text.split("\n\n")]
    assert [s["Suites"] for s in stanzas] == ["bookworm bookworm-updates", "bookworm-security"]
    assert [s["URIs"] for s in stanzas] == [debian.DEFAULT_MIRROR, debian.SECURITY_MIRROR]
    assert all(s["Types"] == "deb" and s["Components"] == "main" for s in stanzas)
    mine = debian.guest_sources(make_image(tmp_path, mirror=MIRROR))
    assert f"URIs: {MIRROR}\n" in mine, "a configured mirror is the guest's too"
    assert "security" not in debian.guest_sources(make_image(tmp_path, suite="sid"))


def test_configured_mirror_wins_without_trailing_slash(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "host_mirror", lambda suite: pytest.fail("host consulted"))
    assert debian.mirror(make_image(tmp_path, mirror=MIRROR + "/")) == MIRROR


def test_empty_mirror_asks_the_host_for_the_suite(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "host_mirror", lambda suite: f"http://host.example/{suite}")
    assert debian.mirror(make_image(tmp_path, suite="trixie", mirror="")) == (
        "http://host.example/trixie")


def test_inputs_follow_packages_suite_and_mirror(tmp_path: Path) -> None:
    memo = FileHashMemo(tmp_path / "memo.json")

    def key(**kw: object) -> str:
        return debian.inputs(make_image(tmp_path, **kw), memo).key  # type: ignore[arg-type]

    base = key()
    assert key() == base
    assert key(packages=("vim",)) != base
    assert key(packages=("vim", "git")) == key(packages=("git", "vim", "vim"))
    assert key(suite="trixie") != base
    assert key(mirror="http://other.example/debian") != base
    assert key(variant="apt") != base
    si = debian.inputs(make_image(tmp_path, packages=("vim",)), memo)
    assert si.stage == "base"
    assert si.inputs["packages"] == ["systemd-sysv", "vim"]
    assert si.inputs["mirror"] == MIRROR


# --- build ----------------------------------------------------------------------------------


def test_build_calls_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv, **kw):  # type: ignore[no-untyped-def]
        calls.append([str(a) for a in argv])
        Path(argv[-2]).write_bytes(b"a tarball")
        assert kw.get("hint")

    monkeypatch.setattr(debian, "run", fake_run)
    out = tmp_path / "store" / "base.tar"
    out.parent.mkdir()
    debian.make_base(make_image(tmp_path, packages=("vim", "git"), variant="apt"), out)

    assert len(calls) == 1
    argv = calls[0]
    target = argv[-2]
    assert argv[:5] == ["mmdebstrap", "--quiet", "--variant=apt", "--architectures=amd64",
                        "--include=git,systemd-sysv,vim"]
    assert argv[-3:] == ["bookworm", target, f"deb {MIRROR} bookworm main"]
    hooks = [a.removeprefix("--customize-hook=") for a in argv[5:-3]]
    assert hooks[0] == 'rm -f "$1/etc/apt/sources.list"'
    assert hooks[1].endswith('> "$1/etc/apt/sources.list.d/debian.sources"')
    assert "bookworm-security" in hooks[1]
    assert Path(target).parent == out.parent and target.endswith(".tar")
    assert Path(target).name != out.name
    assert out.read_bytes() == b"a tarball"
    assert sorted(p.name for p in out.parent.iterdir()) == ["base.tar"]


def test_failed_build_leaves_no_partial_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(argv, **kw):  # type: ignore[no-untyped-def]
        Path(argv[-2]).write_bytes(b"half a tarb")
        raise ToolError("mmdebstrap failed (exit 1)", stderr="E: cannot reach mirror")

    monkeypatch.setattr(debian, "run", failing_run)
    out = tmp_path / "store" / "base.tar"
    out.parent.mkdir()
    with pytest.raises(ToolError, match="mmdebstrap failed"):
        debian.make_base(make_image(tmp_path), out)
    assert list(out.parent.iterdir()) == []
