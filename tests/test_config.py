"""pipeline/config.py: images.toml parsing, validation errors, sizes, and the README reference."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import config
from pipeline.config import (
    Accel,
    BaguetteOptions,
    DebianSource,
    SourceKind,
    TarballSource,
    parse_size,
)
from pipeline.core.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"
REFERENCE = README.parent / "docs" / "configuration.md"
REF_START = (
    "<!-- config-reference (generated from pipeline/config.py; a test keeps them equal) -->"
)
REF_END = "<!-- /config-reference -->"

MiB = 1024**2
GiB = 1024**3


def parse(tmp_path: Path, text: str) -> config.Config:
    return config.parse(textwrap.dedent(text), tmp_path / "images.toml")


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text)
    return info.value


def assert_names(exc: ConfigError, key_path: str) -> None:
    """The message starts with the key path, and there is a hint to act on."""
    assert exc.message.startswith(f"{key_path}:"), exc.message
    assert exc.hint.strip(), f"no hint for {exc.message!r}"


# --- a valid config --------------------------------------------------------------------------


def test_valid_config_parses_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "dotfiles").mkdir()
    (tmp_path / "rootfs.tar.zst").write_bytes(b"not read at parse time")
    cfg = parse(tmp_path, """
        [build]
        accel = "tcg"
        vm_memory = "2GiB"

        [images.work]
        source = "debian"
        description = "my box"

        [images.work.debian]
        packages = ["git", "vim"]

        [images.work.baguette]
        size = "4GiB"
        compression_level = 9

        [images.rootfs]
        source = "tarball"
        dotfiles = ""
        user = "dev"
        uid = 1234

        [images.rootfs.tarball]
        path = "rootfs.tar.zst"
    """)

    assert cfg.path == tmp_path / "images.toml"
    b = cfg.build
    assert b.default_images == ("work", "rootfs")  # all images, in declaration order
    assert b.accel is Accel.TCG
    assert b.vm_timeout == 900
    assert b.vm_memory == 2 * GiB
    assert b.kernel is None
    assert b.artifacts == tmp_path / "artifacts"  # relative to images.toml

    work = cfg.image("work")
    assert work.name == "work"
    assert work.source is SourceKind.DEBIAN
    assert work.description == "my box"
    assert work.arch == "x86_64"
    assert work.hostname == "work"
    assert work.dotfiles == tmp_path / "dotfiles"
    assert (work.user, work.uid) == ("user", 1000)
    assert work.debian == DebianSource("bookworm", "minbase", ("git", "vim"), "")
    assert work.tarball is None
    assert work.baguette == BaguetteOptions("baguette-root", 4 * GiB, 256 * MiB, 9)

    rootfs = cfg.image("rootfs")
    assert rootfs.source is SourceKind.TARBALL
    assert rootfs.tarball == TarballSource(tmp_path / "rootfs.tar.zst")
    assert rootfs.debian is None
    assert rootfs.dotfiles is None
    assert (rootfs.user, rootfs.uid) == ("dev", 1234)
    assert rootfs.baguette.size is None  # "auto"


def test_result_is_frozen(tmp_path: Path) -> None:
    cfg = parse(tmp_path, '[images.x]\nsource = "debian"\n')
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.build.vm_timeout = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image("x").baguette.slack = 0  # type: ignore[misc]


def test_missing_default_dotfiles_dir_means_none(tmp_path: Path) -> None:
    """The default `dotfiles` is optional; only an explicit one must exist."""
    assert parse(tmp_path, '[images.x]\nsource = "debian"\n').image("x").dotfiles is None


def test_default_images_and_hostname_explicit(tmp_path: Path) -> None:
    cfg = parse(tmp_path, """
        [build]
        default_images = ["b"]
        [images.a]
        source = "debian"
        hostname = "box"
        [images.b]
        source = "debian"
    """)
    assert cfg.build.default_images == ("b",)
    assert cfg.image("a").hostname == "box"
    assert cfg.image("b").hostname == "b"


def test_shipped_images_toml_loads() -> None:
    cfg = config.load(README.parent / "images.toml")
    assert cfg.build.default_images
    assert set(cfg.build.default_images) <= set(cfg.images)


def test_unknown_image_name_lookup(tmp_path: Path) -> None:
    cfg = parse(tmp_path, '[images.x]\nsource = "debian"\n')
    with pytest.raises(ConfigError) as info:
        cfg.image("y")
    assert "'y'" in info.value.message
    assert "x" in info.value.hint


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "images.toml"
    path.write_text('[images.x]\nsource = "debian"\n')
    assert list(config.load(path).images) == ["x"]


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in info.value.message
    assert "not found" in info.value.message
    assert info.value.hint.strip()


# --- errors a user can cause -----------------------------------------------------------------

IMG = '[images.x]\nsource = "debian"\n'


@pytest.mark.parametrize("text, key_path, detail", [
    # wrong types
    (IMG + 'uid = "1000"\n', "images.x.uid", "expected an integer"),
    (IMG + "[images.x.baguette]\ncompression_level = true\n",
     "images.x.baguette.compression_level", "expected an integer"),
    ("[build]\nvm_timeout = true\n" + IMG, "build.vm_timeout", "expected an integer"),
    (IMG + '[images.x.debian]\npackages = ["git", 3]\n',
     "images.x.debian.packages", "a list of strings"),
    ('[build]\ndefault_images = "x"\n' + IMG, "build.default_images", "a list of strings"),
    (IMG + "description = 5\n", "images.x.description", "expected a string"),
    (IMG + "dotfiles = false\n", "images.x.dotfiles", "a path string"),
    ('[images]\nx = "debian"\n', "images.x", "expected a table"),
    # unknown enum values
    ('[build]\naccel = "fast"\n' + IMG, "build.accel", "'fast' is not one of auto, kvm, tcg"),
    ('[images.x]\nsource = "gentoo"\n', "images.x.source", "'gentoo' is not one of"),
    ('[images.x]\nsource = "nix"\n[images.x.nix]\nflake = "no-such-dir"\n',
     "images.x.nix.flake", "holds no flake.nix"),
    (IMG + '[images.x.debian]\nvariant = "huge"\n', "images.x.debian.variant", "'huge'"),
    (IMG + 'arch = "arm64"\n', "images.x.arch", "'arm64'"),
    # sizes
    (IMG + '[images.x.baguette]\nslack = "lots"\n', "images.x.baguette.slack", "'lots'"),
    (IMG + '[images.x.baguette]\nslack = "-5MiB"\n', "images.x.baguette.slack", "'-5MiB'"),
    (IMG + '[images.x.baguette]\nsize = "4PiB"\n', "images.x.baguette.size", "'4PiB'"),
    (IMG + "[images.x.baguette]\nslack = true\n", "images.x.baguette.slack", "size"),
    ('[build]\nvm_memory = "1 gigabyte"\n' + IMG, "build.vm_memory", "'1 gigabyte'"),
    (IMG + '[images.x.baguette]\nsize = "64MiB"\n', "images.x.baguette.size", "too small"),
    # ranges and names
    (IMG + "[images.x.baguette]\ncompression_level = 0\n",
     "images.x.baguette.compression_level", "out of range"),
    (IMG + "[images.x.baguette]\ncompression_level = 20\n",
     "images.x.baguette.compression_level", "out of range"),
    (IMG + f'[images.x.baguette]\nlabel = "{"l" * 256}"\n', "images.x.baguette.label", "too long"),
    ('[images.Work]\nsource = "debian"\n', "images.Work", "bad image name"),
    ('[images.-x]\nsource = "debian"\n', "images.-x", "bad image name"),
    ('[images."a.b"]\nsource = "debian"\n', "images.a.b", "bad image name"),
    (IMG + 'user = "Root"\n', "images.x.user", "not a valid user name"),
    (IMG + 'user = "1abc"\n', "images.x.user", "not a valid user name"),
    (IMG + f'user = "{"u" * 33}"\n', "images.x.user", "not a valid user name"),
    (IMG + "uid = 0\n", "images.x.uid", "out of range"),
    (IMG + "uid = 65534\n", "images.x.uid", "out of range"),
    (IMG + "uid = -1\n", "images.x.uid", "out of range"),
    # missing things
    ('[images.x]\ndescription = "no source"\n', "images.x.source", "missing"),
    ('[images.x]\nsource = "tarball"\n', "images.x.tarball.path", "missing"),
    ('[images.x]\nsource = "tarball"\n[images.x.tarball]\npath = "nope.tar"\n',
     "images.x.tarball.path", "does not exist"),
    (IMG + 'dotfiles = "no-such-dir"\n', "images.x.dotfiles", "not a directory"),
    ('[build]\ndefault_images = ["x", "y"]\n' + IMG, "build.default_images", "'y'"),
    ('[build]\naccel = "auto"\n', "images", "no image declared"),
    ("", "images", "no image declared"),
])
def test_user_errors_name_the_key_path(tmp_path: Path, text: str, key_path: str,
                                       detail: str) -> None:
    exc = error(tmp_path, text)
    assert_names(exc, key_path)
    assert detail in exc.message


@pytest.mark.parametrize("text, key_path, suggestion", [
    ('[images.x]\nsorce = "debian"\n', "images.x.sorce", "did you mean 'source'?"),
    (IMG + '[images.x.baguette]\nslak = "1GiB"\n', "images.x.baguette.slak",
     "did you mean 'slack'?"),
    ('[build]\naccell = "kvm"\n' + IMG, "build.accell", "did you mean 'accel'?"),
    ('[imagez.x]\nsource = "debian"\n', "imagez", "did you mean 'images'?"),
])
def test_unknown_keys_suggest_the_near_one(tmp_path: Path, text: str, key_path: str,
                                           suggestion: str) -> None:
    exc = error(tmp_path, text)
    assert_names(exc, key_path)
    assert "unknown" in exc.message
    assert suggestion in exc.hint


def test_unknown_key_without_near_match_lists_known_keys(tmp_path: Path) -> None:
    exc = error(tmp_path, IMG + "zzzzzz = 1\n")
    assert_names(exc, "images.x.zzzzzz")
    assert "did you mean" not in exc.hint
    for key in ("source", "uid", "debian", "baguette"):
        assert key in exc.hint


def test_debian_table_on_tarball_image(tmp_path: Path) -> None:
    (tmp_path / "root.tar").write_bytes(b"")
    exc = error(tmp_path, """
        [images.x]
        source = "tarball"
        [images.x.tarball]
        path = "root.tar"
        [images.x.debian]
        suite = "trixie"
    """)
    assert_names(exc, "images.x.debian")
    assert "'tarball'" in exc.message


def test_invalid_toml(tmp_path: Path) -> None:
    exc = error(tmp_path, '[images.x\nsource = "debian"\n')
    assert str(tmp_path / "images.toml") in exc.message
    assert "not valid TOML" in exc.message
    assert exc.hint.strip()


def test_error_str_carries_the_hint(tmp_path: Path) -> None:
    exc = error(tmp_path, IMG + "uid = 0\n")
    assert str(exc) == f"{exc.message}\n  hint: {exc.hint}"


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (0, 0),
    (4096, 4096),
    ("0", 0),
    ("1", 1),
    ("512B", 512),
    ("512b", 512),
    ("1K", 1024),
    ("1KiB", 1024),
    ("1kb", 1024),
    ("200MiB", 200 * MiB),
    ("200 mib", 200 * MiB),
    (" 64MiB ", 64 * MiB),
    ("4G", 4 * GiB),
    ("4GB", 4 * GiB),
    ("4GiB", 4 * GiB),
    ("1TiB", 1024**4),
    ("1.5GiB", 3 * GiB // 2),
    ("0.5K", 512),
])
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", [
    "", "MiB", "-1MiB", "1.2.3G", "4PiB", "4 GiBs", "1e3", "GiB4", "four",
    True, False, -1, 1.5, None, ["1GiB"],
])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@given(st.integers(min_value=0, max_value=2**40))
def test_parse_size_mib_round_trip(n: int) -> None:
    assert parse_size(f"{n}MiB") == n * MiB
    assert parse_size(f"{n}M") == n * MiB


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["", "B", "b"]))
def test_parse_size_bytes_round_trip(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n
    assert parse_size(n) == n


# --- the README reference --------------------------------------------------------------------


def test_readme_holds_the_generated_reference() -> None:
    """docs/configuration.md's config table is exactly reference(): docs and SETTINGS cannot
    drift."""
    text = REFERENCE.read_text()
    assert text.count(REF_START) == 1 and text.count(REF_END) == 1
    between = text.split(REF_START, 1)[1].split(REF_END, 1)[0]
    assert between == "\n" + config.reference(), (
        "docs/configuration.md's config reference is stale; replace it with "
        "pipeline.config.reference()")


def test_reference_lists_every_setting() -> None:
    ref = config.reference()
    for section, settings in config.SECTIONS.items():
        assert f"`[{section}]`" in ref
        for s in settings:
            assert f"| `{s.key}` |" in ref


def test_the_shipped_arm64_image_is_the_default_image_for_aarch64() -> None:
    """images.toml's bookworm-arm64 (built and published by CI beside bookworm) differs from
    the default image only in its architecture and description, so the two cannot drift."""
    import tomllib

    shipped = tomllib.loads((README.parent / "images.toml").read_text())["images"]
    x86, arm = dict(shipped["bookworm"]), dict(shipped["bookworm-arm64"])
    assert arm.pop("arch") == "aarch64" and x86.pop("arch", "x86_64") == "x86_64"
    x86.pop("description")
    arm.pop("description")
    assert arm == x86
