"""nbval settings for the notebook tests (`make notebooks`).

- The notebooks must run in the smoke profile: offline, synthetic data, CPU. This refuses to
  start otherwise, and after a passing run checks that the smoke run folder was written and
  the seed one was not.
- stderr (tqdm bars, warnings) is never compared, so checked cells cannot flake on it (nbval#88).
  Committed notebooks hold no outputs, so a cell marked ``# NBVAL_CHECK_OUTPUT`` asserts that it
  prints and returns nothing.
"""

import os

import pytest


def pytest_configure(config):
    if os.environ.get("SEGLIB_PROFILE") != "smoke":
        raise pytest.UsageError(
            "notebook tests run in the smoke profile only: set SEGLIB_PROFILE=smoke "
            "(and SEGLIB_DATA to a scratch folder), as `make notebooks` does"
        )


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


def pytest_sessionfinish(session, exitstatus):
    if exitstatus != 0 or session.testscollected == 0:
        return
    from seglib.paths import get_paths

    smoke, seed = get_paths("smoke"), get_paths("seed")
    ran = {item.path.name for item in session.items}
    expected = [smoke.split_json("train")] if "01_data_subset.ipynb" in ran else []
    if "03_train.ipynb" in ran:
        expected.append(smoke.best_checkpoint)
    problems = [f"{path} was not written" for path in expected if not path.is_file()]
    if seed.run.exists() or seed.subset.exists():
        problems.append(f"seed-profile files appeared under {seed.root}")
    if problems:
        session.config.get_terminal_writer().line(
            "notebooks did not run in the smoke profile: " + "; ".join(problems), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
