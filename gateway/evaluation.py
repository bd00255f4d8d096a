"""How one model version did over a window of ledger rows: answers, accuracy, error, speed.

The ledger hands over plain rows (``Scored``); this module only counts. It imports neither
gRPC nor database code. Every value that is undefined for the rows at hand (no rows, no
labels, a class never predicted) is ``None`` rather than NaN or an exception, so that
``VersionMetrics.as_dict()`` is JSON as it stands and an empty window is a normal answer.

Which rows count where:

- every row counts for latency and for the error rate (a failure is part of the service);
- an *answered* row is one that succeeded and carries a prediction (a row marked ok but
  with no prediction gave no answer and is counted as failed);
- a *labelled* row is an answered row whose truth is known; accuracy, precision, recall,
  log loss, MAE and RMSE are computed over labelled rows only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")

#: Probabilities are clipped below at this value before taking logs, so that one confident
#: mistake costs a large but finite loss (-ln 1e-15 ~ 34.5), as scikit-learn does.
PROBABILITY_FLOOR = 1e-15


@dataclass(frozen=True, slots=True)
class Scored:
    """One prediction row of one version, joined with its truth when known.

    ``predicted`` is the label as text (classification) or the value (regression);
    ``truth`` is None while unlabelled; ``probabilities`` are in the order of ``classes``.
    """

    predicted: str | float | None
    truth: str | float | None
    probabilities: Sequence[float] | None = None
    classes: Sequence[str] | None = None
    latency_ms: float = 0.0
    ok: bool = True

    @property
    def answered(self) -> bool:
        return self.ok and self.predicted is not None

    @property
    def labelled(self) -> bool:
        return self.answered and self.truth is not None


def is_correct(row: Scored) -> bool | None:
    """Whether a labelled classification row is right (labels compared as text); else None."""
    if not row.labelled:
        return None
    return str(row.predicted) == str(row.truth)


def abs_error(row: Scored) -> float | None:
    """|predicted - truth| of a labelled regression row; None when it has no label."""
    if not row.labelled:
        return None
    return abs(_number(row.predicted) - _number(row.truth))


def _number(value: str | float | None) -> float:
    if value is None:
        raise ValueError("a labelled regression row needs a prediction and a truth")
    return float(value)


@dataclass(frozen=True, slots=True)
class ClassMetrics:
    """Precision (None if never predicted), recall (None if never true) and support."""

    precision: float | None
    recall: float | None
    support: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"precision": self.precision, "recall": self.recall, "support": self.support}


@dataclass(frozen=True, slots=True)
class VersionMetrics:
    """Metrics of one version; fields that do not apply to the task are None."""

    task: Task
    rows: int
    predictions: int
    errors: int
    error_rate: float | None
    labelled: int
    accuracy: float | None
    per_class: Mapping[str, ClassMetrics] | None
    log_loss: float | None
    mae: float | None
    rmse: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    def as_dict(self) -> dict[str, object]:
        per_class = (
            None
            if self.per_class is None
            else {label: stats.as_dict() for label, stats in self.per_class.items()}
        )
        return {
            "task": self.task,
            "rows": self.rows,
            "predictions": self.predictions,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "per_class": per_class,
            "log_loss": self.log_loss,
            "mae": self.mae,
            "rmse": self.rmse,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
        }


def evaluate(rows: Sequence[Scored], task: Task) -> VersionMetrics:
    """The metrics of one version over ``rows`` (see the module docstring for which count)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    answered = sum(1 for row in rows if row.answered)
    labelled = [row for row in rows if row.labelled]
    p50, p99 = _latency_percentiles(rows)
    classification = task == "classification"
    mae, rmse = (None, None) if classification else _regression_errors(labelled)
    return VersionMetrics(
        task=task,
        rows=len(rows),
        predictions=answered,
        errors=len(rows) - answered,
        error_rate=_ratio(len(rows) - answered, len(rows)),
        labelled=len(labelled),
        accuracy=_accuracy(labelled) if classification else None,
        per_class=_per_class(labelled) if classification else None,
        log_loss=_log_loss(labelled) if classification else None,
        mae=mae,
        rmse=rmse,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
    )


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _latency_percentiles(rows: Sequence[Scored]) -> tuple[float | None, float | None]:
    if not rows:
        return None, None
    latencies = np.fromiter((row.latency_ms for row in rows), dtype=np.float64, count=len(rows))
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99)


def _accuracy(labelled: Sequence[Scored]) -> float | None:
    return _ratio(sum(1 for row in labelled if is_correct(row)), len(labelled))


def _per_class(labelled: Sequence[Scored]) -> dict[str, ClassMetrics]:
    """One-vs-rest precision and recall for every label seen as truth or as prediction."""
    truths = Counter(str(row.truth) for row in labelled)
    predicted = Counter(str(row.predicted) for row in labelled)
    hits = Counter(str(row.truth) for row in labelled if is_correct(row))
    return {
        label: ClassMetrics(
            precision=_ratio(hits[label], predicted[label]),
            recall=_ratio(hits[label], truths[label]),
            support=truths[label],
        )
        for label in sorted(truths.keys() | predicted.keys())
    }


def _log_loss(labelled: Sequence[Scored]) -> float | None:
    """Mean -ln p(truth) over labelled rows that carry probabilities.

    A truth missing from the row's classes had probability 0 by the model's own account,
    so it costs as much as the floor does.
    """
    losses = [_row_loss(row) for row in labelled if row.probabilities is not None]
    return math.fsum(losses) / len(losses) if losses else None


def _row_loss(row: Scored) -> float:
    probabilities = row.probabilities or ()
    classes = list(row.classes or ())
    if len(classes) != len(probabilities):
        raise ValueError(
            f"a row has {len(probabilities)} probabilities but {len(classes)} class names"
        )
    truth = str(row.truth)
    p = probabilities[classes.index(truth)] if truth in classes else 0.0
    return -math.log(min(max(float(p), PROBABILITY_FLOOR), 1.0))


def _regression_errors(labelled: Sequence[Scored]) -> tuple[float | None, float | None]:
    if not labelled:
        return None, None
    errors = np.array([abs_error(row) for row in labelled], dtype=np.float64)
    # Scaled by the largest error so that squaring neither overflows nor underflows.
    scale = float(errors.max())
    rmse = scale * float(np.sqrt(np.mean((errors / scale) ** 2))) if scale > 0 else 0.0
    return float(errors.mean()), rmse
