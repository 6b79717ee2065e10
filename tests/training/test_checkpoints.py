"""pipeline.training.checkpoints: what a checkpoint keeps, what it refuses, and the memory it needs.

That a run killed with ``kill -9`` resumes to the same weights is tested end to end in tests/stages/test_train.py.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pipeline.training.checkpoints import CheckpointMismatch, Checkpoints, assign_variables


def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    checkpoints = Checkpoints(tmp_path / "resume", "fingerprint-a")
    state = {"epochs_done": 1, "history": {}, "best_epoch": 1, "best_value": 0.5, "wait": 0}
    # The current values come as pairs read one at a time, as the train stage streams its variables.
    checkpoints.save(state, iter([("v0000", np.ones(3)), ("opt_v0000", np.arange(6, dtype=np.int64).reshape(2, 3))]),
                     {"v0000": np.zeros(3)})
    loaded_state, current, best = checkpoints.load()
    assert loaded_state["epochs_done"] == 1
    assert set(current) == {"v0000", "opt_v0000"} and current["opt_v0000"].dtype == np.int64
    np.testing.assert_array_equal(current["opt_v0000"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(current["v0000"], np.ones(3))
    np.testing.assert_array_equal(best["v0000"], np.zeros(3))
    assert Checkpoints(tmp_path / "resume", "fingerprint-b").load() is None
    (tmp_path / "resume" / "state.json").write_text("{broken")
    assert checkpoints.load() is None


def test_saving_holds_one_variable_at_a_time_not_a_copy_of_them_all(tmp_path):
    # The memory promise of Checkpoints.save: a model's and its optimizer's variables are read one at a
    # time while they are written, so a checkpoint never needs a second copy of them all in memory.
    size, count = 4_000_000, 6  # 6 variables of 16 MB

    def pairs():
        for i in range(count):
            yield f"v{i:04d}", np.full((size,), i, dtype=np.float32)

    state = {"epochs_done": 1, "history": {}, "best_epoch": 1, "best_value": 0.5, "wait": 0}
    tracemalloc.start()
    try:
        Checkpoints(tmp_path / "resume", "key").save(state, pairs(), {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * size * 4, f"peak {peak / 1e6:.0f} MB for variables of {size * 4 / 1e6:.0f} MB each"
    _, current, _ = Checkpoints(tmp_path / "resume", "key").load()
    assert [float(current[f"v{i:04d}"][0]) for i in range(count)] == list(map(float, range(count)))


def test_a_checkpoint_of_another_shape_is_refused_naming_the_variable():
    class Variable:
        path, shape = "dense/kernel", (2, 3)

        def assign(self, value):
            raise AssertionError("a mismatched value was assigned")

    with pytest.raises(CheckpointMismatch, match="dense/kernel has shape"):
        assign_variables([Variable()], {"v0000": np.zeros((3, 2))})
    with pytest.raises(CheckpointMismatch, match="holds 2 variables, the model has 1"):
        assign_variables([Variable()], {"v0000": np.zeros((2, 3)), "v0001": np.zeros(1)})
