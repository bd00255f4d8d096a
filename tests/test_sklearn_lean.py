"""Linear models, decision trees and forests served by numpy alone (runners.sklearn_lean):
the same signature and the same bits as the scikit-learn path, a fallback to it whenever
that is not proven, and a runner process that never maps scikit-learn or scipy.

Each estimator is trained here and saved as model.joblib; both paths load it through
their real entry points (the lean one through its helper process).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import (
    BayesianRidge,
    ElasticNet,
    HuberRegressor,
    Lasso,
    LassoCV,
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeClassifier,
    RidgeCV,
    SGDRegressor,
)
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC, LinearSVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from greenroom_client.errors import InvalidInput
from runners import sklearn_lean, sklearn_plan, tree_kernels
from runners.config import ModelConfig, RunnerOptions, load_model_config
from runners.model import load_model
from runners.sklearn_lean import LeanSklearnModel, Plan, build, request_plan
from runners.sklearn_model import SklearnModel
from tests.runner_fixtures import infer_request, outputs_of, running, save_joblib, write_model_yaml

RNG = np.random.default_rng(11)
X = (RNG.normal(size=(400, 5)) * [1.0, 10.0, 0.1, 100.0, 1.0]).astype(np.float32)
BINARY = (X[:, 0] + X[:, 1] / 10 > 0).astype(int)
THREE = np.digitize(X[:, 0], [-0.5, 0.5])


def _object_classes() -> LogisticRegression:
    y = np.array(["no", "yes"], dtype=object)[BINARY]
    return LogisticRegression().fit(X, y)


LEAN: dict[str, Any] = {
    "binary": lambda: LogisticRegression().fit(X, BINARY),
    "multiclass": lambda: LogisticRegression(max_iter=500).fit(X, THREE),
    "strings": lambda: LogisticRegression().fit(X, np.where(BINARY == 1, "yes", "no")),
    "objects": _object_classes,
    "float64-fit": lambda: LogisticRegression().fit(X.astype(np.float64), BINARY),
    "no-intercept": lambda: LogisticRegression(fit_intercept=False).fit(X, BINARY),
    "scaled": lambda: make_pipeline(StandardScaler(), LogisticRegression()).fit(X, THREE),
    "scaled-twice": lambda: make_pipeline(
        StandardScaler(with_mean=False), "passthrough", StandardScaler(), LogisticRegression()
    ).fit(X, BINARY),
    "linear": lambda: LinearRegression().fit(X, X @ np.arange(5.0)),
    "ridge-2d": lambda: Ridge().fit(X, np.c_[X[:, 0], X[:, 1] * 3]),
    "lasso": lambda: make_pipeline(StandardScaler(), Lasso(alpha=0.01)).fit(X, X[:, 3]),
    "elasticnet": lambda: ElasticNet(alpha=0.01).fit(X, X[:, 4]),
    "ridge-classifier": lambda: RidgeClassifier().fit(X, THREE),
    "linear-svc": lambda: make_pipeline(StandardScaler(), LinearSVC()).fit(
        X, np.where(BINARY == 1, "yes", "no")
    ),
    "ridgecv-2d": lambda: RidgeCV().fit(X, np.c_[X[:, 0], X[:, 2]]),
    "lassocv": lambda: make_pipeline(StandardScaler(), LassoCV(cv=3)).fit(X, X[:, 1]),
    "sgd": lambda: make_pipeline(StandardScaler(), SGDRegressor(random_state=0)).fit(X, X[:, 0]),
    "huber": lambda: HuberRegressor(max_iter=1000).fit(X, X[:, 2] * 3),
    "bayesian-ridge": lambda: BayesianRidge().fit(X, X[:, 3]),
    "linear-svr": lambda: make_pipeline(StandardScaler(), LinearSVR()).fit(X, X[:, 4]),
    "forest": lambda: RandomForestClassifier(n_estimators=20, random_state=0).fit(X, BINARY),
    "forest-strings": lambda: make_pipeline(
        RandomForestClassifier(n_estimators=10, max_depth=6, random_state=1)
    ).fit(X, np.array(["low", "mid", "high"])[THREE]),
    "extra-trees": lambda: ExtraTreesClassifier(n_estimators=10, random_state=0).fit(X, THREE),
    "tree": lambda: DecisionTreeClassifier(random_state=0).fit(X, THREE),
    "forest-regressor": lambda: RandomForestRegressor(n_estimators=10, random_state=0).fit(
        X, X[:, 0] * 3 + X[:, 3]
    ),
    "extra-trees-regressor": lambda: ExtraTreesRegressor(n_estimators=10, random_state=0).fit(
        X, X[:, 1]
    ),
    "tree-regressor": lambda: DecisionTreeRegressor(max_depth=8).fit(X, X[:, 2]),
}
TREES = [kind for kind in LEAN if "tree" in kind or "forest" in kind]


def _save(tmp_path: Path, estimator: Any, yaml: str | None = None) -> Path:
    if yaml is not None:
        write_model_yaml(tmp_path, "m", yaml)
    return save_joblib(tmp_path, "m", "1", estimator)


def _load_both(version_dir: Path) -> tuple[Any, SklearnModel]:
    config = load_model_config(version_dir.parent)
    lean = load_model(version_dir, "m", "1", config)
    plain = SklearnModel.load(version_dir / "model.joblib", "m", "1", config)
    return lean, plain


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert set(a) == set(b)
    for name, value in a.items():
        assert value.dtype == b[name].dtype and value.shape == b[name].shape, name
        assert np.array_equal(value, b[name]), name


@pytest.mark.parametrize("kind", list(LEAN))
def test_lean_model_has_the_signature_and_bits_of_the_sklearn_path(
    kind: str, tmp_path: Path
) -> None:
    lean, plain = _load_both(_save(tmp_path, LEAN[kind]()))
    assert isinstance(lean, LeanSklearnModel)
    assert (lean.inputs, lean.outputs, lean.platform) == (plain.inputs, plain.outputs, "sklearn")
    assert lean.output_parameters == plain.output_parameters
    fresh = (np.random.default_rng(5).normal(size=(1000, 5)) * 30).astype(np.float32)
    for rows in (fresh[:1], fresh[1:3], fresh[:64], fresh):
        _assert_same(lean.predict({"input": rows.copy()}), plain.predict({"input": rows.copy()}))
        for output in lean.outputs:  # one output asked alone takes its own method
            names = [output.name]
            _assert_same(
                lean.predict({"input": rows.copy()}, names),
                plain.predict({"input": rows.copy()}, names),
            )


def test_model_yaml_renames_and_an_fp64_input_are_served_alike(tmp_path: Path) -> None:
    yaml = (
        "inputs: [{name: features, datatype: FP64, shape: [-1, 5]}]\n"
        "outputs: [{name: churned, datatype: INT64, shape: [-1]}]\n"
    )
    lean, plain = _load_both(_save(tmp_path, LEAN["scaled"](), yaml))
    assert isinstance(lean, LeanSklearnModel)
    assert [s.name for s in lean.outputs] == ["churned"] and lean.inputs == plain.inputs
    rows = np.random.default_rng(2).normal(size=(20, 5)) * 40
    _assert_same(lean.predict({"features": rows.copy()}), plain.predict({"features": rows}))


def test_nan_is_refused_as_before(tmp_path: Path) -> None:
    lean, _ = _load_both(_save(tmp_path, LEAN["binary"]()))
    rows = np.ones((2, 5), np.float32)
    rows[1, 2] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        lean.check({"input": rows})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: KNeighborsClassifier().fit(X, BINARY), "KNeighborsClassifier has no numpy"),
        (
            lambda: make_pipeline(StandardScaler(), DecisionTreeClassifier()).fit(X, BINARY),
            "a pipeline step comes before the trees",
        ),
        (
            lambda: RandomForestRegressor(n_estimators=3).fit(X, np.c_[X[:, 0], X[:, 1]]),
            "more than one target",
        ),
        (  # the plan carries text labels as numpy strings, which lose a trailing NUL
            lambda: RandomForestClassifier(n_estimators=3).fit(
                X, np.array(["a", "b\x00"], dtype=object)[BINARY]
            ),
            "do not travel as text",
        ),
        (lambda: make_pipeline(PCA(2), LogisticRegression()).fit(X, BINARY), "is a PCA"),
        (  # a subclass may override anything: exact types only
            lambda: LogisticRegressionCV(cv=3).fit(X, BINARY),
            "LogisticRegressionCV has no numpy kernel",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore::FutureWarning")  # LogisticRegressionCV's defaults
def test_other_estimators_keep_scikit_learn_and_say_why(
    make: Any, reason: str, tmp_path: Path
) -> None:
    version_dir = _save(tmp_path, make())
    plan, why = request_plan(version_dir / "model.joblib", ModelConfig())
    assert plan is None and reason in why
    model = load_model(version_dir, "m", "1", ModelConfig())
    assert isinstance(model, SklearnModel)


def test_lean_false_in_model_yaml_keeps_scikit_learn(tmp_path: Path) -> None:
    version_dir = _save(tmp_path, LEAN["binary"](), "runner: {lean: false}\n")
    config = load_model_config(version_dir.parent)
    assert config.runner == RunnerOptions(lean=False)
    assert isinstance(load_model(version_dir, "m", "1", config), SklearnModel)


def test_a_plan_whose_kernels_differ_by_one_ulp_is_not_served(tmp_path: Path) -> None:
    version_dir = _save(tmp_path, LEAN["multiclass"]())
    plan, _ = request_plan(version_dir / "model.joblib", ModelConfig())
    assert plan is not None and build(plan, "m", "1") is not None
    again = Plan.from_bytes(plan.to_bytes())
    first = again.expected[0]["probabilities"]
    first[0, 0] = np.nextafter(first[0, 0], np.inf)
    assert build(again, "m", "1") is None


def test_kernels_that_differ_fall_back_to_scikit_learn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = sklearn_lean.methods

    def off(plan: Plan) -> dict[str, Any]:
        methods = exact(plan)
        proba = methods["probabilities"]
        return {**methods, "probabilities": lambda x: np.nextafter(proba(x), np.inf)}

    monkeypatch.setattr(sklearn_lean, "methods", off)
    model = load_model(_save(tmp_path, LEAN["binary"]()), "m", "1", ModelConfig())
    assert isinstance(model, SklearnModel)


def test_an_artifact_that_cannot_load_fails_as_on_the_sklearn_path(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.joblib").write_bytes(b"not a pickle")
    plan, why = request_plan(version_dir / "model.joblib", ModelConfig())
    assert plan is None and "exited 1" in why
    with pytest.raises(Exception) as lean_error:
        load_model(version_dir, "m", "1", ModelConfig())
    with pytest.raises(Exception) as plain_error:
        SklearnModel.load(version_dir / "model.joblib", "m", "1", ModelConfig())
    assert type(lean_error.value) is type(plain_error.value)


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
@pytest.mark.parametrize("kind", ["scaled", "forest"])
def test_a_runner_serving_a_linear_model_or_a_forest_never_maps_scikit_learn(
    kind: str, tmp_path: Path
) -> None:
    estimator = LEAN[kind]()
    version_dir = _save(tmp_path, estimator)
    with running(version_dir, "m") as runner:
        rows = X[:10]
        reply = runner.stub().ModelInfer(infer_request("m", {"input": rows}, raw=True), timeout=10)
        answer = outputs_of(reply)
        maps = _mapped(runner.proc.pid)
        log = runner.log()
    np.testing.assert_array_equal(answer["label"], estimator.predict(rows))
    np.testing.assert_array_equal(answer["probabilities"], estimator.predict_proba(rows))
    assert "serving with numpy kernels" in log
    assert "site-packages/numpy/" in maps  # the check sees a package's shared objects
    assert "site-packages/sklearn/" not in maps and "site-packages/scipy/" not in maps


def test_a_compressed_joblib_file_is_planned_too(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    joblib.dump(LEAN["binary"](), version_dir / "model.joblib", compress=3)
    assert sklearn_lean.first_class(version_dir / "model.joblib") is None  # unreadable ...
    model = load_model(version_dir, "m", "1", ModelConfig())
    assert isinstance(model, LeanSklearnModel)  # ... so the helper decides


def test_an_estimator_named_first_without_a_kernel_starts_no_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version_dir = _save(tmp_path, KNeighborsClassifier().fit(X, BINARY))
    found = sklearn_lean.first_class(version_dir / "model.joblib")
    assert found == ("sklearn.neighbors._classification", "KNeighborsClassifier")

    def no_helper(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the helper was started")

    monkeypatch.setattr(subprocess, "run", no_helper)
    assert isinstance(load_model(version_dir, "m", "1", ModelConfig()), SklearnModel)


def test_what_the_model_prints_while_loading_stays_off_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    version_dir = _save(tmp_path, LEAN["scaled"]())
    real_load = joblib.load

    def chatty_load(path: Any) -> Any:
        print("hello from the model's module")
        return real_load(path)

    monkeypatch.setattr(joblib, "load", chatty_load)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() points it at stderr
    artifact = str(version_dir / "model.joblib")
    assert sklearn_plan.main([artifact, ModelConfig().model_dump_json()]) == 0
    captured = capsysbinary.readouterr()
    assert b"hello from the model's module" in captured.err
    assert build(Plan.from_bytes(captured.out), "m", "1") is not None


def test_an_unreadable_plan_falls_back_to_scikit_learn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version_dir = _save(tmp_path, LEAN["binary"]())

    def garbage(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 0, stdout=b"not an npz", stderr=b"")

    monkeypatch.setattr(subprocess, "run", garbage)
    plan, why = request_plan(version_dir / "model.joblib", ModelConfig())
    assert plan is None and "unreadable" in why
    assert isinstance(load_model(version_dir, "m", "1", ModelConfig()), SklearnModel)


def test_a_forest_fitted_with_missing_values_sends_nan_where_scikit_learn_does(
    tmp_path: Path,
) -> None:
    holes = X.copy()
    holes[RNG.random(holes.shape) < 0.2] = np.nan
    forest = RandomForestClassifier(n_estimators=15, random_state=0).fit(holes, THREE)
    lean, plain = _load_both(_save(tmp_path, forest))
    assert isinstance(lean, LeanSklearnModel) and lean.allow_nan and plain.allow_nan
    rows = (np.random.default_rng(8).normal(size=(500, 5)) * 30).astype(np.float32)
    rows[np.random.default_rng(9).random(rows.shape) < 0.3] = np.nan
    lean.check({"input": rows})
    _assert_same(lean.predict({"input": rows.copy()}), plain.predict({"input": rows.copy()}))


@pytest.mark.parametrize("kind", TREES)
def test_trees_answer_on_their_own_thresholds_as_scikit_learn_does(
    kind: str, tmp_path: Path
) -> None:
    """Values exactly on a split and one float32 step either side: where a comparison
    against a rounded threshold would go the wrong way."""
    lean, plain = _load_both(_save(tmp_path, LEAN[kind]()))
    assert isinstance(lean, LeanSklearnModel)
    plan, _ = request_plan(tmp_path / "m" / "1" / "model.joblib", ModelConfig())
    assert plan is not None and plan.forest is not None
    forest = plan.forest
    inner = forest.children[0::2] != np.arange(forest.feature.size)
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(300, 5)).astype(np.float32)
    for column in range(5):
        limits = forest.threshold[inner & (forest.feature == column)]
        if limits.size:
            rows[:, column] = rng.choice(limits, size=300)
    for step in (-np.inf, np.inf):
        edge = rows.copy()
        edge[:100] = np.nextafter(edge[:100], np.float32(step))
        _assert_same(lean.predict({"input": edge.copy()}), plain.predict({"input": edge}))


def test_the_proof_compares_bits_not_values() -> None:
    """What a client receives is the bytes: -0.0 is not 0.0, and NaN matches NaN."""
    assert not sklearn_lean.same_bits(np.array([0.0]), np.array([-0.0]))
    assert sklearn_lean.same_bits(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    assert sklearn_lean.same_bits(np.array(["a", "b"], dtype=object), np.array(["a", "b"], object))
    assert not sklearn_lean.same_bits(np.array([1], np.int64), np.array([1], np.int32))


def test_a_long_request_to_a_forest_of_many_classes_answers_as_scikit_learn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walked in chunks of rows (so that memory stays flat), trees summed one by one."""
    many = np.digitize(X[:, 0] + X[:, 1] / 10, np.linspace(-2, 2, 11))
    forest = RandomForestClassifier(n_estimators=12, max_depth=6, random_state=0).fit(X, many)
    monkeypatch.setattr(tree_kernels, "PAIRS_AT_ONCE", 1000)
    lean, plain = _load_both(_save(tmp_path, forest))
    assert isinstance(lean, LeanSklearnModel)
    rows = (np.random.default_rng(3).normal(size=(3000, 5)) * 30).astype(np.float32)
    _assert_same(lean.predict({"input": rows.copy()}), plain.predict({"input": rows.copy()}))


def test_the_path_probe_reaches_every_trees_deepest_leaf(tmp_path: Path) -> None:
    """So that a walk stopped short of the deepest level is caught at load, as it is not
    by random probes on most forests."""
    forest = RandomForestClassifier(n_estimators=8, random_state=0).fit(X, THREE)
    plan, _ = request_plan(_save(tmp_path, forest) / "model.joblib", ModelConfig())
    assert plan is not None and plan.forest is not None
    table = plan.forest
    rows = tree_kernels.path_probe(table, 5, np.float32)
    reached = tree_kernels._leaves(table, rows)
    deepest = [estimator.tree_.max_depth for estimator in forest.estimators_]
    for tree, estimator in enumerate(forest.estimators_):
        leaf = int(reached[tree, tree] - table.roots[tree])
        assert estimator.tree_.children_left[leaf] == -1
        assert estimator.tree_.compute_node_depths()[leaf] - 1 == deepest[tree]
    short = dataclasses.replace(table, depth=table.depth - 1)
    assert not np.array_equal(tree_kernels._leaves(short, rows), reached)
