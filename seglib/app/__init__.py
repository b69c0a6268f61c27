"""What users run: the CLI, headless notebook runs, the notebooks' forms, named runs.

Named runs with their prediction caches, operating point and provenance records live here
too, as the notebooks and the CLI share them.

Imports: any seglib subpackage; nothing in seglib imports ``seglib.app``.

A process of this layer goes without ``rfc3987_syntax``. nbformat (the headless runs, nbval)
validates notebooks with jsonschema, which registers an IRI format checker when that optional
module is installed (JupyterLab's jupyter-events pulls it in), and the module builds its grammar
at import: importing nbformat took 2.0 s with it and 0.3 s without on the AMD EPYC kind, before
a run's first kernel could start. The notebook schema has no IRI formats.
"""

import sys

sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

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
