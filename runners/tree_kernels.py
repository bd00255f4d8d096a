"""scikit-learn's decision trees and random forests without scikit-learn: the kernels a
lean runner (runners.sklearn_lean) serves a tree model with.

Importing scikit-learn costs a runner about 80 MB; a fitted forest is a few arrays per
tree. So the plan helper copies each tree's arrays out of ``tree_`` and the runner walks
them here with numpy: every tree's nodes stacked in one table, all (row, tree) pairs
stepped down one level at a time, one gather per array per level. On a 100-tree forest
(bench/tree_speed.py) that is about 25x faster than scikit-learn's ``predict_proba`` for
one row (whose per-call cost is joblib's and the Python around each tree's Cython walk),
about 10x for 32 rows and 3x for 256; at 1,000 rows the two are about even, and beyond
that the walk falls behind (numpy gathers against compiled loops; where exactly depends
on the trees' depth and number). ``runner.lean: false`` keeps scikit-learn for a model
scored in large batches. Memory stays flat: a long request is walked in chunks of rows,
and the trees' values are added one tree at a time into a rows x columns array.

The same bits as scikit-learn, by the same steps: the input cast to float32 (as
``_validate_X_predict``), ``x <= threshold`` to go left (a float32 ``x`` against the
float64 threshold is the same test as against the largest float32 not above it, which is
what the table holds), NaN sent the way ``missing_go_to_left`` says, each tree's leaf
``value`` (the class fractions, or the regression value) and, for a forest, those
summed tree by tree in order from zeros and divided by the number of trees
(``_accumulate_prediction``, then ``/= len(estimators_)``). The runner proves the bits on
probe batches before it serves the plan (``sklearn_lean.build``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runners.linear_kernels import Method

Array = npt.NDArray[Any]


@dataclass
class TreeArrays:
    """One fitted tree as scikit-learn's ``tree_`` holds it (leaves: children -1)."""

    children_left: Array
    children_right: Array
    feature: Array
    threshold: Array
    value: Array  # (nodes, outputs, classes): one output only
    missing_go_to_left: Array | None = None


@dataclass
class Forest:
    """Every tree's nodes in one table, each tree's after the one before; a leaf's two
    children are itself, so that a walk of ``depth`` steps ends on every tree's leaf."""

    roots: Array  # (trees,) int32: each tree's first node
    children: Array  # (2 * nodes,) int32: left, right of each node
    feature: Array  # (nodes,) int32; 0 at leaves
    threshold: Array  # (nodes,) float32: go left when x <= it; +inf at leaves
    missing_right: Array | None  # (nodes,) bool: NaN goes right; None: NaN never comes
    value: Array  # (nodes, columns) float64
    depth: int
    average: bool  # a forest's answer: the trees' sum divided by their number

    ARRAYS = ("roots", "children", "feature", "threshold", "missing_right", "value")

    def arrays(self) -> dict[str, Array]:
        named = {name: getattr(self, name) for name in self.ARRAYS}
        return {name: array for name, array in named.items() if array is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Array], depth: int, average: bool) -> Forest:
        return cls(
            roots=arrays["roots"],
            children=arrays["children"],
            feature=arrays["feature"],
            threshold=arrays["threshold"],
            missing_right=arrays.get("missing_right"),
            value=arrays["value"],
            depth=depth,
            average=average,
        )


def float32_at_most(threshold: Array) -> Array:
    """The largest float32 not above each float64 threshold: for a float32 ``x``,
    ``x <= t`` exactly when ``x <= float32_at_most(t)``."""
    with np.errstate(over="ignore"):
        rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def stack(trees: Sequence[TreeArrays], depth: int, *, average: bool, nan: bool) -> Forest:
    """The table for ``trees`` (a forest's estimators in order, or one tree); ``nan``:
    whether NaN may reach the walk (the model allows it as "missing")."""
    sizes = [len(tree.children_left) for tree in trees]
    roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    children, feature, threshold, missing, value = [], [], [], [], []
    for tree, root in zip(trees, roots, strict=True):
        leaf = tree.children_left < 0
        own = np.arange(len(leaf)) + root
        pair = np.stack(
            [
                np.where(leaf, own, tree.children_left + root),
                np.where(leaf, own, tree.children_right + root),
            ],
            axis=1,
        )
        children.append(pair.reshape(-1))
        feature.append(np.where(leaf, 0, tree.feature))
        limits = float32_at_most(np.asarray(tree.threshold, dtype=np.float64))
        threshold.append(np.where(leaf, np.float32(np.inf), limits))
        go_left = tree.missing_go_to_left
        missing.append(np.zeros(len(leaf), bool) if go_left is None else ~go_left.astype(bool))
        value.append(np.asarray(tree.value, dtype=np.float64)[:, 0, :])
    return Forest(
        roots=roots,
        children=np.concatenate(children).astype(np.int32),
        feature=np.concatenate(feature).astype(np.int32),
        threshold=np.concatenate(threshold).astype(np.float32),
        missing_right=np.concatenate(missing) if nan else None,
        value=np.concatenate(value),
        depth=depth,
        average=average,
    )


def _leaves(forest: Forest, x: Array) -> Array:
    """The leaf each row reaches in each tree: (rows, trees) node numbers."""
    rows = np.ascontiguousarray(x, dtype=np.float32)
    n, width = rows.shape
    flat = rows.reshape(-1)
    start = np.arange(0, n * width, width, dtype=np.intp)[:, None]
    node = np.broadcast_to(forest.roots, (n, forest.roots.size)).copy()
    feature, threshold, children = forest.feature, forest.threshold, forest.children
    missing = forest.missing_right
    for _ in range(forest.depth):
        values = flat.take(start + feature.take(node))
        right = values > threshold.take(node)
        if missing is not None:
            nan = np.isnan(values)
            if nan.any():
                right[nan] = missing.take(node[nan])
        node = children.take(node * 2 + right)
    return node


# (row, tree) pairs walked at once: a long request goes in chunks of rows, so that the
# walk's arrays stay a few MB whatever its size (scikit-learn's own walk needs none).
PAIRS_AT_ONCE = 1 << 18
# Rows x columns up to which the trees' leaf values are gathered in one call and summed
# with a cumulative sum (few numpy calls: one row); above it they are added tree by tree
# into one rows x columns array (no rows x trees x columns array).
ONE_GATHER = 256


def values(forest: Forest) -> Method:
    """``predict_proba`` of a classifier (the class fractions), or a regressor's
    prediction as one column: each tree's leaf value, summed in tree order from zero and
    averaged for a forest (``0.0 + -0.0`` is ``0.0``, as in scikit-learn's sum)."""
    trees, columns = forest.roots.size, forest.value.shape[1]
    chunk = max(1, PAIRS_AT_ONCE // trees)

    def summed(leaves: Array) -> Array:
        if not forest.average:
            single: Array = forest.value[leaves[:, 0]]
            return single
        rows = leaves.shape[0]
        if rows * columns <= ONE_GATHER:
            reached = forest.value[leaves]  # (rows, trees, columns), a copy
            reached[:, 0, :] += 0.0
            total: Array = np.cumsum(reached, axis=1)[:, -1, :]  # sequential: t1 + t2 ...
        else:
            total = np.zeros((rows, columns))
            for tree in range(trees):
                total += forest.value[leaves[:, tree]]
        total /= trees
        return total

    def leaf_values(x: Array) -> Array:
        if x.shape[0] <= chunk:
            return summed(_leaves(forest, x))
        parts = [summed(_leaves(forest, x[i : i + chunk])) for i in range(0, x.shape[0], chunk)]
        return np.concatenate(parts)

    return leaf_values


def classify(proba: Method, classes: Array) -> Method:
    """``predict``: the class of the highest fraction (the first, in a tie)."""

    def predict(x: Array) -> Array:
        labels: Array = classes.take(np.argmax(proba(x), axis=1), axis=0)
        return labels

    return predict


def regress(leaf_values: Method) -> Method:
    """A single-target regressor's ``predict``: the one column as a vector."""
    return lambda x: leaf_values(x)[:, 0]


def boundary_probe(forest: Forest, n_features: int, dtype: Any, rows: int = 64) -> Array:
    """Rows whose values sit on the forest's own thresholds and one float32 step above,
    where a wrong comparison or rounding would show, for the proof on probes."""
    rng = np.random.default_rng(20261127)
    inner = forest.children[0::2] != np.arange(forest.feature.size)
    probe = rng.normal(size=(rows, n_features))
    for column in range(n_features):
        limits = forest.threshold[inner & (forest.feature == column)].astype(np.float64)
        if limits.size:
            probe[:, column] = rng.choice(limits, size=rows)
    probe[rows // 2 :] = np.nextafter(
        probe[rows // 2 :].astype(np.float32), np.float32(np.inf)
    ).astype(np.float64)
    return probe.astype(dtype)


def path_probe(forest: Forest, n_features: int, dtype: Any, rows: int = 64) -> Array:
    """One row inside the region of each of ``rows`` leaves, or of as many as there are
    trees (every tree's deepest first, then others at random): a walk that stops short,
    or takes a wrong turn anywhere on a long path, answers such a row differently. A
    leaf's region is the box its path cuts out (``x <= t`` on a left turn, ``x > t`` on
    a right one); the row takes each feature's upper bound where it has one, else just
    above its lower bound."""
    nodes = forest.feature.size
    left, right = forest.children[0::2], forest.children[1::2]
    own = np.arange(nodes)
    inner = left != own
    parent = np.full(nodes, -1)
    went_right = np.zeros(nodes, bool)
    parent[left[inner]] = own[inner]
    parent[right[inner]] = own[inner]
    went_right[right[inner]] = True
    depth = np.zeros(nodes, int)
    below = parent >= 0
    for _ in range(forest.depth):  # each pass settles one more level
        depth[below] = depth[parent[below]] + 1
    ends = np.append(forest.roots[1:], nodes)
    leaves = [
        int(start + np.argmax(np.where(~inner[start:end], depth[start:end], -1)))
        for start, end in zip(forest.roots, ends, strict=True)
    ]
    rng = np.random.default_rng(20261128)
    others = own[~inner]
    leaves += rng.choice(others, size=max(0, rows - len(leaves))).tolist()
    probe = np.zeros((len(leaves), n_features), dtype=np.float32)
    for row, leaf in enumerate(leaves):
        low = np.full(n_features, -np.inf, dtype=np.float32)
        high = np.full(n_features, np.inf, dtype=np.float32)
        node = leaf
        while parent[node] >= 0:
            split, feature = parent[node], forest.feature[parent[node]]
            limit = forest.threshold[split]
            if went_right[node]:
                low[feature] = max(low[feature], limit)
            else:
                high[feature] = min(high[feature], limit)
            node = split
        above = np.nextafter(low, np.float32(np.inf))
        probe[row] = np.where(np.isfinite(high), high, np.where(np.isfinite(low), above, 0))
    return probe.astype(dtype)
