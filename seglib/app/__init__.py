"""What users run: the CLI, headless notebook runs, the notebooks' forms, named runs.

Named runs with their prediction caches, operating point and provenance records live here
too, as the notebooks and the CLI share them.

Imports: any seglib subpackage; nothing in seglib imports ``seglib.app``.
"""

__all__ = [
    "cli",
    "commands",
    "forms",
    "headless",
    "notebook_runner",
    "operating_point",
    "predict_files",
    "prediction_cache",
    "provenance",
    "runs",
    "warm_up",
]
