"""The helper that turns a ``model.joblib`` into a plan for runners.sklearn_lean.

    python -m runners.sklearn_plan ARTIFACT MODEL_CONFIG_JSON

It loads the artifact exactly as the scikit-learn path serves it (``SklearnModel``), and
for an estimator known exactly writes the plan (``Plan.to_bytes``) to stdout: the fitted
numbers, the served signature, and that path's answers on probe batches. For any other
estimator it writes nothing and gives the reason on stderr; exit 0 both ways. A model
that cannot be loaded exits 1: the runner then loads it in process, which reports why.
It is a process of its own so that the runner never imports scikit-learn: the helper's
memory is returned to the system when it exits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from greenroom_client.tensors import DTYPES
from runners import tree_kernels
from runners.config import ModelConfig
from runners.sklearn_fast import probes
from runners.sklearn_lean import TREE_KINDS, Plan, kind_of
from runners.sklearn_model import SklearnModel, pipeline_steps
from runners.tree_kernels import Forest, TreeArrays


class Unsupported(Exception):
    """The estimator is not one the numpy kernels repeat exactly."""


def make_plan(estimator: Any, model: SklearnModel) -> Plan:
    """The plan for ``estimator`` as ``model`` serves it; Unsupported if there is none."""
    if isinstance(estimator, Pipeline) and type(estimator) is not Pipeline:
        raise Unsupported(f"{type(estimator).__name__} is a Pipeline subclass")
    steps = pipeline_steps(estimator)
    if not steps:
        raise Unsupported("the pipeline has no steps")
    *scalers, final = steps
    for step in scalers:
        if type(step) is not StandardScaler:  # exact: a subclass may transform otherwise
            raise Unsupported(f"a pipeline step is a {type(step).__name__}")
    kind = kind_of(final)
    if kind is None:
        raise Unsupported(f"{type(final).__name__} has no numpy kernel")
    datatype = model.inputs[0].datatype
    n_features = getattr(final, "n_features_in_", None)
    if datatype not in ("FP32", "FP64") or not isinstance(n_features, int):
        raise Unsupported(f"the input is {datatype}, not FP32 or FP64 features")
    plan = Plan(
        kind=kind,
        inputs=model.input_bindings,
        outputs=model.output_bindings,
        classes=None if kind in ("linear", "tree_regression") else np.asarray(final.classes_),
        argmax=model.classes is not None,
        allow_nan=model.allow_nan,
        output_parameters=model.output_parameters,
    )
    if plan.classes is not None and plan.classes.dtype == object:
        lost = [c for c in plan.classes if not isinstance(c, str) or "\x00" in c]
        if lost:  # the plan carries text labels as numpy strings, which drop a trailing NUL
            raise Unsupported(f"class labels {lost[:3]!r} do not travel as text")
    batches = probes(n_features, DTYPES[datatype])
    if kind in TREE_KINDS:
        if scalers:
            raise Unsupported("a pipeline step comes before the trees")
        plan.forest = _forest(final, model.allow_nan)
        for rows_of in (tree_kernels.boundary_probe, tree_kernels.path_probe):
            batches.append(rows_of(plan.forest, n_features, DTYPES[datatype]))
        if model.allow_nan:
            batches.append(_with_nan(batches[-1]))
    else:
        plan.coef, plan.intercept = np.asarray(final.coef_), np.asarray(final.intercept_)
        plan.scalers = [
            (
                np.asarray(s.mean_) if s.with_mean else None,
                np.asarray(s.scale_) if s.with_std else None,
            )
            for s in scalers
        ]
    served = [b.spec.name for b in model.output_bindings]
    input_name = model.inputs[0].name
    for probe in batches:
        plan.probes.append(probe)
        plan.expected.append(model.predict({input_name: probe.copy()}, served))
    return plan


def _forest(final: Any, allow_nan: bool) -> Forest:
    """The stacked table of a fitted tree or forest with one target."""
    if getattr(final, "n_outputs_", None) != 1:
        raise Unsupported("the trees predict more than one target")
    estimators = getattr(final, "estimators_", None)
    trees = [final] if estimators is None else list(estimators)
    arrays = []
    for estimator in trees:
        tree = estimator.tree_
        arrays.append(
            TreeArrays(
                children_left=np.asarray(tree.children_left),
                children_right=np.asarray(tree.children_right),
                feature=np.asarray(tree.feature),
                threshold=np.asarray(tree.threshold),
                value=np.asarray(tree.value),
                missing_go_to_left=getattr(tree, "missing_go_to_left", None),
            )
        )
    depth = max(int(estimator.tree_.max_depth) for estimator in trees)
    return tree_kernels.stack(arrays, depth, average=estimators is not None, nan=allow_nan)


def _with_nan(rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The rows with NaN in a scattered third of their cells: missing values' side."""
    holes = rows.copy()
    holes[np.random.default_rng(3).random(holes.shape) < 1 / 3] = np.nan
    return holes


def main(argv: list[str]) -> int:
    artifact, config_json = Path(argv[0]), argv[1]
    config = ModelConfig.model_validate_json(config_json)
    plan_out = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever the model's own modules print stays off the plan
    try:
        estimator = joblib.load(artifact)
        model = SklearnModel.from_estimator(estimator, artifact, "plan", "0", config)
    except Exception as exc:  # the runner loads it again and reports it properly
        print(f"cannot load {artifact}: {exc}", file=sys.stderr)
        return 1
    try:
        plan = make_plan(estimator, model)
    except Unsupported as exc:
        print(exc, file=sys.stderr)
        return 0
    plan_out.write(plan.to_bytes())
    plan_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
