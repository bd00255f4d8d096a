"""Validation-free kernels for linear scikit-learn models, proven equal at load time.

A one-row ``predict_proba`` on a LogisticRegression costs about 90 µs, of which the
arithmetic is a few: the rest is scikit-learn checking its input (dtype, shape,
dataframe detection, array namespaces) on every call. The runner has already checked the
request against the signature and for NaN, so that work is repeated for nothing, and on a
small model it is most of the runner's latency.

A kernel (runners.linear_kernels) is the same arithmetic, in the same order, through the
same numpy and scipy calls as scikit-learn's own method (``X @ coef_.T + intercept_``,
then ``expit`` or ``softmax``), so its answers are the same bits. That is not taken on
trust: ``fast_methods`` runs every kernel beside the estimator's method on probe batches
(one row and several, in the input's datatype, ordinary and extreme values) and keeps
only kernels whose answers are the same bits (``sklearn_lean.same_bits``); any
difference, or an estimator not in ``runners.sklearn_lean.KINDS`` (subclasses included),
keeps scikit-learn's method.
Kernels are built from the fitted attributes once, so refitting an estimator in place is
not supported (a served artifact never changes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from runners import linear_kernels
from runners.linear_kernels import Method
from runners.sklearn_lean import TREE_KINDS, kind_of, same_bits

log = structlog.get_logger(__name__)


def _kernels(estimator: Any) -> dict[str, Method]:
    """Candidate kernels by method name, for the estimators runners.sklearn_lean knows."""
    kind = kind_of(estimator)
    if kind is None or kind in TREE_KINDS:  # trees: scikit-learn's own walk where it is loaded
        return {}
    scores = linear_kernels.scores(estimator.coef_, estimator.intercept_)
    if kind == "linear":
        return {"predict": scores}
    classes = np.asarray(estimator.classes_)
    kernels = {"predict": linear_kernels.logistic_predict(scores, classes)}
    if kind == "logistic":
        kernels["predict_proba"] = linear_kernels.logistic_proba(scores, int(np.size(classes)))
    return kernels


def probes(n_features: int, dtype: npt.DTypeLike) -> list[npt.NDArray[Any]]:
    """Batches of 1, 1, 7 and 18 rows: ordinary values at four scales, and +-1e4."""
    rng = np.random.default_rng(20261126)
    base = (
        rng.normal(size=(16, n_features))
        * np.array([1.0, 10.0, 1e3, 1e-3])[np.arange(n_features) % 4]
    )
    extreme = np.full((2, n_features), 1e4)
    extreme[1] *= -1
    rows = np.vstack([base, extreme]).astype(dtype)
    return [rows[:1], rows[1:2], rows[:7], rows]


def fast_methods(estimator: Any, dtype: npt.DTypeLike) -> dict[str, Method]:
    """Kernels for ``estimator``'s methods that gave exactly its own answers on probes of
    ``dtype``; methods without one are left out (callers keep scikit-learn's)."""
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int) or np.dtype(dtype).kind != "f":
        return {}
    proven: dict[str, Method] = {}
    for name, kernel in _kernels(estimator).items():
        reference = getattr(estimator, name)
        try:
            same = all(
                same_bits(np.asarray(kernel(x.copy())), np.asarray(reference(x.copy())))
                for x in probes(n_features, dtype)
            )
        except Exception:  # the estimator is not what its type suggests
            same = False
        if same:
            proven[name] = kernel
        else:
            log.info("fast kernel differs from scikit-learn; keeping its method", method=name)
    return proven
