"""How one model version did over a window of ledger rows: answers, accuracy, error, speed.

The ledger hands over plain rows (``Scored``); this module only counts. It imports neither
gRPC nor database code. Every value that is undefined for the rows at hand (no rows, no
labels, a class never predicted) is ``None`` rather than NaN or an exception, so that
``VersionMetrics.as_dict()`` is JSON as it stands and an empty window is a normal answer.

Which rows count where:

- every row counts for latency and for the error rate (a failure is part of the service),
  except a request its client cancelled before the answer came, before its deadline
  (status ``CANCELLED``, left out by the caller: it says nothing about the version);
- an *error* is a row whose call failed;
- an *answered* row is one that succeeded and carries a prediction. A row that succeeded
  without one (the client asked only for other outputs, e.g. ``probabilities``) is
  neither: the service answered, but there is nothing to score;
- a *labelled* row is an answered row whose truth is known; accuracy, precision, recall,
  log loss, MAE and RMSE are computed over labelled rows only. A regression truth that is
  not a finite number (text that is no number, NaN, infinity: the gateway refuses such
  feedback, but older ledgers may hold some) is no truth: its row counts as unlabelled
  everywhere, so MAE and RMSE always describe the same rows.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
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
        return self.answered and _known(self.truth)


def _known(truth: str | float | None) -> bool:
    """Whether ``truth`` is one: a number (regression) only if it is finite."""
    if truth is None:
        return False
    return math.isfinite(truth) if isinstance(truth, float | int) else True


def is_correct(row: Scored) -> bool | None:
    """Whether a labelled classification row is right (labels compared as text); else None."""
    if not row.labelled:
        return None
    return str(row.predicted) == str(row.truth)


def abs_error(row: Scored) -> float | None:
    """|predicted - truth| of a labelled regression row; None when it has no label (or a
    truth that is not a finite number)."""
    if not row.labelled:
        return None
    truth = finite_number(row.truth)
    return None if truth is None else abs(_number(row.predicted) - truth)


def finite_number(truth: str | float | None) -> float | None:
    """A regression truth as a finite number, else None (no number, NaN, infinite): the
    one reading of truth text, shared by feedback's check and the promotion test."""
    try:
        value = _number(truth)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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


def evaluate(rows: Iterable[Scored], task: Task) -> VersionMetrics:
    """The metrics of one version over ``rows`` (see the module docstring for which count)."""
    accumulator = Accumulator(task)
    for row in rows:
        accumulator.add(row)
    return accumulator.result()


class Accumulator:
    """``evaluate`` one row at a time, so that a window never has to be held as a list:
    counters, and one float per row (latency) or per labelled row (loss, error)."""

    def __init__(self, task: Task) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
        self.task = task
        self.rows = self.failed = self.answered = self.labelled = self.correct = 0
        self.latencies = array("d")
        self.losses = array("d")  # classification rows with probabilities
        self.errors = array("d")  # regression: |predicted - truth|
        self.truths: Counter[str] = Counter()
        self.predicted: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()

    def add(self, row: Scored) -> None:
        self.rows += 1
        self.latencies.append(row.latency_ms)
        self.failed += not row.ok
        if not row.answered:
            return
        self.answered += 1
        if not row.labelled:
            return
        if self.task == "regression":
            known = finite_number(row.truth)
            if known is None:  # no usable truth: the row stays unlabelled
                return
            self.labelled += 1
            self.errors.append(abs(_number(row.predicted) - known))
            return
        self.labelled += 1
        truth, predicted = str(row.truth), str(row.predicted)
        self.truths[truth] += 1
        self.predicted[predicted] += 1
        if truth == predicted:
            self.correct += 1
            self.hits[truth] += 1
        if row.probabilities is not None:
            self.losses.append(_row_loss(row))

    def result(self) -> VersionMetrics:
        classification = self.task == "classification"
        p50, p99 = _latency_percentiles(self.latencies)
        mae, rmse = (None, None) if classification else _regression_errors(self.errors)
        return VersionMetrics(
            task=self.task,
            rows=self.rows,
            predictions=self.answered,
            errors=self.failed,
            error_rate=_ratio(self.failed, self.rows),
            labelled=self.labelled,
            accuracy=_ratio(self.correct, self.labelled) if classification else None,
            per_class=self._per_class() if classification else None,
            log_loss=math.fsum(self.losses) / len(self.losses)
            if classification and self.losses
            else None,
            mae=mae,
            rmse=rmse,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
        )

    def _per_class(self) -> dict[str, ClassMetrics]:
        """One-vs-rest precision and recall for every label seen as truth or as prediction."""
        return {
            label: ClassMetrics(
                precision=_ratio(self.hits[label], self.predicted[label]),
                recall=_ratio(self.hits[label], self.truths[label]),
                support=self.truths[label],
            )
            for label in sorted(self.truths.keys() | self.predicted.keys())
        }


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _latency_percentiles(latencies: array[float]) -> tuple[float | None, float | None]:
    if not latencies:
        return None, None
    p50, p99 = np.percentile(np.frombuffer(latencies, dtype=np.float64), [50, 99])
    return float(p50), float(p99)


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


def _regression_errors(errors: array[float]) -> tuple[float | None, float | None]:
    if not errors:
        return None, None
    values = np.frombuffer(errors, dtype=np.float64)
    if not np.isfinite(values).all():  # a NaN or infinite prediction: both say so alike
        with np.errstate(over="ignore", invalid="ignore"):
            return float(values.mean()), float(np.sqrt(np.mean(values**2)))
    # Scaled by the largest error so that squaring neither overflows nor underflows.
    scale = float(values.max())
    rmse = scale * float(np.sqrt(np.mean((values / scale) ** 2))) if scale > 0 else 0.0
    return float(values.mean()), rmse
