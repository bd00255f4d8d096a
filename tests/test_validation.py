"""Validation before deployment: holdout metrics, invariance, latency, the owner's pytest.

The models are small scikit-learn estimators trained here, saved into the test's folder,
loaded back and called in-process through the ``Predict`` interface the gateway gives.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.tree import DecisionTreeClassifier

from gateway.validation import (
    NO_CHECKS,
    Check,
    HoldoutError,
    Predict,
    Prediction,
    ValidationResult,
    load_checks,
    read_holdout,
    validate,
)
from runners.config import ConfigError, Invariance, ModelConfig, Validation

COLOURS = ["red", "blue", "green"]
CLASSIFIER = ModelConfig(features=["x1", "x2", "colour"], categorical=["colour"])
REGRESSOR = ModelConfig(features=["x1", "x2"])


# --------------------------------------------------------------------------- models


def _inputs(rng: np.random.Generator, rows: int) -> npt.NDArray[Any]:
    data = np.empty((rows, 3), dtype=object)
    data[:, 0] = rng.uniform(size=rows)
    data[:, 1] = rng.uniform(size=rows)
    data[:, 2] = rng.choice(COLOURS, size=rows)
    return data


def _truth(data: npt.NDArray[Any]) -> list[str]:
    """The task: 'a' when x1 is above one half; colour has nothing to do with it."""
    return ["a" if x1 > 0.5 else "b" for x1 in data[:, 0]]


def _train_classifier(folder: Path, uses_colour: bool) -> Path:
    """A tree on (x1, x2, one-hot colour); trained on labels that flip for red rows when
    ``uses_colour``, so that model depends on the colour and misses the truth."""
    data = _inputs(np.random.default_rng(1), 300)
    labels = _truth(data)
    if uses_colour:
        flip = {"a": "b", "b": "a"}
        labels = [flip[y] if c == "red" else y for y, c in zip(labels, data[:, 2], strict=True)]
    columns = ColumnTransformer(
        [("num", "passthrough", [0, 1]), ("colour", OneHotEncoder(sparse_output=False), [2])]
    )
    model = make_pipeline(columns, DecisionTreeClassifier(random_state=0)).fit(data, labels)
    path = folder / f"classifier-{'colour' if uses_colour else 'plain'}.joblib"
    joblib.dump(model, path)
    return path


def _train_regressor(folder: Path) -> Path:
    """y = 3 x1 + noise, fitted on x1 alone: x2 cannot move its answer."""
    rng = np.random.default_rng(2)
    data = rng.uniform(size=(200, 2))
    target = 3 * data[:, 0] + rng.normal(scale=0.05, size=200)
    columns = ColumnTransformer([("x1", "passthrough", [0])])
    model = make_pipeline(columns, LinearRegression()).fit(data, target)
    path = folder / "regressor.joblib"
    joblib.dump(model, path)
    return path


def _predictor(path: Path, task: str) -> Predict:
    """The model called in a worker thread, as the gateway's runners would be."""
    model = joblib.load(path)

    async def predict(rows: npt.NDArray[Any]) -> Prediction:
        start = time.perf_counter()
        out = await asyncio.to_thread(model.predict, rows)
        took = (time.perf_counter() - start) * 1000
        if task == "classification":
            return Prediction([str(y) for y in out], None, took)
        return Prediction(None, np.asarray(out, dtype=np.float64), took)

    return predict


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Predict]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "plain": _predictor(_train_classifier(folder, uses_colour=False), "classification"),
        "colour": _predictor(_train_classifier(folder, uses_colour=True), "classification"),
        "regressor": _predictor(_train_regressor(folder), "regression"),
    }


def _sleeping(ms: float) -> Predict:
    """A model that takes ``ms`` per call and always says 'a'."""

    async def predict(rows: npt.NDArray[Any]) -> Prediction:
        start = time.perf_counter()
        await asyncio.sleep(ms / 1000)
        return Prediction(["a"] * len(rows), None, (time.perf_counter() - start) * 1000)

    return predict


# --------------------------------------------------------------------------- files


def _write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def _classifier_dir(tmp_path: Path, rows: int = 40) -> Path:
    model_dir = tmp_path / "shapes"
    model_dir.mkdir()
    data = _inputs(np.random.default_rng(7), rows)
    lines = [f"{x1},{x2},{c},{y}" for (x1, x2, c), y in zip(data, _truth(data), strict=True)]
    _write_csv(model_dir / "holdout.csv", "x1,x2,colour,label", lines)
    return model_dir


def _regressor_dir(tmp_path: Path) -> Path:
    model_dir = tmp_path / "prices"
    model_dir.mkdir()
    data = np.random.default_rng(8).uniform(size=(30, 2))
    lines = [f"{x1},{x2},{3 * x1}" for x1, x2 in data]
    _write_csv(model_dir / "holdout.csv", "x1,x2,label", lines)
    return model_dir


def _with(config: ModelConfig, **validation: Any) -> ModelConfig:
    spec = Validation.model_validate({"holdout": "holdout.csv", **validation})
    return config.model_copy(update={"validation": spec})


def _run(coro: Coroutine[Any, Any, ValidationResult]) -> ValidationResult:
    return asyncio.run(coro)


def _only(result: ValidationResult) -> Any:
    assert len(result.checks) == 1, result.checks
    return result.checks[0]


# --------------------------------------------------------------------------- classification


def test_a_good_classifier_passes_accuracy_and_invariance(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    model_dir = _classifier_dir(tmp_path)
    config = _with(
        CLASSIFIER, min_accuracy=0.9, invariance=[{"feature": "colour", "values": COLOURS}]
    )
    result = _run(validate("shapes", "2", model_dir, config, models["plain"]))
    assert result.passed, result.checks
    accuracy, invariance = result.checks
    assert accuracy.name == "model.yaml: min_accuracy 0.9 on holdout.csv"
    assert accuracy.value is not None and accuracy.value >= 0.9
    assert accuracy.threshold == 0.9
    assert invariance.name.startswith("model.yaml: invariance colour")
    assert invariance.detail.startswith("0 of 40 rows changed")
    assert invariance.value == 0.0
    body = json.loads(json.dumps(result.as_dict()))
    assert body["model"] == "shapes" and body["version"] == "2" and body["passed"] is True
    assert body["checks"][0]["name"] == accuracy.name and body["note"] is None


def test_a_classifier_below_min_accuracy_fails(tmp_path: Path, models: dict[str, Predict]) -> None:
    config = _with(CLASSIFIER, min_accuracy=0.9)
    result = _run(validate("shapes", "3", _classifier_dir(tmp_path), config, models["colour"]))
    check = _only(result)
    assert not result.passed and not check.passed
    assert check.value is not None and check.value < 0.9
    assert "< 0.9" in check.detail and "/40 rows" in check.detail


def test_a_model_that_uses_the_feature_fails_invariance_naming_the_count(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    model_dir = _classifier_dir(tmp_path)
    config = _with(CLASSIFIER, invariance=[{"feature": "colour", "values": ["red", "blue"]}])
    result = _run(validate("shapes", "3", model_dir, config, models["colour"]))
    check = _only(result)
    assert not result.passed
    changed = round((check.value or 0) * 40)
    assert changed > 20  # every row answers differently for red than for blue
    assert check.detail.startswith(f"{changed} of 40 rows changed their answer")
    # The same change is fine when the owner tolerates it.
    lenient = _with(
        CLASSIFIER, invariance=[{"feature": "colour", "values": COLOURS, "tolerance": 1.0}]
    )
    assert _run(validate("shapes", "3", model_dir, lenient, models["colour"])).passed


def test_invariance_on_an_unknown_feature_or_a_bad_value_fails(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    invariance = [
        {"feature": "size", "values": ["big"]},
        {"feature": "x1", "values": ["tall"]},
        {"feature": "colour", "delta": 1.0},
        {"feature": 2, "values": ["red"]},
    ]
    config = _with(CLASSIFIER, invariance=invariance)
    result = _run(validate("shapes", "2", _classifier_dir(tmp_path), config, models["plain"]))
    unknown, not_a_number, delta, by_index = result.checks
    assert "'size' is not a feature of holdout.csv (x1, x2, colour)" in unknown.detail
    assert "'tall' is not a number, and 'x1' is numeric" in not_a_number.detail
    assert "delta needs a numeric feature; 'colour' is categorical" in delta.detail
    assert by_index.passed, by_index.detail
    assert not result.passed


# --------------------------------------------------------------------------- regression


def test_regression_mae_and_delta_invariance(tmp_path: Path, models: dict[str, Predict]) -> None:
    invariance = [
        {"feature": "x2", "delta": 0.5},
        {"feature": "x1", "delta": 0.1},
        {"feature": "x1", "delta": 0.1, "max_change": 0.5},
    ]
    model_dir = _regressor_dir(tmp_path)
    config = _with(REGRESSOR, max_mae=0.1, invariance=invariance)
    result = _run(validate("prices", "1", model_dir, config, models["regressor"]))
    mae, ignored, used, within = result.checks
    assert mae.passed and mae.value is not None and mae.value < 0.1, mae.detail
    assert mae.name == "model.yaml: max_mae 0.1 on holdout.csv"
    assert ignored.passed and ignored.name.startswith("model.yaml: invariance x2 +/-0.5")
    assert not used.passed and used.detail.startswith("30 of 30 rows changed")
    assert within.passed, within.detail  # moving x1 by 0.1 moves y by about 0.3
    strict = _with(REGRESSOR, max_mae=0.0001)
    check = _only(_run(validate("prices", "1", model_dir, strict, models["regressor"])))
    assert not check.passed and "> 0.0001" in check.detail


def test_the_wrong_kind_of_answer_fails_the_check(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    config = _with(REGRESSOR, min_accuracy=0.5)
    check = _only(
        _run(validate("prices", "1", _regressor_dir(tmp_path), config, models["regressor"]))
    )
    assert not check.passed
    assert check.detail == "the model answered no labels (a regressor? use max_mae)"
    config = _with(CLASSIFIER, max_mae=0.5)
    check = _only(_run(validate("shapes", "1", _classifier_dir(tmp_path), config, models["plain"])))
    assert "the model answered no values" in check.detail


# --------------------------------------------------------------------------- latency


def test_latency_budget_pass_and_fail(tmp_path: Path) -> None:
    model_dir = _classifier_dir(tmp_path, rows=5)  # fewer rows than the minimum of calls
    config = _with(CLASSIFIER, latency_budget_ms=1000)  # 1 ms calls; room for a busy CI
    calls: list[int] = []
    sleeping = _sleeping(1)

    async def counted(rows: npt.NDArray[Any]) -> Prediction:
        calls.append(len(rows))
        return await sleeping(rows)

    check = _only(_run(validate("shapes", "2", model_dir, config, counted)))
    assert check.passed, check.detail
    assert calls == [1] * 21  # a warm-up, then 20 measured single-row calls
    assert "over 20 single-row calls <= budget 1000 ms" in check.detail
    assert check.name == "model.yaml: latency p99 <= 1000 ms on holdout.csv"
    slow = _with(CLASSIFIER, latency_budget_ms=5)
    check = _only(_run(validate("shapes", "2", model_dir, slow, _sleeping(15))))
    assert not check.passed
    assert check.value is not None and check.value >= 15 and check.threshold == 5
    assert "> budget 5 ms" in check.detail


# --------------------------------------------------------------------------- declarations


def test_checks_are_gathered_from_model_yaml_and_tests_yaml(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    model_dir = _classifier_dir(tmp_path)
    tests = model_dir / "tests"
    tests.mkdir()
    (tests / "colour.yaml").write_text(
        "holdout: holdout.csv\ninvariance: [{feature: colour, values: [red, blue]}]\n"
    )
    (tests / "accuracy.yml").write_text("holdout: holdout.csv\nmin_accuracy: 0.5\n")
    (tests / "notes.txt").write_text("not a check")
    config = _with(CLASSIFIER, min_accuracy=0.9)
    names = [check.name for check in load_checks(model_dir, config)]
    assert names == [
        "model.yaml: min_accuracy 0.9 on holdout.csv",
        "tests/accuracy.yml: min_accuracy 0.5 on holdout.csv",
        "tests/colour.yaml: invariance colour in [red, blue] on holdout.csv",
    ]
    result = _run(validate("shapes", "2", model_dir, config, models["plain"]))
    assert result.passed and [c.name for c in result.checks] == names
    assert load_checks(model_dir, CLASSIFIER)[0].kind == "min_accuracy"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("holdout: [unclosed", "while parsing"),
        ("min_accuracy: 2\nholdout: h.csv", "less than or equal to 1"),
        ("holdout: h.csv\nsurprise: 1", "Extra inputs are not permitted"),
        ("min_accuracy: 0.5", "validation min_accuracy needs a 'holdout' file"),
        ("invariance: [{feature: colour}]", "exactly one of 'values' and 'delta'"),
    ],
)
def test_a_broken_tests_yaml_is_a_config_error_naming_the_file(
    tmp_path: Path, models: dict[str, Predict], text: str, fragment: str
) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "broken.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"broken\.yaml") as caught:
        load_checks(tmp_path, CLASSIFIER)
    assert fragment in str(caught.value)
    result = _run(validate("shapes", "2", tmp_path, CLASSIFIER, models["plain"]))
    check = _only(result)
    assert not result.passed and "broken.yaml" in check.detail


def test_a_metric_without_holdout_in_model_yaml_is_a_config_error(tmp_path: Path) -> None:
    config = CLASSIFIER.model_copy(update={"validation": Validation(latency_budget_ms=10)})
    with pytest.raises(ConfigError, match=r"model\.yaml: validation latency_budget_ms needs"):
        load_checks(tmp_path, config)


def test_a_model_without_checks_passes_with_a_note(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "helpers.py").write_text("")  # not a test file
    result = _run(validate("shapes", "2", tmp_path, CLASSIFIER, models["plain"]))
    assert result.passed and result.checks == [] and result.note == NO_CHECKS
    assert result.as_dict()["note"] == NO_CHECKS
    assert load_checks(tmp_path, ModelConfig(validation=Validation(holdout="h.csv"))) == []


# --------------------------------------------------------------------------- python tests


def _python_dir(tmp_path: Path, body: str) -> Path:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_served.py").write_text(textwrap.dedent(body))
    return tmp_path


ENV_TEST = """
    import os

    def test_the_version_under_test():
        assert os.environ["GREENROOM_TARGET"] == "127.0.0.1:9"
        assert os.environ["GREENROOM_MODEL"] == "shapes"
        assert os.environ["GREENROOM_VERSION"] == "2"
"""


def test_python_tests_that_pass(tmp_path: Path, models: dict[str, Predict]) -> None:
    model_dir = _python_dir(tmp_path, ENV_TEST)
    assert load_checks(model_dir, CLASSIFIER) == [
        Check("tests/test_*.py: pytest", "python_tests", tests_dir=model_dir / "tests")
    ]
    result = _run(
        validate("shapes", "2", model_dir, CLASSIFIER, models["plain"], target="127.0.0.1:9")
    )
    check = _only(result)
    assert result.passed, check.detail
    assert "1 passed" in check.detail


def test_python_tests_that_fail_report_the_output_tail(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    model_dir = _python_dir(tmp_path, ENV_TEST)
    result = _run(
        validate("shapes", "3", model_dir, CLASSIFIER, models["plain"], target="127.0.0.1:9")
    )
    check = _only(result)
    assert not result.passed
    assert check.detail.startswith("pytest exited with status 1\n")
    assert "1 failed" in check.detail and "AssertionError" in check.detail


def test_python_tests_without_a_target_are_not_run(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    model_dir = _python_dir(tmp_path, "def test_never():\n    raise SystemExit(3)\n")
    check = _only(_run(validate("shapes", "2", model_dir, CLASSIFIER, models["plain"])))
    assert not check.passed and check.detail.startswith("not run: no gateway address")


def test_python_tests_past_their_time_limit_are_killed(
    tmp_path: Path, models: dict[str, Predict]
) -> None:
    body = "import time\n\ndef test_slow():\n    time.sleep(60)\n"
    model_dir = _python_dir(tmp_path, body)
    start = time.monotonic()
    result = _run(
        validate(
            "shapes", "2", model_dir, CLASSIFIER, models["plain"], target="x:1", python_timeout_s=2
        )
    )
    assert time.monotonic() - start < 10
    assert _only(result).detail.startswith("timed out after 2 s")


# --------------------------------------------------------------------------- bad holdouts


HEADER = "x1,x2,colour,label"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "holdout.csv: cannot be read"),
        ("", "holdout.csv: empty; it needs a header row and a 'label' column"),
        (f"{HEADER}\n", "holdout.csv: no data rows after the header"),
        ("x1,x2,colour,y\n0.1,0.2,red,a\n", "holdout.csv: no 'label' column"),
        (f"{HEADER}\n0.1,0.2,red,a\n0.3,red,b\n", "holdout.csv:3: 3 fields, the header has 4"),
        (f"{HEADER}\n0.1,0.2,red,a\n0.3,high,red,b\n", "holdout.csv:3: column 'x2': 'high'"),
        (f"{HEADER}\n0.1,0.2,red,\n", "holdout.csv:2: the label is empty"),
        ("x1,colour,size,label\n0.1,red,3,a\n", "missing ['x2'], unexpected ['size']"),
        ("x1,x1,x2,colour,label\n", "duplicated columns ['x1']"),
    ],
)
def test_bad_holdout_files_fail_every_check_that_needs_them(
    tmp_path: Path, models: dict[str, Predict], content: str | None, fragment: str
) -> None:
    if content is not None:
        (tmp_path / "holdout.csv").write_text(content)
    invariance = [{"feature": "colour", "values": ["red"]}]
    config = _with(CLASSIFIER, min_accuracy=0.5, invariance=invariance, latency_budget_ms=50)
    result = _run(validate("shapes", "2", tmp_path, config, models["plain"]))
    assert not result.passed and len(result.checks) == 3
    for check in result.checks:
        assert not check.passed and fragment in check.detail, check.detail
        assert check.value is None


def test_holdout_columns_follow_the_model_and_keep_categories_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    _write_csv(path, "colour,label,x2,x1", ["red,a,2,1", " blue ,b,4,3"])
    holdout = read_holdout(path, ["x1", "x2", "colour"], ["colour"])
    assert holdout.features == ["x1", "x2", "colour"] and holdout.numeric == [True, True, False]
    assert holdout.rows.dtype == object
    assert holdout.rows.tolist() == [[1.0, 2.0, "red"], [3.0, 4.0, "blue"]]
    assert holdout.labels == ["a", "b"]
    numeric = read_holdout(_numeric_csv(tmp_path))
    assert numeric.features == ["b", "a"] and numeric.rows.dtype == np.float64
    assert numeric.rows.tolist() == [[1.0, 2.5]]
    with pytest.raises(HoldoutError, match="'red' is not a number"):
        read_holdout(path)  # without 'categorical', every feature must be a number


def _numeric_csv(tmp_path: Path) -> Path:
    path = tmp_path / "n.csv"
    _write_csv(path, "b,a,label", ["1,2.5,7"])
    return path


# --------------------------------------------------------------------------- failing runners


def test_a_predict_that_raises_fails_each_check_with_its_message(tmp_path: Path) -> None:
    async def down(rows: npt.NDArray[Any]) -> Prediction:
        raise ConnectionError("runner for shapes 2 is unavailable")

    config = _with(CLASSIFIER, min_accuracy=0.5, latency_budget_ms=50)
    result = _run(validate("shapes", "2", _classifier_dir(tmp_path), config, down))
    assert not result.passed and len(result.checks) == 2
    for check in result.checks:
        assert check.detail == "ConnectionError: runner for shapes 2 is unavailable"


def test_an_answer_with_the_wrong_number_of_rows_fails(tmp_path: Path) -> None:
    async def short(rows: npt.NDArray[Any]) -> Prediction:
        return Prediction(["a"], None, 1.0)

    config = _with(CLASSIFIER, min_accuracy=0.5)
    check = _only(_run(validate("shapes", "2", _classifier_dir(tmp_path), config, short)))
    assert check.detail == "the model answered 1 labels for 40 rows"
    assert Invariance(feature="x", delta=1.0).max_change == 0.0
