"""Static checks on the committed notebooks; `make notebooks` executes them under nbval."""

import ast
import re

import nbformat
import pytest

from seglib.app.notebook_runner import notebook_paths

NOTEBOOKS = notebook_paths()


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def nb(request):
    return nbformat.read(request.param, as_version=4)


def test_the_series_is_complete():
    assert [p.stem[:2] for p in NOTEBOOKS[:5]] == ["01", "02", "03", "04", "05"]
    assert NOTEBOOKS[0].name == "01_data_subset.ipynb"
    assert NOTEBOOKS[2].name == "03_train.ipynb"
    assert NOTEBOOKS[4].name == "05_inference_viz.ipynb"


def test_committed_without_outputs_or_execution_counts(nb):
    for cell in _code(nb):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_no_def_no_class_no_lambda(nb):
    for cell in _code(nb):
        tree = ast.parse(cell.source)
        defined = [
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
        ]
        assert not defined, f"logic belongs in seglib, not in a notebook cell:\n{cell.source}"


def test_no_sys_path_hacks_and_no_spelled_out_data_paths(nb):
    for cell in _code(nb):
        assert "sys.path" not in cell.source
        # every location comes from seglib.core.paths.get_paths
        assert not re.search(r"[\"']\.{0,2}/?data/", cell.source), cell.source


def test_opens_with_title_purpose_inputs_outputs_and_ends_with_a_pointer(nb):
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    for word in ("**Purpose.**", "**Inputs.**", "**Outputs.**"):
        assert word in first.source
    assert last.cell_type == "markdown" and last.source.startswith("## Summary")
    assert "**Next:**" in last.source or "end of the series" in last.source


def test_numbered_steps_each_after_a_markdown_cell(nb):
    steps = [
        c.source.splitlines()[0]
        for c in nb.cells
        if c.cell_type == "markdown" and c.source.startswith("## ")
    ]
    numbered = [s for s in steps if re.match(r"## \d+\. ", s)]
    assert [int(re.match(r"## (\d+)", s).group(1)) for s in numbered] == list(
        range(1, len(numbered) + 1)
    )
    assert len(numbered) >= 3


def test_same_first_cell_pattern_imports_seed_device_profile():
    tails = set()
    for path in NOTEBOOKS:
        first = _code(nbformat.read(path, as_version=4))[0].source
        assert first.lstrip().startswith(("from seglib", "import"))
        tail = first[first.index("profile = ") :]
        tails.add(tail)
        for needed in (
            "default_profile()",
            "TrainConfig.from_profile(profile, **overrides.env_overrides())",
            "seed_everything",
            "resolve_device",
        ):
            assert needed in tail
    assert len(tails) == 1, "the setup cell must be the same in every notebook"


def test_later_notebooks_name_the_notebook_that_makes_their_inputs():
    for path in NOTEBOOKS[1:]:
        source = "\n".join(c.source for c in _code(nbformat.read(path, as_version=4)))
        assert "paths.require(" in source
        assert re.search(r"notebooks/0\d_\w+\.ipynb", source)


def test_no_output_checks_that_cannot_fail(nb):
    # nbval compares no figure, and the committed notebooks hold no outputs, so a checked cell
    # could only assert "prints nothing". What the notebooks produce is checked instead by
    # seglib.app.headless.check_outputs after the nbval run (notebooks/conftest.py).
    for cell in _code(nb):
        assert "NBVAL_CHECK_OUTPUT" not in cell.source and "NBVAL_IGNORE" not in cell.source


def test_each_notebook_saves_exactly_the_figures_it_declares(nb):
    from seglib.viz.files import NOTEBOOK_FIGURES

    stem = next(p.stem for p in NOTEBOOKS if nbformat.read(p, as_version=4) == nb)
    source = "\n".join(c.source for c in _code(nb))
    saved = re.findall(r"\b\w*paths\.([\w.]+) / \"(\d\d_\w+\.png)\"", source)
    folder, names = NOTEBOOK_FIGURES[stem]
    assert sorted(name for _, name in saved) == sorted(names)
    assert {f for f, _ in saved} == {folder}, "figures go to the folder the manifest names"
    assert source.count("files.save_figure(") == len(names)


def test_training_happens_in_a_plain_cell_not_a_widget_callback():
    nb = nbformat.read(NOTEBOOKS[2], as_version=4)
    sources = [c.source for c in _code(nb)]
    form_cell = next(i for i, s in enumerate(sources) if "train_form(" in s)
    read_cell = next(i for i, s in enumerate(sources) if "form.request(" in s)
    train_cell = next(i for i, s in enumerate(sources) if "trainer.train(" in s)
    assert form_cell < read_cell < train_cell
    assert not any(
        word in "\n".join(sources) for word in ("interact(", "interact_manual", ".observe(")
    )


def test_the_training_cell_reads_the_form_again_and_refuses_to_replace_a_run():
    sources = [c.source for c in _code(nbformat.read(NOTEBOOKS[2], as_version=4))]
    train_cell = next(s for s in sources if "trainer.train(" in s)
    # re-running only this cell must use the sliders as they are now
    assert train_cell.splitlines()[0] == "request = form.request(cfg)"
    assert "runs.start_run(paths, request" in train_cell
    assert train_cell.index("runs.start_run(") < train_cell.index("trainer.train(")
    assert "plot_lr_schedule(" in "\n".join(sources[: sources.index(train_cell)])


def test_evaluation_and_inference_pick_a_run_and_use_the_cached_predictions():
    for path in NOTEBOOKS[3:5]:
        source = "\n".join(c.source for c in _code(nbformat.read(path, as_version=4)))
        assert "forms.RunPicker(paths" in source and "picker.selected()" in source
        assert 'prediction_cache.split_predictions(run_paths, "test"' in source
        assert "prediction.predict(" not in source  # the model runs only through the cache
        # thresholds come from the operating point or the run's config, not the profile's
        assert not re.search(r"(?<![.\w])cfg\.score_thresh", source)
    evaluate = "\n".join(c.source for c in _code(nbformat.read(NOTEBOOKS[3], as_version=4)))
    assert 'prediction_cache.split_predictions(run_paths, "val"' in evaluate
    assert "OperatingPoint.load(run_paths.layout.operating_point" in evaluate
    assert "normalize=True" in evaluate and "plot_run_comparison(" in evaluate
    inference_nb = "\n".join(c.source for c in _code(nbformat.read(NOTEBOOKS[4], as_version=4)))
    assert "op.save(run_paths.layout.operating_point)" in inference_nb
    assert "galleries.error_gallery(" in inference_nb
