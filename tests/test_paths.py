import subprocess
import sys

import pytest

from seglib.paths import get_paths, project_root


def test_paths_follow_profile_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLIB_DATA", str(tmp_path))
    monkeypatch.setenv("SEGLIB_PROFILE", "smoke")
    paths = get_paths()
    assert paths.profile == "smoke"
    assert paths.coco_root == tmp_path / "synthetic-coco" / "smoke"
    assert paths.split_json("val") == tmp_path / "subset" / "smoke" / "val.json"
    assert get_paths("seed").coco_root == tmp_path / "coco"
    with pytest.raises(FileNotFoundError, match="notebook 01"):
        paths.require(paths.subset, "notebook 01")
    monkeypatch.setenv("SEGLIB_PROFILE", "fast")
    with pytest.raises(ValueError, match="SEGLIB_PROFILE"):
        get_paths()


def test_default_data_root_is_found_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGLIB_DATA", raising=False)
    (tmp_path / "proj" / "notebooks").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path / "proj" / "notebooks")
    assert project_root() == tmp_path / "proj"
    assert get_paths("smoke").root == tmp_path / "proj" / "data"
    monkeypatch.setenv("SEGLIB_DATA", str(tmp_path / "elsewhere"))
    assert get_paths("smoke").root == tmp_path / "elsewhere"


@pytest.mark.slow
def test_non_editable_install_keeps_data_out_of_site_packages(tmp_path):
    """Install a copy of the package (not editable) and ask it where data lives."""
    import shutil
    from pathlib import Path

    import seglib

    src = Path(seglib.__file__).parent
    site = tmp_path / "site"
    shutil.copytree(src, site / "seglib", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "checkout" / "notebooks"
    work.mkdir(parents=True)
    (work.parent / "data").mkdir()
    code = (
        "import seglib.paths as p, seglib; print(p.get_paths('smoke').root); print(seglib.__file__)"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1].startswith(str(site))  # the copy, not the checkout, was imported
    assert out[0] == str(work.parent / "data")
