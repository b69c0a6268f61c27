"""Figures: instance overlays, training curves and evaluation plots. The only matplotlib user.

Every function draws into ``ax`` (or ``axes``) when given, else into a new pyplot figure, and
returns the axes or figure; none calls ``plt.show()``. New figures come from pyplot so a
notebook displays them, whatever ``$MPLBACKEND`` says (``viz.jupyter``); scripts that draw many
should pass ``close=True`` to ``save_figure``.
Colours are fixed per class label (``class_color``), so a class looks the same everywhere.
Inputs may be numpy arrays or torch tensors (read through ``.detach().cpu().numpy()``).

Figures are checked by what they hold, not by existing: ``figure_content`` lists each axes'
bars with height, lines with points and images; ``save_figure`` writes that record beside the
image (``<name>.content.json``), and ``check_figure_file`` fails a missing or blank image or
an axes with no data. ``NOTEBOOK_FIGURES`` declares the figures each notebook saves.

Each name lives in one submodule and is imported from there (``from seglib.viz import
overlay``, then ``overlay.draw_instances``):

* ``common``: colours (``class_color``, ``BACKGROUND_COLOR``, ``BUCKET_COLORS``), ``make_grid``
  and the array helpers every other submodule shares;
* ``overlay``: ``draw_instances`` on one image, ground truth vs prediction, image grids;
* ``galleries``: per-image rows over a split (errors, model comparison, occlusion,
  before/after);
* ``training``: loss, learning-rate and validation-AP curves, live and after the run;
* ``charts``: bars per class or bucket, PR curves, confusion matrices, data charts;
* ``files``: ``NOTEBOOK_FIGURES``, ``figure_content``, ``save_figure``, ``check_figure_file``;
* ``jupyter``: figures shown as pictures in Jupyter whatever the backend (``show_in_kernel``,
  ``png_bytes``).

Imports: ``seglib.core``, ``data``, ``models``, ``engine`` and ``evaluation``; only
``seglib.app`` imports ``viz``.
"""

__all__ = ["charts", "common", "files", "galleries", "jupyter", "overlay", "training"]
