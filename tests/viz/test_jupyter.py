"""Figures shown as pictures in Jupyter whatever matplotlib's backend (``seglib.viz.jupyter``).

Under ``MPLBACKEND=Agg`` a Jupyter kernel used to show no notebook figure at all and, for
``display(fig)`` in the widgets' live views, the text ``<Figure size 600x300 with 2 Axes>``.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from seglib.viz import charts, common, jupyter


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


class FakeKernelShell:
    """What ``show_in_kernel`` needs of an ipykernel shell: a kernel, and enable_matplotlib."""

    def __init__(self, kernel: object | None = object()):
        self.kernel = kernel
        self.enabled: list[str] = []

    def enable_matplotlib(self, gui: str) -> None:
        self.enabled.append(gui)


@pytest.fixture
def shell(monkeypatch):
    """A kernel's shell as ``show_in_kernel`` finds it (pyplot keeps the real one)."""
    fake = FakeKernelShell()
    monkeypatch.setattr(jupyter, "_kernel_shell", lambda: fake)
    return fake


def test_in_a_kernel_under_agg_every_new_figure_switches_pyplot_to_the_inline_backend(shell):
    assert matplotlib.get_backend().lower() == "agg"
    common.make_grid(2)
    charts.plot_size_distribution({"dog": {"small": 1, "medium": 2, "large": 3}})
    assert shell.enabled == ["inline", "inline"]  # the fake shell never switches, so twice


@pytest.mark.parametrize("backend", ["inline", "QtAgg", "widget"])
def test_a_backend_that_shows_figures_is_kept(shell, monkeypatch, backend):
    monkeypatch.setattr(matplotlib, "get_backend", lambda: backend)
    assert jupyter.show_in_kernel() is False and shell.enabled == []


def test_only_a_kernels_shell_counts(monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # a script, or pytest
    assert jupyter._kernel_shell() is None and jupyter.show_in_kernel() is False
    terminal = FakeKernelShell(kernel=None)  # a terminal IPython: inline would print reprs
    monkeypatch.setattr(IPython, "get_ipython", lambda: terminal)
    assert jupyter._kernel_shell() is None
    kernel = FakeKernelShell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: kernel)
    assert jupyter._kernel_shell() is kernel


def test_png_bytes_is_the_figure_as_a_png_whatever_the_backend():
    fig, axes = common.make_grid(2, ncols=2, size=2.0)
    axes[0].plot([0, 1], [1, 2])
    data = jupyter.png_bytes(axes[0])  # an axes stands for its figure
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = plt.imread(io.BytesIO(data))
    assert pixels.ndim == 3 and pixels.shape[1] > pixels.shape[0] > 50  # two panels side by side


def test_png_bytes_crops_an_image_grids_bands_unless_asked_for_the_whole_figure():
    fig, axes = common.make_grid(2, ncols=2, size=2.0)  # 4 x 2 in, square cells
    for ax in axes:
        ax.imshow(np.zeros((30, 40, 3)))  # 4:3 images leave bands above and below
        ax.axis("off")
    tight = plt.imread(io.BytesIO(jupyter.png_bytes(fig)))
    whole = plt.imread(io.BytesIO(jupyter.png_bytes(fig, tight=False)))
    assert whole.shape[:2] == (round(2 * fig.dpi), round(4 * fig.dpi))
    assert tight.shape[0] < 0.9 * whole.shape[0]


@pytest.mark.slow
def test_a_kernel_under_mplbackend_agg_shows_viz_figures_and_live_views_as_images(
    tmp_path, monkeypatch
):
    """The JupyterLab failure itself: a real kernel started with ``MPLBACKEND=Agg``."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "Agg")
    cells = [
        "import matplotlib\nprint(matplotlib.get_backend())",
        "from seglib.viz import common\nfig, axes = common.make_grid(2)\naxes[0].plot([0, 1], [1, 2]);",
        "from seglib.app import forms\n"
        "live = forms.LiveLossPlot(every=1)\n"
        "live('iter', {'epoch': 0, 'iteration': 0, 'lr': 0.01, 'loss': 1.0, 'loss_mask': 0.5})",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in cells]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(tmp_path))

    def mimes(cell) -> list[list[str]]:
        return [sorted(o.get("data", {})) for o in cell.outputs if o.output_type != "stream"]

    assert nb.cells[0].outputs[0]["text"].strip().lower() == "agg"  # the kernel did start so
    assert ["image/png", "text/plain"] in mimes(nb.cells[1]), nb.cells[1].outputs
    assert mimes(nb.cells[2]) == [["image/png", "text/plain"]], nb.cells[2].outputs
