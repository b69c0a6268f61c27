"""Training: the loop, its optimizer and learning-rate schedule, and the run log.

Imports: ``seglib.core``, ``seglib.data``, ``seglib.models`` and ``seglib.evaluation``.
"""

__all__ = [
    "runlog",
    "schedule",
    "trainer",
]
