"""Studies that compare variants on the same split and evaluator, with their reports.

``study`` is the one mechanism: named contenders as config changes, trained or applied over
seeds and scored by one evaluator; ``study_report`` gives their mean and spread. Its uses: the
model-family comparison (``family_comparison``, notebook 07) and the augmentation and data
studies (``axes``, notebook 08). The occlusion study (``occlusion_study``, notebook 06) tunes
post-processing on val and reports in the same record (``occlusion_report.as_study``).

Imports: every stage below (``core``, ``data``, ``models``, ``engine``, ``evaluation``);
never ``seglib.viz``.
"""

__all__ = [
    "axes",
    "comparison_report",
    "family_comparison",
    "finished_runs",
    "occlusion_report",
    "occlusion_study",
    "study",
    "study_report",
]
