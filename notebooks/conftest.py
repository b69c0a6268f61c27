"""nbval settings for the notebook tests (`make notebooks`), and the checks of what they produce.

- The notebooks must run in the smoke profile: offline, synthetic data, CPU. This refuses to
  start otherwise. Notebooks 03-05 share one run, named by ``$SEGLIB_RUN`` (``nbval`` unless
  set), in the scratch folder ``$SEGLIB_DATA``.
- stderr (tqdm bars, warnings) is never compared (nbval#88). No cell's output is compared
  either: nbval cannot compare figures, and the numbers change with every recipe tweak.
- Instead, after a passing run, ``seglib.app.headless.check_outputs`` reads what the notebooks wrote:
  every figure each declares in ``seglib.viz.NOTEBOOK_FIGURES`` (present, not blank, no axes
  without data; for 07, those it recorded it could draw), the metrics and prediction files
  with the checkpoint they record, and the smoke run's val mask AP50, which must reach
  ``MIN_VAL_MASK_AP50``. It also checks that no seed-profile files appeared. Any problem
  fails the session.
"""

import os

import pytest

#: The smoke recipe must learn the synthetic shapes at least this well (val mask AP50, 0-1).
MIN_VAL_MASK_AP50 = 0.15
DEFAULT_RUN = "nbval"


def pytest_configure(config):
    if os.environ.get("SEGLIB_PROFILE") != "smoke":
        raise pytest.UsageError(
            "notebook tests run in the smoke profile only: set SEGLIB_PROFILE=smoke "
            "(and SEGLIB_DATA to a scratch folder), as `make notebooks` does"
        )
    # The kernels inherit this: 03 trains this run, 04 and 05 evaluate it.
    os.environ.setdefault("SEGLIB_RUN", DEFAULT_RUN)


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


def pytest_sessionfinish(session, exitstatus):
    if exitstatus != 0 or session.testscollected == 0:
        return
    from seglib.app.headless import check_outputs
    from seglib.core.paths import get_paths

    smoke, seed = get_paths("smoke"), get_paths("seed")
    ran = sorted({item.path.stem for item in session.items})
    problems = check_outputs(smoke, ran, min_val_ap50=MIN_VAL_MASK_AP50)
    if seed.runs.exists() or seed.subset.exists():
        problems.append(f"seed-profile files appeared under {seed.root}")
    writer = session.config.get_terminal_writer()
    if problems:
        writer.line(f"the notebooks' outputs have {len(problems)} problem(s):", red=True)
        for problem in problems:
            writer.line(f"  - {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        writer.line(f"checked the outputs of {', '.join(ran)}: figures, metrics, provenance")
