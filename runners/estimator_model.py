"""An estimator's answers as a served model, whatever computes them.

``EstimatorModel`` is the serving half of a scikit-learn model: the finiteness check,
the outputs as methods on one input array, one probability pass answering both
``label`` and ``probabilities``, and the answer to zero rows (which scikit-learn
refuses: "Found array with 0 sample(s)"). It imports neither scikit-learn nor scipy, so
that a runner whose methods are numpy kernels (runners.sklearn_lean) never loads them;
the methods come from ``runners.sklearn_model`` (the estimator's own) or from those
kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from greenroom_client.errors import InvalidInput
from greenroom_client.tensors import DTYPES
from runners.model import Arrays, Binding, Model

Method = Callable[[npt.NDArray[Any]], npt.NDArray[Any]]


class EstimatorModel(Model):
    """A fitted estimator; each output is one of its methods called on the input array.

    ``classes`` is given when predict is by definition the most probable class, so that
    one probability pass may answer both outputs (ties ask predict itself)."""

    platform = "sklearn"
    row_wise = True

    def __init__(
        self,
        name: str,
        version: str,
        inputs: list[Binding],
        outputs: list[Binding],
        methods: dict[str, Method],
        *,
        allow_nan: bool = False,
        classes: npt.NDArray[Any] | None = None,
    ):
        super().__init__(name, version, inputs, outputs)
        self._input = inputs[0].spec.name
        self._methods = {b.spec.name: methods[b.native] for b in outputs}
        self.allow_nan = allow_nan
        self.classes = classes
        self._specs = {b.spec.name: b.spec for b in outputs}
        served = {b.native: b.spec.name for b in outputs}
        self._one_pass = (
            (served["label"], served["probabilities"])
            if classes is not None and "label" in served and "probabilities" in served
            else None
        )

    def check(self, inputs: Arrays) -> None:
        """What scikit-learn's finiteness check would refuse, as INVALID_ARGUMENT."""
        for name, array in inputs.items():
            if array.dtype.kind != "f":
                continue
            if self.allow_nan:
                if np.isinf(array).any():
                    raise InvalidInput(name, "contains infinity")
            elif not np.isfinite(array).all():
                raise InvalidInput(name, "contains NaN or infinity")

    def predict(self, inputs: Arrays, outputs: Sequence[str] | None = None) -> Arrays:
        features = inputs[self._input]
        names = list(self._methods if outputs is None else outputs)
        if features.ndim and features.shape[0] == 0:
            return {name: self._no_rows(name, features) for name in names}
        if self._one_pass is not None and set(self._one_pass) <= set(names):
            return self._label_from_probabilities(features, names)
        return {name: self._methods[name](features) for name in names}

    def _no_rows(self, name: str, features: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The answer to zero rows: an empty array of the output's served columns and
        datatype, the ones a one-row answer has once the server casts it to the signature
        (scikit-learn's methods refuse zero samples, and the numpy kernels need not be
        asked). An output whose columns the signature leaves open (-1, declared so in
        model.yaml) takes them from the method's answer to one row of zeros."""
        spec = self._specs[name]
        columns = spec.shape[1:]
        if all(dim >= 0 for dim in columns):
            return np.empty((0, *columns), dtype=DTYPES[spec.datatype])
        fill: Any = b"" if features.dtype == object else 0
        one = np.full((1, *features.shape[1:]), fill, dtype=features.dtype)
        return np.asarray(self._methods[name](one))[:0]

    def _label_from_probabilities(self, features: npt.NDArray[Any], names: list[str]) -> Arrays:
        """Label and probabilities from one probability pass, for estimators whose predict
        is the most probable class; rows with a tied top probability ask predict itself,
        so the label is always exactly what predict would say."""
        assert self._one_pass is not None and self.classes is not None
        label_name, proba_name = self._one_pass
        proba = self._methods[proba_name](features)
        label = self.classes[np.argmax(proba, axis=1)]
        if proba.shape[1] > 1:
            if proba.shape[1] == 2:
                tied = proba[:, 0] == proba[:, 1]
            else:
                top2 = np.sort(proba, axis=1)[:, -2:]
                tied = top2[:, 0] == top2[:, 1]
            if tied.any():
                label[tied] = self._methods[label_name](features[tied])
        answer = {label_name: label, proba_name: proba}
        return {
            name: answer[name] if name in answer else self._methods[name](features)
            for name in names
        }
