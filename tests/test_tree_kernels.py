"""The tree walk's own arithmetic (runners.tree_kernels), apart from any model: the
comparison against float32 thresholds, and a forest stacked from hand-made trees."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_leaves_of_minus_zero_sum_to_zero_as_in_scikit_learn() -> None:
    """scikit-learn adds the trees into zeros, and 0.0 + -0.0 is 0.0: a forest whose
    every leaf says -0.0 answers 0.0, whichever way the kernel sums (one gather for a few
    rows, tree by tree for many)."""
    zero = [-0.0]
    stump = TreeArrays(
        children_left=np.array([1, -1, -1]),
        children_right=np.array([2, -1, -1]),
        feature=np.array([0, -2, -2]),
        threshold=np.array([0.0, -2.0, -2.0]),
        value=np.array([[zero], [zero], [zero]]),
    )
    forest = tree_kernels.stack([stump, stump], depth=1, average=True, nan=False)
    single = tree_kernels.stack([stump], depth=1, average=False, nan=False)
    for rows in (1, tree_kernels.ONE_GATHER + 1):
        x = np.linspace(-1, 1, rows, dtype=np.float32).reshape(-1, 1)
        assert not np.signbit(tree_kernels.values(forest)(x)).any()
        assert np.signbit(tree_kernels.values(single)(x)).all()  # one tree: its own value


def test_a_long_request_is_walked_in_chunks_with_the_same_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    trees = [
        TreeArrays(
            children_left=np.array([1, -1, -1]),
            children_right=np.array([2, -1, -1]),
            feature=np.array([i % 2, -2, -2]),
            threshold=np.array([rng.normal(), -2.0, -2.0]),
            value=rng.random((3, 1, 4)),
        )
        for i in range(5)
    ]
    forest = tree_kernels.stack(trees, depth=1, average=True, nan=False)
    x = rng.normal(size=(1000, 2)).astype(np.float32)
    whole = tree_kernels.values(forest)(x)
    monkeypatch.setattr(tree_kernels, "PAIRS_AT_ONCE", 64)
    chunked = tree_kernels.values(forest)(x)
    assert whole.tobytes() == chunked.tobytes() and chunked.shape == (1000, 4)
