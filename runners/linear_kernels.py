"""scikit-learn's linear arithmetic without scikit-learn: the kernels both
``runners.sklearn_fast`` (in a runner that loaded the estimator) and
``runners.sklearn_lean`` (in one that never imports scikit-learn) serve.

Each kernel is the same operations, in the same order and through the same numpy and
scipy calls, as the scikit-learn method it stands for, so that its answers are the same
bits; both callers prove that on probe batches before using one. Only the validation
(dtype, shape, finiteness, dataframes, array namespaces) is left out: the runner has
checked the request against the signature already. scipy.special is imported only for
binary classifiers (its ``expit``: numpy's ``1 / (1 + exp(-x))`` differs in the last bit
for 2-11% of values, numpy's vectorised ``exp`` not being the C library's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Method = Callable[[npt.NDArray[Any]], npt.NDArray[Any]]
Scaler = tuple[npt.NDArray[Any] | None, npt.NDArray[Any] | None]  # StandardScaler mean, scale


def scores(
    coef: npt.NDArray[Any], intercept: Any, scalers: Sequence[Scaler] = (), dtype: Any = None
) -> Method:
    """``LinearModel._decision_function``, after ``StandardScaler.transform`` for each of
    ``scalers`` (``X -= mean_.astype(X.dtype); X /= scale_.astype(X.dtype)`` on a copy;
    ``dtype`` is the input's)."""
    coef_t = coef.T if coef.ndim == 2 else coef
    if not scalers:

        def plain(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
            result: npt.NDArray[Any] = x @ coef_t + intercept
            return result

        return plain
    cast = [
        (None if m is None else m.astype(dtype), None if s is None else s.astype(dtype))
        for m, s in scalers
    ]

    def scaled(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        for mean, scale in cast:
            x = x.copy()
            if mean is not None:
                x -= mean
            if scale is not None:
                x /= scale
        result: npt.NDArray[Any] = x @ coef_t + intercept
        return result

    return scaled


def _decision(linear: Method) -> Method:
    """``LinearClassifierMixin.decision_function``: one column becomes a vector."""

    def decision(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        s = linear(x)
        return s.reshape(-1) if s.ndim > 1 and s.shape[1] == 1 else s

    return decision


def softmax(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``sklearn.utils.extmath.softmax(x, copy=False)`` for numpy arrays."""
    x -= np.max(x, axis=1).reshape((-1, 1))
    np.exp(x, out=x)
    x /= np.sum(x, axis=1).reshape((-1, 1))
    return x


def logistic_proba(linear: Method, n_classes: int) -> Method:
    """``LogisticRegression.predict_proba``: expit of the score for two classes (as
    ``_predict_proba_lr``), softmax of the scores for more."""
    decision = _decision(linear)
    if n_classes > 2:
        return lambda x: softmax(decision(x))
    from scipy.special import expit  # noqa: PLC0415 - binary classifiers only

    def proba(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        p = expit(decision(x))
        both = np.empty((p.shape[0], 2), dtype=p.dtype)
        np.subtract(1, p, out=both[:, 0])
        both[:, 1] = p
        return both

    return proba


def logistic_predict(linear: Method, classes: npt.NDArray[Any]) -> Method:
    """``LinearClassifierMixin.predict``: the positive class where the score is above 0,
    else the class of the highest score."""
    decision = _decision(linear)

    def predict(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        s = decision(x)
        indices = (s > 0).astype(np.intp) if s.ndim == 1 else np.argmax(s, axis=1)
        labels: npt.NDArray[Any] = classes.take(indices, axis=0)
        return labels

    return predict
