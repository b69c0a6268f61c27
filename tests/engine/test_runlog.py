"""Where a run stands (``RunState``), as every checkpoint records it."""

from __future__ import annotations

import pytest

from seglib.engine.runlog import RunState


def test_run_state_counts_epochs_once_and_round_trips_through_a_checkpoint():
    state = RunState(epoch=1, iteration=3, best=0.25, best_epoch=1, history=[{"epoch": 1}])
    assert state.steps_into_epoch(2) == 1  # one step into the second epoch
    fields = state.checkpoint_fields(2)
    ckpt = {k: fields[k] for k in ("epoch", "iteration", "extra")}
    ckpt["best_metric"] = fields["best_metric"]
    assert RunState.from_checkpoint(ckpt, 2) == state
    with pytest.raises(ValueError, match="2 batches per epoch.*now gives 3"):
        RunState.from_checkpoint(ckpt, 3)
