"""Studies that compare variants on the same split and evaluator, with their reports.

The occlusion study (post-processing per occlusion bucket, notebook 06), the model-family
comparison (notebook 07), and ``study``: named contenders as config changes over seeds, with
mean and spread, the one mechanism the others are to move onto.

Imports: every stage below (``core``, ``data``, ``models``, ``engine``, ``evaluation``);
never ``seglib.viz``.
"""

__all__ = [
    "comparison_report",
    "family_comparison",
    "finished_runs",
    "occlusion_report",
    "occlusion_study",
    "study",
]
