"""scikit-learn estimators and pipelines saved with ``joblib.dump`` as ``model.joblib``.

The signature comes from the fitted estimator, so most models need no model.yaml:

    input          FP32   [-1, n_features_in_]     the feature matrix, one row per example
    classifiers    label          [-1]              predict(); INT64, BYTES, FP64 or BOOL
                                                    after the type of ``classes_``
                   probabilities  FP64 [-1, n_classes]   predict_proba(), when it exists
    regressors     prediction     FP64 [-1] or [-1, k]   predict()

The task is ``sklearn.base.is_classifier`` unless model.yaml says ``task``. model.yaml
``inputs``/``outputs`` rename these and pin their datatype and shape, in the order above
(see ``runners.model.bind``); a text pipeline, for instance, declares
``inputs: [{name: text, datatype: BYTES, shape: [-1]}]``. Answers are exactly what the
estimator's own methods return for the same array: no extra preprocessing happens here.
The estimator takes one array, so pipelines that need a DataFrame are out of scope.

Rows are independent, so concurrent requests are batched (runners.batching). The methods
run under ``assume_finite=True``: scikit-learn's own finiteness check would otherwise
run again on every call, and a NaN would surface as an opaque INTERNAL error (or fail a
whole batch). Instead ``check`` refuses, per request and before merging, a float input
holding NaN or infinity with INVALID_ARGUMENT; for a model that takes NaN as "missing"
(HistGradientBoosting*, a pipeline starting with an imputer; not a scaler before a
model that does not), only infinity. Linear models skip scikit-learn's per-call input
validation altogether through ``runners.sklearn_fast``, whose kernels are kept only
after giving the estimator's own bits at load; runners.sklearn_lean serves them without
loading scikit-learn at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
import sklearn.utils
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from greenroom_client.tensors import DTYPES, TensorSpec
from runners.config import ConfigError, ModelConfig
from runners.estimator_model import EstimatorModel, Method
from runners.model import Binding, bind
from runners.sklearn_fast import fast_methods

# numpy kind of ``classes_`` -> V2 datatype of the label output; anything else is BYTES.
_LABEL_DATATYPES = {"i": "INT64", "u": "INT64", "f": "FP64", "b": "BOOL"}


def _label_datatype(classes: Any) -> str:
    parts = classes if isinstance(classes, list) else [classes]
    kinds = {np.asarray(part).dtype.kind for part in parts}
    datatypes = {_LABEL_DATATYPES.get(kind, "BYTES") for kind in kinds}
    return datatypes.pop() if len(datatypes) == 1 else "BYTES"


def _classifier_outputs(estimator: Any, where: str) -> list[TensorSpec]:
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ConfigError(f"{where}: task is classification but the estimator has no classes_")
    if isinstance(classes, list):  # multi-output classifier: one label per target
        return [TensorSpec("label", _label_datatype(classes), (-1, len(classes)))]
    outputs = [TensorSpec("label", _label_datatype(classes), (-1,))]
    if hasattr(estimator, "predict_proba"):
        outputs.append(TensorSpec("probabilities", "FP64", (-1, len(classes))))
    return outputs


# Classifiers whose predict() is by definition the class of highest predict_proba (up to
# ties, which are asked of predict itself): one probability pass answers both outputs.
_ARGMAX_CONSISTENT = frozenset(
    {
        "LogisticRegression",
        "DecisionTreeClassifier",
        "ExtraTreeClassifier",
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "GradientBoostingClassifier",
        "HistGradientBoostingClassifier",
        "GaussianNB",
        "MultinomialNB",
        "BernoulliNB",
        "ComplementNB",
        "CategoricalNB",
    }
)


def _argmax_classes(estimator: Any) -> npt.NDArray[Any] | None:
    """classes_ when predict may be taken from predict_proba's argmax, else None."""
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    classes = getattr(estimator, "classes_", None)
    if type(final).__name__ not in _ARGMAX_CONSISTENT or classes is None:
        return None
    if isinstance(classes, list) or not hasattr(estimator, "predict_proba"):
        return None
    return np.asarray(classes)


def _class_names(estimator: Any, outputs: list[Binding]) -> dict[str, dict[str, str]]:
    """``classes`` (JSON, as text) on the probabilities output: its columns' labels."""
    classes = getattr(estimator, "classes_", None)
    if classes is None or isinstance(classes, list):
        return {}
    names = json.dumps([str(c) for c in np.asarray(classes).tolist()])
    return {b.spec.name: {"classes": names} for b in outputs if b.native == "probabilities"}


def _prediction_shape(estimator: Any) -> tuple[int, ...]:
    """[-1] for one target, [-1, k] for k; read from the fitted final estimator."""
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    n_outputs = getattr(final, "n_outputs_", None)
    if isinstance(n_outputs, int):
        return (-1,) if n_outputs == 1 else (-1, n_outputs)
    coef = getattr(final, "coef_", None)
    if coef is not None and np.ndim(coef) == 2:  # linear models fitted on a 2-D target
        return (-1, int(np.shape(coef)[0]))
    return (-1,)


def _native_input(estimator: Any, config: ModelConfig, where: str) -> TensorSpec:
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None and config.inputs is None:
        raise ConfigError(
            f"{where}: the estimator does not say how many features it takes "
            "(no n_features_in_); declare its input in model.yaml"
        )
    return TensorSpec("input", "FP32", (-1, int(n_features) if n_features else -1))


def pipeline_steps(estimator: Any) -> list[Any]:
    """The estimators the input goes through, in order: a pipeline's real steps,
    nested pipelines flattened."""
    if not isinstance(estimator, Pipeline):
        return [estimator]
    steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
    return [inner for step in steps for inner in pipeline_steps(step)]


def _tag_allows_nan(estimator: Any) -> bool:
    """The estimator's scikit-learn ``allow_nan`` tag; estimators without tags (not
    scikit-learn's) are taken not to."""
    try:
        get_tags = getattr(sklearn.utils, "get_tags", None)
        if get_tags is not None:  # scikit-learn >= 1.6
            return bool(get_tags(estimator).input_tags.allow_nan)
        return bool(estimator._get_tags().get("allow_nan", False))
    except Exception:  # a third-party estimator with broken or missing tags
        return False


def _allows_nan(estimator: Any) -> bool:
    """Whether the model takes NaN as "missing", after its steps' scikit-learn tags.

    NaN must be taken by each step it reaches: a scaler passes it on (StandardScaler
    "allows" NaN), so a scaler before a LogisticRegression does not, and such a request
    is refused rather than answered with NaN probabilities. An imputer ends the walk (it
    fills NaN in), and so does a composite transformer (ColumnTransformer, FeatureUnion),
    whose own tag speaks for what it holds."""
    steps = pipeline_steps(estimator)
    for step in steps:
        if not _tag_allows_nan(step):
            return False
        composite = hasattr(step, "transformers") or hasattr(step, "transformer_list")
        if composite or type(step).__module__.startswith("sklearn.impute"):
            return True
    return bool(steps)


def _assume_finite(method: Method) -> Method:
    """scikit-learn's method without its own finiteness check: ``check`` did it, per
    request, and a NaN must not fail a whole batch."""

    def call(features: npt.NDArray[Any]) -> npt.NDArray[Any]:
        with sklearn.config_context(assume_finite=True):
            return method(features)

    return call


def _fast(estimator: Any, methods: dict[str, Method], dtype: Any) -> dict[str, Method]:
    """The outputs whose method has a proven validation-free kernel (sklearn_fast)."""
    kernels = fast_methods(estimator, dtype)
    bound = {
        "predict": estimator.predict,
        "predict_proba": getattr(estimator, "predict_proba", None),
    }
    return {
        output: kernels[name]
        for output, method in methods.items()
        for name, original in bound.items()
        if name in kernels and method == original
    }


class SklearnModel(EstimatorModel):
    """An estimator loaded with joblib in this process, its methods scikit-learn's own
    (or ``sklearn_fast``'s proven kernels)."""

    @classmethod
    def load(cls, artifact: Path, name: str, version: str, config: ModelConfig) -> SklearnModel:
        return cls.from_estimator(joblib.load(artifact), artifact, name, version, config)

    @classmethod
    def from_estimator(
        cls, estimator: Any, artifact: Path, name: str, version: str, config: ModelConfig
    ) -> SklearnModel:
        """The served model of an estimator already loaded from ``artifact``."""
        where = str(artifact)
        if not callable(getattr(estimator, "predict", None)):
            raise ConfigError(f"{where}: holds a {type(estimator).__name__}, not an estimator")
        task = config.task or ("classification" if is_classifier(estimator) else "regression")
        if task == "classification":
            native = _classifier_outputs(estimator, where)
        else:
            native = [TensorSpec("prediction", "FP64", _prediction_shape(estimator))]
        methods: dict[str, Method] = {
            "label": estimator.predict,
            "prediction": estimator.predict,
            "probabilities": getattr(estimator, "predict_proba", estimator.predict),
        }
        yaml = str(artifact.parent.parent / "model.yaml")
        inputs = bind([_native_input(estimator, config, where)], config.inputs, "inputs", yaml)
        datatype = inputs[0].spec.datatype
        fast = _fast(estimator, methods, DTYPES[datatype]) if datatype in DTYPES else {}
        methods = {name: fast.get(name) or _assume_finite(m) for name, m in methods.items()}
        model = cls(
            name,
            version,
            inputs,
            bind(native, config.outputs, "outputs", yaml),
            methods,
            allow_nan=_allows_nan(estimator),
            classes=_argmax_classes(estimator),
        )
        model.output_parameters = _class_names(estimator, model.output_bindings)
        return model
