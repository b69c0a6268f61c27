"""Figures that Jupyter shows as pictures whatever matplotlib's backend.

A Jupyter kernel shows pyplot figures through matplotlib-inline's backend, which ipykernel
picks only when ``$MPLBACKEND`` is unset. Under ``MPLBACKEND=Agg`` (common on headless
servers and in CI) a kernel draws every figure but shows none: a cell that makes one shows
nothing, and ``display(fig)`` shows the text ``<Figure size 600x300 with 2 Axes>``.

* ``show_in_kernel`` puts the inline backend back, inside a kernel and under a
  non-interactive backend only; every ``viz`` function calls it before it makes a figure
  (through ``common._subplots``), so notebook figures appear as they would without
  ``$MPLBACKEND``. Outside a kernel (scripts, tests, a terminal IPython) it does nothing.
* ``png_bytes`` renders a figure as PNG, for outputs that must not depend on any backend or
  display hook: the widgets' live views display these bytes.
"""

from __future__ import annotations

import io
import sys

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: matplotlib's built-in backends that only write files: figures made under them never show.
_NON_INTERACTIVE = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})


def _kernel_shell():
    """The IPython shell of a Jupyter kernel we run in, or None (no IPython, or not a kernel)."""
    if "IPython" not in sys.modules:  # never import IPython into a plain script
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if getattr(shell, "kernel", None) is not None else None


def show_in_kernel() -> bool:
    """Inside a Jupyter kernel under a non-interactive backend, switch pyplot to the inline one.

    The same as running ``%matplotlib inline``: pyplot figures are then shown at the end of
    each cell and ``display(fig)`` shows a PNG. Any other backend (inline, ipympl, a GUI) is
    the user's choice and is kept.

    Returns:
        Whether it switched.
    """
    shell = _kernel_shell()
    if shell is None or matplotlib.get_backend().lower() not in _NON_INTERACTIVE:
        return False
    shell.enable_matplotlib("inline")
    return True


def png_bytes(fig: Figure | Axes, *, tight: bool = True) -> bytes:
    """The figure (of an axes) as PNG bytes, framed as the inline backend frames it (tight).

    ``tight=False`` saves the figure as it is, drawn once instead of twice: for a figure
    redrawn often whose layout fills it (the live training view), not for image grids,
    whose fixed-aspect panels leave bands that the tight frame crops.
    """
    fig = fig.figure if isinstance(fig, Axes) else fig
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight" if tight else None)
    return buffer.getvalue()
