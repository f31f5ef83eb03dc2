"""pipeline/publish/pkgdiff.py: the package diff a release carries, from two manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.publish import pkgdiff


def manifest(path: Path, packages: list[tuple[str, str]], kind: str = "dpkg") -> Path:
    listed = ([{"name": n, "version": v, "architecture": "amd64"} for n, v in packages]
              if kind == "dpkg" else [n for n, _ in packages])
    path.write_text(json.dumps({"packages": {"format": kind, "list": listed}}))
    return path


def test_added_removed_and_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = manifest(tmp_path / "old.json", [("bash", "5.2-1"), ("curl", "7.88"), ("vim", "9.0")])
    new = manifest(tmp_path / "new.json", [("bash", "5.2-2"), ("curl", "7.88"), ("git", "2.39")])
    assert pkgdiff.main([str(old), str(new)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["1 added, 1 removed, 1 changed (3 packages).", "- added `git:amd64` 2.39",
                   "- removed `vim:amd64` 9.0", "- `bash:amd64` 5.2-1 → 5.2-2"]
    assert pkgdiff.diff(pkgdiff.read_packages(new), pkgdiff.read_packages(new)) == (
        "No package changed (3 packages).\n")
    assert pkgdiff.diff(None, pkgdiff.read_packages(new)).startswith("3 packages (no previous")


def test_nix_store_paths_by_name(tmp_path: Path) -> None:
    h1, h2 = "a" * 32, "b" * 32
    old = manifest(tmp_path / "o.json", [(f"/nix/store/{h1}-git-2.44", "")], "nix-store-paths")
    new = manifest(tmp_path / "n.json", [(f"/nix/store/{h2}-git-2.44", ""),
                                         (f"/nix/store/{h1}-htop-3.3", "")], "nix-store-paths")
    text = pkgdiff.diff(pkgdiff.read_packages(old), pkgdiff.read_packages(new))
    assert "1 added, 0 removed, 1 changed" in text and f"`git-2.44` {h1} → {h2}" in text


def test_a_broken_manifest_is_one_message(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{\"files\": {}}")
    assert pkgdiff.main([str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad.json'}: not a published manifest.json")
    assert "hint:" in err
