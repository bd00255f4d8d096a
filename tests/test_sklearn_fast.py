"""The validation-free linear kernels: used only where they give scikit-learn's own bits.

Each estimator is trained here, saved as model.joblib and loaded by ``SklearnModel``, so
the kernels are exercised exactly as served when scikit-learn is (``runner.lean: false``,
or an estimator runners.sklearn_lean does not take), batched arrays included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LinearRegression,
    LogisticRegression,
    Ridge,
)
from sklearn.tree import DecisionTreeClassifier

from runners import linear_kernels, sklearn_fast
from runners.config import ModelConfig
from runners.sklearn_fast import fast_methods
from runners.sklearn_model import SklearnModel

RNG = np.random.default_rng(7)
X = RNG.normal(size=(300, 6)).astype(np.float32)


def _binary() -> LogisticRegression:
    return LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))


def _multiclass() -> LogisticRegression:
    return LogisticRegression(max_iter=500).fit(X, np.digitize(X[:, 0], [-0.5, 0.5]))


def _string_classes() -> LogisticRegression:
    return LogisticRegression().fit(X, np.where(X[:, 2] > 0, "yes", "no"))


ESTIMATORS: dict[str, tuple[Any, str]] = {
    "binary": (_binary(), "predict_proba"),
    "multiclass": (_multiclass(), "predict_proba"),
    "strings": (_string_classes(), "predict_proba"),
    "linear": (LinearRegression().fit(X, X @ np.arange(6.0)), "predict"),
    "ridge-2d": (Ridge().fit(X, np.c_[X[:, 0], X[:, 1] * 3]), "predict"),
    "lasso": (Lasso(alpha=0.01).fit(X, X[:, 3]), "predict"),
    "elasticnet": (ElasticNet(alpha=0.01).fit(X, X[:, 4]), "predict"),
}


@pytest.mark.parametrize("kind", list(ESTIMATORS))
def test_kernel_is_proven_and_equal_on_fresh_data(kind: str) -> None:
    estimator, method = ESTIMATORS[kind]
    kernels = fast_methods(estimator, np.float32)
    assert set(kernels) == {method, "predict"}  # classifiers: predict and predict_proba
    fresh = RNG.normal(size=(50, 6)).astype(np.float32) * 100
    for rows in (fresh[:1], fresh):
        for name, kernel in kernels.items():
            expected = getattr(estimator, name)(rows)
            got = kernel(rows)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), name


@pytest.mark.parametrize("kind", ["binary", "multiclass", "ridge-2d"])
def test_served_model_uses_kernel_and_answers_like_sklearn(kind: str, tmp_path: Path) -> None:
    estimator, _ = ESTIMATORS[kind]
    (tmp_path / "m" / "1").mkdir(parents=True)
    joblib.dump(estimator, tmp_path / "m" / "1" / "model.joblib")
    model = SklearnModel.load(tmp_path / "m" / "1" / "model.joblib", "m", "1", ModelConfig())
    rows = RNG.normal(size=(9, 6)).astype(np.float32)
    answer = model.predict({"input": rows})
    if kind == "ridge-2d":
        assert np.array_equal(answer["prediction"], estimator.predict(rows))
    else:
        assert np.array_equal(answer["label"], estimator.predict(rows))
        assert np.array_equal(answer["probabilities"], estimator.predict_proba(rows))
    assert isinstance(model, SklearnModel)
    methods = model._methods
    used = [m for m in methods.values() if getattr(m, "__module__", "") == linear_kernels.__name__]
    assert used, "the proven kernel was not used"


def test_subclasses_and_other_estimators_keep_sklearn() -> None:
    class Tweaked(LogisticRegression):  # type: ignore[misc]
        def predict_proba(self, X: Any) -> Any:
            return super().predict_proba(X) * 0.5

    tweaked = Tweaked().fit(X, (X[:, 0] > 0).astype(int))
    assert fast_methods(tweaked, np.float32) == {}
    tree = DecisionTreeClassifier().fit(X, (X[:, 0] > 0).astype(int))
    assert fast_methods(tree, np.float32) == {}
    assert fast_methods(_binary(), np.int64) == {}  # kernels are proven for floats only


def test_a_kernel_that_differs_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    def off_by_one_ulp(estimator: Any) -> dict[str, Any]:
        exact = linear_kernels.scores(estimator.coef_, estimator.intercept_)
        return {"predict": lambda x: np.nextafter(exact(x), np.inf)}

    monkeypatch.setattr(sklearn_fast, "_kernels", off_by_one_ulp)
    assert fast_methods(ESTIMATORS["linear"][0], np.float32) == {}


def test_a_kernel_that_raises_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(estimator: Any) -> dict[str, Any]:
        def fail(x: Any) -> Any:
            raise ValueError("no")

        return {"predict": fail}

    monkeypatch.setattr(sklearn_fast, "_kernels", broken)
    assert fast_methods(ESTIMATORS["linear"][0], np.float32) == {}
