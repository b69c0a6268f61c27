"""Studies that compare variants on the same split and evaluator, with their reports.

The occlusion study (post-processing per occlusion bucket, notebook 06) and the model-family
comparison (notebook 07).

Imports: every stage below (``core``, ``data``, ``models``, ``engine``, ``evaluation``);
never ``seglib.viz``.
"""

__all__ = [
    "comparison_report",
    "family_comparison",
    "finished_runs",
    "occlusion_report",
    "occlusion_study",
]
