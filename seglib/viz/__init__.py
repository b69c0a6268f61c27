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

Every public name lives in a submodule and is re-exported here, so ``viz.NAME`` and
``from seglib.viz import NAME`` work for all of them:

* ``viz.common``: colours (``class_color``, ``BACKGROUND_COLOR``, ``BUCKET_COLORS``),
  ``make_grid`` and the array helpers every other submodule shares;
* ``viz.overlay``: ``draw_instances`` on one image, ground truth vs prediction, image grids;
* ``viz.galleries``: per-image rows over a split (errors, model comparison, occlusion,
  before/after);
* ``viz.training``: loss, learning-rate and validation-AP curves, live and after the run;
* ``viz.charts``: bars per class or bucket, PR curves, confusion matrices, data charts;
* ``viz.files``: ``NOTEBOOK_FIGURES``, ``figure_content``, ``save_figure``,
  ``check_figure_file``;
* ``viz.jupyter``: figures shown as pictures in Jupyter whatever the backend
  (``show_in_kernel``, ``png_bytes``).

Submodules call each other directly, so patching ``seglib.viz.NAME`` replaces the name for
callers that go through the package (``viz.NAME(...)``), not inside other ``viz`` functions.
"""

from seglib.viz.charts import (
    plot_ap_bars,
    plot_ap_comparison,
    plot_bucket_metrics,
    plot_category_counts,
    plot_confusion,
    plot_grouped_scores,
    plot_occlusion_levels,
    plot_occlusion_study,
    plot_pr_curves,
    plot_size_distribution,
)
from seglib.viz.common import BACKGROUND_COLOR, BUCKET_COLORS, class_color, make_grid
from seglib.viz.files import (
    NOTEBOOK_FIGURES,
    FigureSet,
    check_figure_file,
    close,
    content_file,
    figure_content,
    figures_record,
    notebook_figures,
    record_figures,
    save_figure,
)
from seglib.viz.galleries import (
    OUTCOME_COLORS,
    draw_before_after,
    draw_errors,
    draw_model_comparison,
    draw_occlusion_gallery,
    error_gallery,
)
from seglib.viz.jupyter import png_bytes, show_in_kernel
from seglib.viz.overlay import (
    draw_instance_grid,
    draw_instances,
    draw_prediction_vs_gt,
    prediction_samples,
)
from seglib.viz.training import (
    LOSS_KEYS,
    draw_training,
    loss_keys,
    plot_loss_components,
    plot_losses,
    plot_lr,
    plot_lr_schedule,
    plot_metric,
    plot_run_comparison,
    plot_training_summary,
    plot_val_ap,
    training_figure,
)

__all__ = [
    "BACKGROUND_COLOR",
    "BUCKET_COLORS",
    "LOSS_KEYS",
    "NOTEBOOK_FIGURES",
    "OUTCOME_COLORS",
    "FigureSet",
    "check_figure_file",
    "class_color",
    "close",
    "content_file",
    "draw_before_after",
    "draw_errors",
    "draw_instance_grid",
    "draw_instances",
    "draw_model_comparison",
    "draw_occlusion_gallery",
    "draw_prediction_vs_gt",
    "draw_training",
    "error_gallery",
    "figure_content",
    "figures_record",
    "loss_keys",
    "make_grid",
    "notebook_figures",
    "plot_ap_bars",
    "plot_ap_comparison",
    "plot_bucket_metrics",
    "plot_category_counts",
    "plot_confusion",
    "plot_grouped_scores",
    "plot_loss_components",
    "plot_losses",
    "plot_lr",
    "plot_lr_schedule",
    "plot_metric",
    "plot_occlusion_levels",
    "plot_occlusion_study",
    "plot_pr_curves",
    "plot_run_comparison",
    "plot_size_distribution",
    "plot_training_summary",
    "plot_val_ap",
    "png_bytes",
    "prediction_samples",
    "record_figures",
    "save_figure",
    "show_in_kernel",
    "training_figure",
]
