"""The tree walk's own arithmetic (runners.tree_kernels), apart from any model: the
comparison against float32 thresholds, and a forest stacked from hand-made trees."""

from __future__ import annotations

import numpy as np

from runners import tree_kernels
from runners.tree_kernels import TreeArrays


def test_a_float32_against_the_rounded_threshold_decides_as_against_the_float64_one() -> None:
    rng = np.random.default_rng(0)
    thresholds = np.concatenate(
        [rng.normal(size=5000) * 10.0 ** rng.integers(-30, 30, 5000), [1e300, -1e300, 0.0]]
    )
    limits = tree_kernels.float32_at_most(thresholds)
    assert limits.dtype == np.float32
    with np.errstate(over="ignore"):
        nearest = thresholds.astype(np.float32)
    near = np.stack(
        [
            nearest,
            np.nextafter(nearest, np.float32(np.inf)),
            np.nextafter(nearest, np.float32(-np.inf)),
            limits,
        ]
    )
    assert np.array_equal(near <= thresholds, near <= limits)


def _stump(feature: int, threshold: float, left: list[float], right: list[float]) -> TreeArrays:
    return TreeArrays(
        children_left=np.array([1, -1, -1]),
        children_right=np.array([2, -1, -1]),
        feature=np.array([feature, -2, -2]),
        threshold=np.array([threshold, -2.0, -2.0]),
        value=np.array([[[0.5, 0.5]], [left], [right]]),
        missing_go_to_left=np.array([0, 0, 0], dtype=np.uint8),
    )


def test_a_forest_averages_its_trees_and_sends_nan_the_way_each_split_says() -> None:
    trees = [_stump(0, 0.5, [1.0, 0.0], [0.0, 1.0]), _stump(1, -1.0, [0.25, 0.75], [1.0, 0.0])]
    trees[1].missing_go_to_left = np.array([1, 0, 0], dtype=np.uint8)
    forest = tree_kernels.stack(trees, depth=1, average=True, nan=True)
    proba = tree_kernels.values(forest)
    rows = np.array([[0.5, -1.0], [0.6, 0.0], [np.nan, np.nan]], dtype=np.float32)
    expected = np.array(
        [
            [(1.0 + 0.25) / 2, (0.0 + 0.75) / 2],  # both go left: x <= threshold
            [(0.0 + 1.0) / 2, (1.0 + 0.0) / 2],  # both go right
            [(0.0 + 0.25) / 2, (1.0 + 0.75) / 2],  # NaN: right in the first, left in the second
        ]
    )
    np.testing.assert_array_equal(proba(rows), expected)
    labels = tree_kernels.classify(proba, np.array(["a", "b"]))(rows)
    assert labels.tolist() == ["a", "a", "b"]  # a tie goes to the first class, as in predict
