"""pipeline.training.optimization: class weights (the optimizers themselves: tests/model/test_optimizers.py)."""

from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from pipeline.training.optimization import class_weight_table


def test_balanced_class_weights_match_scikit_learn():
    labels = np.array([0, 0, 0, 1, 2, 2, 0, 1, 0, 0])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weight_table(np.bincount(labels, minlength=3)), expected)
    assert class_weight_table(np.bincount(labels, minlength=4))[3] == 0.0  # a class with no documents gets no weight
