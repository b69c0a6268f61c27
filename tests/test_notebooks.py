"""Static checks on the committed notebooks; `make notebooks` executes them under nbval."""

import ast
import re

import nbformat
import pytest

from seglib.runner import notebook_paths

NOTEBOOKS = notebook_paths()


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def nb(request):
    return nbformat.read(request.param, as_version=4)


def test_the_series_is_complete():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]
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
        # every location comes from seglib.paths.get_paths
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
            "TrainConfig.from_profile",
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


def test_checked_cells_exist_and_cannot_print():
    checked = [
        c.source
        for path in NOTEBOOKS
        for c in _code(nbformat.read(path, as_version=4))
        if c.source.startswith("# NBVAL_CHECK_OUTPUT")
    ]
    assert len(checked) >= 3
    for source in checked:
        last = ast.parse(source).body[-1]
        assert not isinstance(last, ast.Expr), (
            f"a checked cell must end in a statement, not an expression:\n{source}"
        )


def test_training_happens_in_a_plain_cell_not_a_widget_callback():
    nb = nbformat.read(NOTEBOOKS[2], as_version=4)
    sources = [c.source for c in _code(nb)]
    form_cell = next(i for i, s in enumerate(sources) if "train_form(" in s)
    read_cell = next(i for i, s in enumerate(sources) if "to_config(" in s)
    train_cell = next(i for i, s in enumerate(sources) if "engine.train(" in s)
    assert form_cell < read_cell < train_cell
    assert not any(
        word in "\n".join(sources) for word in ("interact(", "interact_manual", ".observe(")
    )
