import subprocess
import sys

import pytest

from seglib.core.paths import get_paths, project_root


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
    code = "import seglib.core.paths as p, seglib; print(p.get_paths('smoke').root); print(seglib.__file__)"
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1].startswith(str(site))  # the copy, not the checkout, was imported
    assert out[0] == str(work.parent / "data")


def _make_run(paths, name, created=None, marker="run_info.json"):
    folder = paths.runs / name
    folder.mkdir(parents=True)
    body = f'{{"created": "{created}"}}' if created else "{}"
    (folder / marker).write_text(body)
    return folder


def test_runs_are_named_folders_listed_oldest_first(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGLIB_RUN", raising=False)
    paths = get_paths("smoke", tmp_path)
    assert paths.list_runs() == [] and paths.latest_run() is None
    with pytest.raises(FileNotFoundError, match="03_train"):
        paths.run  # noqa: B018 - no run yet: the error names the notebook that makes one
    _make_run(paths, "zeta", "2025-01-01T10:00:00+00:00")
    _make_run(paths, "alpha", "2025-03-01T10:00:00.5+00:00")
    _make_run(paths, "mid", "2025-02-01T10:00:00+00:00")
    (paths.runs / "notes").mkdir()  # no run marker: not a run
    assert paths.list_runs() == ["zeta", "mid", "alpha"]
    assert paths.run_dirs() == [paths.runs / n for n in ("zeta", "mid", "alpha")]
    assert paths.run == paths.runs / "alpha"  # nothing selected: the latest
    assert paths.layout.best_checkpoint == tmp_path / "runs" / "smoke" / "alpha" / "best.pt"
    picked = paths.with_run("zeta")
    assert (
        picked.run == paths.run_dir("zeta") and picked.layout.figures == paths.runs / "zeta/figures"
    )
    assert picked.layout.operating_point.name == "operating_point.json"
    assert paths.data_figures == tmp_path / "subset" / "smoke" / "figures"


def test_the_run_comes_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLIB_RUN", "from-env")
    assert get_paths("smoke", tmp_path).run == tmp_path / "runs" / "smoke" / "from-env"
    assert get_paths("smoke", tmp_path, run="given").run_name == "given"
    monkeypatch.setenv("SEGLIB_RUN", "../../etc")
    with pytest.raises(ValueError, match="run name"):
        get_paths("smoke", tmp_path)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "eval", "x" * 65, "sp ace"])
def test_run_names_that_could_escape_or_confuse_are_refused(bad, tmp_path):
    from seglib.core.paths import check_run_name

    with pytest.raises(ValueError, match="run name"):
        check_run_name(bad)
    with pytest.raises(ValueError):
        get_paths("smoke", tmp_path).run_dir(bad)


def test_runs_from_the_train_command_count_by_their_config(tmp_path):
    paths = get_paths("smoke", tmp_path)
    _make_run(paths, "cli-run", marker="config.json")
    assert paths.list_runs() == ["cli-run"]
