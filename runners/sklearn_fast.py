"""Validation-free kernels for linear scikit-learn models, proven equal at load time.

A one-row ``predict_proba`` on a LogisticRegression costs about 90 µs, of which the
arithmetic is a few: the rest is scikit-learn checking its input (dtype, shape,
dataframe detection, array namespaces) on every call. The runner has already checked the
request against the signature and for NaN, so that work is repeated for nothing, and on a
small model it is most of the runner's latency.

A kernel here is the same arithmetic, in the same order, through the same numpy and scipy
calls as scikit-learn's own method (``X @ coef_.T + intercept_``, then ``expit`` or
``softmax``), so its answers are the same bits. That is not taken on trust: ``fast_methods``
runs every kernel beside the estimator's method on probe batches (one row and several,
in the input's datatype, ordinary and extreme values) and keeps only kernels whose
answers are ``array_equal`` to it; any difference, or an estimator this module does not
know exactly (subclasses included), keeps scikit-learn's method. Kernels are built from
the fitted attributes once, so refitting an estimator in place is not supported (a served
artifact never changes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from scipy.special import expit
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LinearRegression,
    LogisticRegression,
    Ridge,
)
from sklearn.utils.extmath import softmax

log = structlog.get_logger(__name__)

Method = Callable[[npt.NDArray[Any]], npt.NDArray[Any]]

# Exact types only: a subclass may override any method.
_REGRESSORS = (LinearRegression, Ridge, Lasso, ElasticNet)


def _linear(estimator: Any) -> Method:
    """``LinearModel._decision_function`` / ``LinearClassifierMixin.decision_function``
    without ``validate_data``."""
    coef = estimator.coef_
    coef_t = coef.T if coef.ndim == 2 else coef
    intercept = estimator.intercept_

    def scores(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        result: npt.NDArray[Any] = x @ coef_t + intercept
        return result

    return scores


def _logistic_proba(estimator: LogisticRegression) -> Method:
    """``LogisticRegression.predict_proba``: expit of the score for two classes (as
    ``_predict_proba_lr``), softmax of the scores for more."""
    scores = _linear(estimator)
    binary = np.size(estimator.classes_) <= 2

    def proba(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        s = scores(x)
        if binary:
            if s.ndim > 1 and s.shape[1] == 1:
                s = s.reshape(-1)
            p = expit(s, out=s)
            both = np.empty((p.shape[0], 2), dtype=p.dtype)
            np.subtract(1, p, out=both[:, 0])
            both[:, 1] = p
            return both
        result: npt.NDArray[Any] = softmax(s, copy=False)
        return result

    return proba


def _kernels(estimator: Any) -> dict[str, Method]:
    """Candidate kernels by method name, for estimators known exactly."""
    kind = type(estimator)
    if kind is LogisticRegression:
        return {"predict_proba": _logistic_proba(estimator)}
    if kind in _REGRESSORS:
        return {"predict": _linear(estimator)}
    return {}


def _probes(n_features: int, dtype: npt.DTypeLike) -> list[npt.NDArray[Any]]:
    rng = np.random.default_rng(20261126)
    base = (
        rng.normal(size=(16, n_features))
        * np.array([1.0, 10.0, 1e3, 1e-3])[np.arange(n_features) % 4]
    )
    extreme = np.full((2, n_features), 1e4)
    extreme[1] *= -1
    rows = np.vstack([base, extreme]).astype(dtype)
    return [rows[:1], rows[1:2], rows[:7], rows]


def _equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


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
                _equal(kernel(x.copy()), reference(x.copy())) for x in _probes(n_features, dtype)
            )
        except Exception:  # the estimator is not what its type suggests
            same = False
        if same:
            proven[name] = kernel
        else:
            log.info("fast kernel differs from scikit-learn; keeping its method", method=name)
    return proven
