"""Per-version metrics agree with scikit-learn, and count the right rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from gateway.evaluation import PROBABILITY_FLOOR, Scored, VersionMetrics, evaluate

CLASSES = ("cat", "dog", "eel")


def _noise_rows(rng: np.random.Generator, count: int) -> list[Scored]:
    """Failed and unlabelled rows: they must not change any accuracy metric."""
    failed = [
        Scored(None, str(rng.choice(CLASSES)), latency_ms=float(rng.uniform(1, 5)), ok=False)
        for _ in range(count)
    ]
    unlabelled = [
        Scored(str(rng.choice(CLASSES)), None, latency_ms=float(rng.uniform(1, 5)))
        for _ in range(count)
    ]
    return failed + unlabelled


def _classification_rows(seed: int, n: int) -> tuple[list[Scored], list[Scored]]:
    """(labelled rows with probabilities, the same plus failed and unlabelled rows)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(CLASSES, size=n)
    probabilities = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    # Predictions partly follow the truth, partly the probabilities, partly chance.
    predicted = np.where(
        rng.random(n) < 0.5, truth, np.array(CLASSES)[probabilities.argmax(axis=1)]
    )
    labelled = [
        Scored(str(p), str(t), list(map(float, q)), CLASSES, float(ms))
        for p, t, q, ms in zip(predicted, truth, probabilities, rng.gamma(2, 5, n), strict=True)
    ]
    mixed = labelled + _noise_rows(rng, n // 5)
    rng.shuffle(mixed)
    return labelled, mixed


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_scikit_learns(seed: int) -> None:
    labelled, mixed = _classification_rows(seed, 300)
    metrics = evaluate(mixed, "classification")
    truth = [str(row.truth) for row in labelled]
    predicted = [str(row.predicted) for row in labelled]
    assert metrics.labelled == len(labelled)
    assert metrics.accuracy == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    labels = sorted(set(truth) | set(predicted))
    precision, recall, _, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=np.nan
    )
    assert metrics.per_class is not None
    assert list(metrics.per_class) == labels
    for label, p, r, s in zip(labels, precision, recall, support, strict=True):
        got = metrics.per_class[label]
        assert got.support == s
        assert got.precision == pytest.approx(p, abs=1e-12)
        assert got.recall == pytest.approx(r, abs=1e-12)
    expected = log_loss(truth, [row.probabilities for row in labelled], labels=list(CLASSES))
    assert metrics.log_loss == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_regression_metrics_equal_scikit_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.normal(10, 3, 400)
    predicted = truth + rng.standard_t(3, 400)
    rows = [
        Scored(float(p), float(t), latency_ms=1.0) for p, t in zip(predicted, truth, strict=True)
    ]
    rows += [Scored(None, 1.0, ok=False), Scored(5.0, None), Scored(None, 2.0)]
    metrics = evaluate(rows, "regression")
    assert metrics.labelled == 400
    # the failure only: the "ok" row without a value (only other outputs were asked for)
    # was answered, with nothing to score
    assert (metrics.errors, metrics.predictions) == (1, 401)
    assert metrics.mae == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-12)
    rmse = math.sqrt(mean_squared_error(truth, predicted))
    assert metrics.rmse == pytest.approx(rmse, rel=1e-12)
    assert metrics.accuracy is None and metrics.per_class is None and metrics.log_loss is None


def test_counts_error_rate_and_latency_over_all_rows() -> None:
    rows = [
        Scored("a", "a", latency_ms=10),
        Scored("b", "a", latency_ms=20),
        Scored("a", None, latency_ms=30),
        Scored(None, "a", latency_ms=400, ok=False),
    ]
    metrics = evaluate(rows, "classification")
    assert (metrics.rows, metrics.predictions, metrics.errors, metrics.labelled) == (4, 3, 1, 2)
    assert metrics.error_rate == 0.25
    assert metrics.accuracy == 0.5
    assert metrics.latency_p50_ms == np.percentile([10, 20, 30, 400], 50)
    assert metrics.latency_p99_ms == np.percentile([10, 20, 30, 400], 99)
    assert metrics.log_loss is None  # no row carried probabilities


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_empty_window_gives_none_not_exceptions(task: str) -> None:
    metrics = evaluate([], task)  # type: ignore[arg-type]
    as_dict = metrics.as_dict()
    json.dumps(as_dict, allow_nan=False)
    assert (metrics.rows, metrics.predictions, metrics.errors, metrics.labelled) == (0, 0, 0, 0)
    undefined = ("error_rate", "accuracy", "log_loss", "mae", "rmse")
    assert all(as_dict[key] is None for key in (*undefined, "latency_p50_ms", "latency_p99_ms"))


def test_only_failures_and_unlabelled_rows() -> None:
    rows = [Scored(None, "a", latency_ms=5, ok=False), Scored("a", None, latency_ms=7)]
    metrics = evaluate(rows, "classification")
    assert metrics.error_rate == 0.5 and metrics.labelled == 0
    assert metrics.accuracy is None and metrics.per_class == {} and metrics.log_loss is None
    regression = evaluate([Scored(None, 1.0, ok=False)], "regression")
    assert regression.mae is None and regression.rmse is None and regression.error_rate == 1.0


def test_precision_of_a_class_never_predicted_is_none() -> None:
    rows = [Scored("a", "a"), Scored("a", "b")]
    per_class = evaluate(rows, "classification").per_class
    assert per_class is not None
    assert per_class["b"].as_dict() == {"precision": None, "recall": 0.0, "support": 1}
    assert per_class["a"].as_dict() == {"precision": 0.5, "recall": 1.0, "support": 1}


def test_log_loss_clips_and_charges_unknown_truth_the_floor() -> None:
    rows = [
        Scored("a", "a", [1.0, 0.0], ["a", "b"]),  # perfect: loss 0
        Scored("a", "b", [1.0, 0.0], ["a", "b"]),  # certain and wrong: clipped
        Scored("a", "z", [0.5, 0.5], ["a", "b"]),  # truth the model never knew
    ]
    expected = 2 * -math.log(PROBABILITY_FLOOR) / 3
    assert evaluate(rows, "classification").log_loss == pytest.approx(expected)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="task must be one of"):
        evaluate([], "ranking")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 probabilities but 3 class names"):
        evaluate([Scored("a", "a", [0.5, 0.5], ["a", "b", "c"])], "classification")


labels = st.sampled_from(["a", "b", "c"])
rows_strategy = st.lists(
    st.builds(
        Scored,
        predicted=st.none() | labels,
        truth=st.none() | labels,
        latency_ms=st.floats(0, 1e4),
        ok=st.booleans(),
    ),
    max_size=60,
)


@given(rows_strategy)
def test_any_rows_give_consistent_json_metrics(rows: list[Scored]) -> None:
    metrics = evaluate(rows, "classification")
    json.dumps(metrics.as_dict(), allow_nan=False)
    assert metrics.rows == len(rows)
    assert metrics.errors == sum(not row.ok for row in rows)
    assert metrics.predictions == sum(row.ok and row.predicted is not None for row in rows)
    assert metrics.labelled <= metrics.predictions
    assert metrics.per_class is not None
    assert sum(stats.support for stats in metrics.per_class.values()) == metrics.labelled
    if metrics.latency_p50_ms is not None:
        assert metrics.latency_p99_ms is not None
        assert metrics.latency_p50_ms <= metrics.latency_p99_ms


@given(rows_strategy)
def test_accuracy_ignores_failed_and_unlabelled_rows(rows: list[Scored]) -> None:
    kept = [r for r in rows if r.ok and r.predicted is not None and r.truth is not None]
    accuracy = evaluate(rows, "classification").accuracy
    if not kept:
        assert accuracy is None
    else:
        assert accuracy == sum(r.predicted == r.truth for r in kept) / len(kept)


@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.booleans()),
        min_size=1,
        max_size=50,
    )
)
def test_rmse_is_at_least_mae(values: list[tuple[float, float, bool]]) -> None:
    rows = [Scored(p, t, ok=ok) for p, t, ok in values]
    metrics: VersionMetrics = evaluate(rows, "regression")
    if metrics.mae is None:
        assert metrics.rmse is None and not any(ok for _, _, ok in values)
    else:
        assert metrics.rmse is not None
        assert metrics.rmse >= metrics.mae * (1 - 1e-12)
