"""Linear scikit-learn models, decision trees and forests served by numpy alone: a runner
without scikit-learn.

Importing scikit-learn costs a runner about 80 MB (scipy.stats, scipy.sparse,
scipy.linalg and their shared libraries), far more than a linear model's own few hundred
bytes of coefficients or a forest's node arrays. So a ``model.joblib`` is first unpickled
in a short-lived helper process (``python -m runners.sklearn_plan``), which loads it
exactly as the scikit-learn path does (``SklearnModel``) and, for the estimators this
module knows exactly, writes a *plan*: the fitted numbers, the served signature, and the
answers the scikit-learn path gives on probe batches. The runner rebuilds the arithmetic
from the plan with numpy (and scipy.special's ``expit`` for binary classifiers: 18 MB,
where scikit-learn is 80) and serves it through the same ``EstimatorModel`` (finiteness
check, one probability pass, ties asked of predict).

Known exactly (scikit-learn's own types, not subclasses; ``KINDS``): LogisticRegression;
the classifiers without probabilities RidgeClassifier(CV) and LinearSVC; the regressors
LinearRegression, Ridge(CV), Lasso(CV), ElasticNet(CV), SGDRegressor, HuberRegressor,
BayesianRidge and LinearSVR; bare or as the last step of a Pipeline whose other steps
are StandardScaler (or "passthrough"), with an FP32 or FP64 input. And with one target,
bare or alone in a Pipeline: RandomForest and ExtraTrees classifiers and regressors,
DecisionTree and ExtraTree ones (runners.tree_kernels, which says where the numpy walk
is faster than scikit-learn's and where it is not).

Nothing is taken on trust. The runner runs its kernels on the plan's probes and keeps
them only if every served output is the same dtype, shape and bits as the scikit-learn
path's answer; otherwise, or for any other estimator, or if the helper fails, it loads
the artifact with scikit-learn in process as before (``runner.lean: false`` in
model.yaml asks for that directly). Each kernel repeats scikit-learn's own operations in
its own order: StandardScaler's ``X -= mean_.astype(X.dtype)`` and ``X /= scale_...``,
``X @ coef_.T + intercept_``, scipy's own ``expit`` for two classes (``1 / (1 + exp(-x))``
written with numpy differs in the last bit for 2-11% of values, its ``exp`` being
numpy's vectorised one, not the C library's) and scikit-learn's softmax for more. A
tree's plan is also proven on rows that sit on its own thresholds, on rows inside the
region of each tree's deepest leaf (``tree_kernels.path_probe``), and, where the model
takes NaN as missing, on rows with NaN.
"""

from __future__ import annotations

import io
import itertools
import json
import pickletools
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from greenroom_client.tensors import DTYPES, TensorSpec
from runners import linear_kernels, tree_kernels
from runners.config import ModelConfig
from runners.estimator_model import EstimatorModel
from runners.linear_kernels import Method, Scaler
from runners.model import Arrays, Binding, Model
from runners.tree_kernels import Forest

log = structlog.get_logger(__name__)

# "logistic": predict and predict_proba; "classifier": predict from the decision function;
# "linear": a regressor's predict; "trees" and "tree_regression": a decision tree's or a
# forest's predict (and predict_proba), runners.tree_kernels.
Kind = Literal["logistic", "classifier", "linear", "trees", "tree_regression"]
TREE_KINDS = ("trees", "tree_regression")

# scikit-learn's own estimators (by name, within its modules: exact types, no subclass)
# whose answers are a linear kernel's.
KINDS: dict[str, Kind] = {
    "LogisticRegression": "logistic",
    **dict.fromkeys(["RidgeClassifier", "RidgeClassifierCV", "LinearSVC"], "classifier"),
    **dict.fromkeys(
        [
            "LinearRegression", "Ridge", "RidgeCV", "Lasso", "LassoCV", "ElasticNet",
            "ElasticNetCV", "SGDRegressor", "HuberRegressor", "BayesianRidge", "LinearSVR",
        ],
        "linear",
    ),
    **dict.fromkeys(
        [
            "RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier",
            "ExtraTreeClassifier",
        ],
        "trees",
    ),
    **dict.fromkeys(
        [
            "RandomForestRegressor", "ExtraTreesRegressor", "DecisionTreeRegressor",
            "ExtraTreeRegressor",
        ],
        "tree_regression",
    ),
}  # fmt: skip


def kind_of(estimator: Any) -> Kind | None:
    """The estimator's kernel kind, for scikit-learn's own classes only (a subclass, or a
    class of the same name elsewhere, may compute otherwise)."""
    kind = type(estimator)
    return KINDS.get(kind.__name__) if kind.__module__.split(".")[0] == "sklearn" else None


@dataclass
class Plan:
    """What the helper found: enough to serve the model and to prove the kernels."""

    kind: Kind
    inputs: list[Binding]
    outputs: list[Binding]
    coef: npt.NDArray[Any] | None = None  # the linear kinds
    intercept: npt.NDArray[Any] | None = None
    forest: Forest | None = None  # the tree kinds
    scalers: list[Scaler] = field(default_factory=list)
    classes: npt.NDArray[Any] | None = None  # the estimator's classes_ (logistic)
    argmax: bool = False  # label may come from the probabilities' argmax
    allow_nan: bool = False
    output_parameters: dict[str, dict[str, str]] = field(default_factory=dict)
    probes: list[npt.NDArray[Any]] = field(default_factory=list)
    expected: list[Arrays] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """An ``.npz`` without pickles: arrays by key, the rest as JSON in ``meta``. Object
        arrays (str classes and their labels) travel as str and are listed in ``meta``."""
        arrays: dict[str, Any] = {}
        if self.coef is not None and self.intercept is not None:
            arrays.update(coef=self.coef, intercept=self.intercept)
        if self.forest is not None:
            arrays.update({f"tree/{k}": v for k, v in self.forest.arrays().items()})
        for i, (mean, scale) in enumerate(self.scalers):
            if mean is not None:
                arrays[f"mean{i}"] = mean
            if scale is not None:
                arrays[f"scale{i}"] = scale
        if self.classes is not None:
            arrays["classes"] = self.classes
        for i, (probe, answer) in enumerate(zip(self.probes, self.expected, strict=True)):
            arrays[f"probe{i}"] = probe
            arrays.update({f"expected{i}/{name}": value for name, value in answer.items()})
        objects = [key for key, value in arrays.items() if value.dtype == object]
        meta = {
            "kind": self.kind,
            "inputs": [_binding_json(b) for b in self.inputs],
            "outputs": [_binding_json(b) for b in self.outputs],
            "scalers": len(self.scalers),
            "argmax": self.argmax,
            "allow_nan": self.allow_nan,
            "output_parameters": self.output_parameters,
            "probes": len(self.probes),
            "objects": objects,
            "forest": None
            if self.forest is None
            else {"depth": self.forest.depth, "average": self.forest.average},
        }
        arrays.update({key: arrays[key].astype(str) for key in objects})
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
        arrays.update({key: arrays[key].astype(object) for key in meta["objects"]})
        expected: list[Arrays] = [{} for _ in range(meta["probes"])]
        for key, value in arrays.items():
            if key.startswith("expected"):
                index, name = key.removeprefix("expected").split("/", 1)
                expected[int(index)][name] = value
        forest = meta.get("forest")
        trees = {k.removeprefix("tree/"): v for k, v in arrays.items() if k.startswith("tree/")}
        return cls(
            kind=meta["kind"],
            coef=arrays.get("coef"),
            intercept=arrays.get("intercept"),
            forest=None if forest is None else Forest.from_arrays(trees, **forest),
            inputs=[_binding(b) for b in meta["inputs"]],
            outputs=[_binding(b) for b in meta["outputs"]],
            scalers=[
                (arrays.get(f"mean{i}"), arrays.get(f"scale{i}")) for i in range(meta["scalers"])
            ],
            classes=arrays.get("classes"),
            argmax=meta["argmax"],
            allow_nan=meta["allow_nan"],
            output_parameters=meta["output_parameters"],
            probes=[arrays[f"probe{i}"] for i in range(meta["probes"])],
            expected=expected,
        )


def _binding_json(binding: Binding) -> dict[str, Any]:
    spec = binding.spec
    return {
        "name": spec.name,
        "datatype": spec.datatype,
        "shape": list(spec.shape),
        "native": binding.native,
    }


def _binding(data: dict[str, Any]) -> Binding:
    return Binding(TensorSpec(data["name"], data["datatype"], tuple(data["shape"])), data["native"])


# -- kernels ------------------------------------------------------------------------------


def methods(plan: Plan) -> dict[str, Method]:
    """The plan's arithmetic as the methods ``EstimatorModel`` calls, by native output."""
    if plan.kind in TREE_KINDS:
        return _tree_methods(plan)
    assert plan.coef is not None and plan.intercept is not None
    dtype = DTYPES[plan.inputs[0].spec.datatype]
    scores = linear_kernels.scores(plan.coef, plan.intercept, plan.scalers, dtype)
    if plan.kind == "linear":
        return {"prediction": scores, "label": scores, "probabilities": scores}
    assert plan.classes is not None
    predict = linear_kernels.logistic_predict(scores, plan.classes)
    if plan.kind == "classifier":  # no predict_proba: no probabilities output
        return {"label": predict, "prediction": predict, "probabilities": predict}
    proba = linear_kernels.logistic_proba(scores, int(np.size(plan.classes)))
    return {"label": predict, "prediction": predict, "probabilities": proba}


def _tree_methods(plan: Plan) -> dict[str, Method]:
    assert plan.forest is not None
    leaf_values = tree_kernels.values(plan.forest)
    if plan.kind == "tree_regression":
        predict = tree_kernels.regress(leaf_values)
        return {"prediction": predict, "label": predict, "probabilities": predict}
    assert plan.classes is not None
    predict = tree_kernels.classify(leaf_values, plan.classes)
    return {"label": predict, "prediction": predict, "probabilities": leaf_values}


# -- the runner's side --------------------------------------------------------------------


def same_bits(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    """The same dtype, shape and bits: -0.0 is not 0.0 here, and a NaN is its own match
    (what a client receives is the bytes). Object arrays (text labels) by value."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return bool(np.array_equal(a, b))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def build(plan: Plan, name: str, version: str) -> LeanSklearnModel | None:
    """The numpy-served model, or None when it does not answer every probe exactly as the
    scikit-learn path did."""
    model = LeanSklearnModel(
        name,
        version,
        plan.inputs,
        plan.outputs,
        methods(plan),
        allow_nan=plan.allow_nan,
        classes=plan.classes if plan.argmax else None,
    )
    model.output_parameters = plan.output_parameters
    served = [b.spec.name for b in plan.outputs]
    input_name = plan.inputs[0].spec.name
    for probe, expected in zip(plan.probes, plan.expected, strict=True):
        try:
            answer = model.predict({input_name: probe.copy()}, served)
        except Exception:
            log.warning("numpy kernel failed on a probe", exc_info=True)
            return None
        if set(answer) != set(expected) or not all(
            same_bits(answer[k], expected[k]) for k in expected
        ):
            return None
    return model


# The classes a plan can start from, as a joblib pickle names them first.
_PLANNED = {"Pipeline", *KINDS}
_SCAN_OPCODES = 64


def first_class(artifact: Path) -> tuple[str, str] | None:
    """The (module, name) of the first class the pickle refers to, the estimator's own
    for joblib.dump, read from its opcodes without unpickling; None if unreadable (a
    compressed joblib file, say). Spares the helper's scikit-learn import for the
    models it could not plan anyway."""
    strings: list[str] = []
    try:
        with artifact.open("rb") as stream:
            for op, arg, _ in itertools.islice(pickletools.genops(stream), _SCAN_OPCODES):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                    strings.append(str(arg))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return strings[-2], strings[-1]
                elif op.name == "GLOBAL":
                    module, _, name = str(arg).partition(" ")
                    return module, name
    except Exception:  # not a pickle opcode stream
        return None
    return None


def request_plan(artifact: Path, config: ModelConfig) -> tuple[Plan | None, str]:
    """Ask the helper process for a plan; (None, why) when there is none."""
    found = first_class(artifact)
    if found is not None and not (found[0].startswith("sklearn.") and found[1] in _PLANNED):
        return None, f"{found[1]} has no numpy kernel"
    argv = [sys.executable, "-m", "runners.sklearn_plan", str(artifact), config.model_dump_json()]
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=config.runner.startup_timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"the plan helper did not finish: {exc}"
    why = done.stderr.decode(errors="replace").strip().splitlines()
    if done.returncode != 0:
        return None, f"the plan helper exited {done.returncode}: {why[-1] if why else ''}"
    if not done.stdout:
        return None, why[-1] if why else "no plan"
    try:
        return Plan.from_bytes(done.stdout), ""
    except Exception as exc:  # not a plan this runner can read: serve with scikit-learn
        return None, f"the plan helper's answer is unreadable: {exc!r}"


class LeanSklearnModel(EstimatorModel):
    """The ``model.joblib`` adapter: numpy kernels when proven, else ``SklearnModel``."""

    @classmethod
    def load(cls, artifact: Path, name: str, version: str, config: ModelConfig) -> Model:
        if config.runner.lean:
            began = time.perf_counter()
            plan, why = request_plan(artifact, config)
            if plan is not None:
                model = build(plan, name, version)
                if model is not None:
                    log.info(
                        "serving with numpy kernels, without scikit-learn",
                        kernel=plan.kind,
                        plan_s=round(time.perf_counter() - began, 3),
                    )
                    return model
                why = "the kernels differ on probes"
            log.info("serving with scikit-learn", reason=why)
        from runners.sklearn_model import SklearnModel  # noqa: PLC0415 - 70 MB, only if needed

        return SklearnModel.load(artifact, name, version, config)
