"""The notebooks in JupyterLab, in Chromium: Run All is clean, and the widgets do what they say.

Run with ``make ui`` (or ``pytest tests/ui``); ``conftest.py`` starts the server and browser.
Tests run in notebook order in one server; the widget tests follow their notebook's Run All.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

# Every numbered notebook, in the order they must run (each reads the previous one's files).
NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Slider labels, loose on purpose: the notebooks' wording may change, not the field.
LR = re.compile(r"^\s*(lr|learning rate)\b", re.I)
EPOCHS = re.compile(r"epoch", re.I)
SCORE = re.compile(r"score", re.I)
AUGMENT = re.compile(r"aug|strength", re.I)
RUN_NAME = re.compile(r"run name|run_name", re.I)
COPY_PASTE = re.compile(r"^\s*copy_paste_prob\b", re.I)
REDRAW_TIMEOUT_S = 30
# What a kernel shows for a figure when nothing renders it (MPLBACKEND=Agg, issue 15).
FIGURE_AS_TEXT = re.compile(r"<Figure size \d+x\d+ with \d+ Axes>")


def _notebook(prefix: str):
    found = [p for p in NOTEBOOKS if p.name.startswith(prefix)]
    if not found:
        pytest.skip(f"no notebooks/{prefix}_*.ipynb")
    return found[0]


def _ensure_open_and_run(lab, notebook) -> None:
    """The widget tests follow their notebook's Run All; run alone (``-k``) they do it themselves."""
    if lab.current != f"notebooks/{notebook.name}":
        lab.open(f"notebooks/{notebook.name}")
        lab.run_all()


def _assert_clean(lab, notebook, when: str) -> None:
    problems = lab.problems()
    assert not problems, f"{notebook.name} {when}:\n\n" + "\n\n".join(problems)


def _assert_figures_shown(lab, lab_server, notebook) -> None:
    """At least as many images as the figures the notebook saved, and no figure as text."""
    from seglib.core.paths import get_paths
    from seglib.viz.files import notebook_figures

    run = lab_server.run_folder()
    paths = get_paths("smoke", lab_server.data, run=run.name if run != lab_server.data else None)
    saved = [f for f in notebook_figures(paths, notebook.stem) if f.is_file()]
    shown = lab.notebook.locator(".jp-Cell-outputArea img").count()
    as_text = sorted(set(FIGURE_AS_TEXT.findall(lab.outputs_text())))
    assert not as_text, f"{notebook.name} shows figures as text, not images: {as_text}"
    assert shown >= len(saved), (
        f"{notebook.name} saved {len(saved)} figures but shows {shown} images "
        f"(kernels run with MPLBACKEND=Agg): {[f.name for f in saved]}"
    )


def _screenshot(lab, screenshots, notebook, focus=None) -> None:
    if focus is not None:
        focus.scroll_into_view_if_needed()
    screenshots[notebook.stem] = lab.page.screenshot()


@pytest.mark.parametrize(
    "notebook",
    [pytest.param(p, id=p.stem, marks=pytest.mark.notebook(p.name[:2], 0)) for p in NOTEBOOKS],
)
def test_run_all_shows_no_error(lab, lab_server, screenshots, notebook):
    if lab.current is not None:
        lab_server.shut_down_kernels()  # the previous notebook's kernel
    lab.open(f"notebooks/{notebook.name}")
    lab.run_all()
    _assert_clean(lab, notebook, "after Run All")
    _assert_figures_shown(lab, lab_server, notebook)
    widgets = lab.notebook.locator(".jupyter-widgets.widget-vbox")
    _screenshot(lab, screenshots, notebook, widgets.first if widgets.count() else None)


def _slider_in(lab, prefix: str, label: re.Pattern):
    """The notebook ``prefix``, run; its slider labelled ``label`` and that form's cell index."""
    notebook = _notebook(prefix)
    _ensure_open_and_run(lab, notebook)
    slider = lab.slider(label)
    return notebook, slider, lab.cell_index(slider)


@pytest.mark.notebook("02", 1)
def test_augmentation_slider_redraws_the_preview(lab, screenshots):
    notebook, slider, form = _slider_in(lab, "02", AUGMENT)
    live = bool(lab.images(form))  # a preview inside the form redraws by itself
    shown = form if live else form + 1
    before = lab.images(shown)
    assert before, f"{notebook.name}: no preview image in cell {shown + 1}"
    at_min = lab.slider_value(slider) == float(
        slider.locator(".noUi-handle").get_attribute("aria-valuemin")
    )
    lab.press(slider, "End" if at_min else "Home")
    if not live:
        lab.run_from(form + 1)  # the form-reading cell, as the notebook says to do
    changed = lab.wait_images_change(shown, before, REDRAW_TIMEOUT_S)
    _assert_clean(lab, notebook, "after moving the augmentation slider")
    assert changed, (
        f"{notebook.name}: after moving the slider to {lab.readout(slider)}, the preview in "
        f"cell {shown + 1} did not change within {REDRAW_TIMEOUT_S} s"
        + ("" if live else " of re-running it")
    )
    _screenshot(lab, screenshots, notebook, slider)


@pytest.mark.notebook("08", 1)
def test_copy_paste_slider_redraws_the_preview(lab, screenshots):
    notebook, slider, form = _slider_in(lab, "08", COPY_PASTE)
    shown = form + 1  # the next code cell reads the form and draws the preview
    before = lab.images(shown)
    assert before, f"{notebook.name}: no preview image in code cell {shown + 1}"
    lab.run_from(shown)  # unchanged: the seeded preview draws the same picture again
    assert not lab.wait_images_change(shown, before, 5), "the preview changes by itself"
    lab.press(slider, "Home")  # no Copy-Paste
    lab.run_from(shown)
    changed = lab.wait_images_change(shown, before, REDRAW_TIMEOUT_S)
    _assert_clean(lab, notebook, "after moving the Copy-Paste slider")
    assert changed, (
        f"{notebook.name}: after moving copy_paste_prob to {lab.readout(slider)} and re-running, "
        f"the preview in code cell {shown + 1} did not change within {REDRAW_TIMEOUT_S} s"
    )
    _screenshot(lab, screenshots, notebook, slider)


@pytest.mark.notebook("03", 1)
def test_train_form_values_reach_the_saved_config(lab, lab_server, screenshots):
    notebook = _notebook("03")
    _ensure_open_and_run(lab, notebook)
    lr_slider, epochs_slider = lab.slider(LR), lab.slider(EPOCHS)
    form = lab.cell_index(lr_slider)
    cell = lab.code_cells.nth(form)
    assert cell.locator(".widget-slider").count() >= 3, "the form shows fewer than 3 sliders"
    assert cell.locator(".widget-dropdown select").count() >= 1, "the form shows no dropdown"
    assert cell.locator(".widget-checkbox input[type=checkbox]").count() >= 1, "no checkbox"

    lr_before = lab.readout(lr_slider)
    lab.press(lr_slider, "ArrowRight")  # the keyboard, one step up the log scale
    lab.drag(epochs_slider, 1.4)  # the mouse, about one epoch more
    lr_shown, epochs_shown = float(lab.readout(lr_slider)), int(lab.slider_value(epochs_slider))
    assert lab.readout(lr_slider) != lr_before
    assert 2 <= epochs_shown <= 4, f"the drag left the epochs slider at {epochs_shown}"
    run_name = lab.text_field(RUN_NAME)
    if run_name.count():  # a new run, as a person would name it, rather than overwrite
        run_name.first.fill("browser-test")
        run_name.first.press("Tab")

    started = time.time()
    lab.run_from(form + 1)
    _assert_clean(lab, notebook, "after re-running from the cell after the form")
    config = lab_server.newest_config()
    assert config is not None and config.stat().st_mtime >= started - 1, (
        f"{notebook.name}: re-running from the cell after the form saved no new config.json "
        f"under {lab_server.data / 'runs'} (newest: {config})"
    )
    saved = json.loads(config.read_text())
    assert saved["num_epochs"] == epochs_shown and math.isclose(
        saved["lr"], lr_shown, rel_tol=0.05
    ), (
        f"{notebook.name}: the form showed lr {lr_shown:g} and {epochs_shown} epochs, but "
        f"{config} has lr {saved['lr']:g} and {saved['num_epochs']} epochs"
    )
    _screenshot(lab, screenshots, notebook, lr_slider)


@pytest.mark.notebook("05", 1)
def test_score_threshold_slider_redraws_the_figure(lab, screenshots):
    notebook = _notebook("05")
    _ensure_open_and_run(lab, notebook)
    slider = lab.slider(SCORE)
    explorer = lab.cell_index(slider)
    before = lab.images(explorer)
    assert before, f"{notebook.name}: the threshold explorer (cell {explorer + 1}) shows no figure"
    moved = []
    for key in ("Home", "End"):  # all predictions, then none: one of them must differ
        lab.press(slider, key)
        moved.append(lab.readout(slider))
        changed = lab.wait_images_change(explorer, before, REDRAW_TIMEOUT_S)
        _assert_clean(lab, notebook, f"after moving the score threshold to {moved[-1]}")
        if changed:
            break
    else:
        pytest.fail(
            f"{notebook.name}: moving the score threshold to {' then '.join(moved)} left the "
            f"figure in cell {explorer + 1} unchanged for {REDRAW_TIMEOUT_S} s each: the "
            "slider does not redraw (or the test images have no predictions at all)"
        )
    _screenshot(lab, screenshots, notebook, slider)
