"""Dynamic batching: the batcher alone with a fake model that records its calls, then real
runner processes answering many concurrent requests, each with exactly its own rows.

To make the queue deterministic, the unit tests hold the first model call open
(``FakeModel.hold``) while the requests under test queue up behind it, one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import structlog
from grpc_health.v1 import health_pb2
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from greenroom_client.errors import InternalError, InvalidInput
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.batching import DEFAULT_MAX_BATCH_SIZE, Batcher, default_max_batch_size
from runners.config import load_model_config
from runners.model import Arrays, load_model
from tests.runner_fixtures import (
    Runner,
    infer_request,
    outputs_of,
    rpc_error,
    running,
    save_custom,
    save_joblib,
    save_onnx,
    write_model_yaml,
)

X, Y = load_iris(return_X_y=True)
X32 = X.astype(np.float32)
Outputs = tuple[str, ...]


@dataclass
class Call:
    rows: int
    shape: tuple[int, ...]
    outputs: Outputs
    thread: int


@dataclass
class FakeModel:
    """``y = 2x`` and ``s`` = the row sums: row-wise, so merged answers can be checked.

    Records every call. With ``hold`` set, the first call waits for ``release``, so that
    requests queue up behind it; ``fail_below_zero`` raises like a model bug would."""

    delay_s: float = 0.0
    hold: bool = False
    fail_below_zero: Exception | None = None
    scalar_sum: bool = False
    calls: list[Call] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    running: int = 0
    most_running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        x = inputs["x"]
        with self.lock:
            first = not self.calls
            self.calls.append(Call(len(x), x.shape, tuple(outputs), threading.get_ident()))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if first and self.hold:
                self.entered.set()
                assert self.release.wait(10)
            time.sleep(self.delay_s)
            if self.fail_below_zero is not None and (x < 0).any():
                raise self.fail_below_zero
            answers = {"y": x * 2, "s": x.sum() if self.scalar_sum else x.sum(axis=1)}
            return {name: answers[name] for name in outputs}
        finally:
            with self.lock:
                self.running -= 1


def rows(n: int, width: int = 3, start: float = 0.0) -> npt.NDArray[np.float32]:
    """``n`` distinct rows, so that a request given someone else's rows is caught."""
    return (np.arange(n * width, dtype=np.float32).reshape(n, width) + start).astype(np.float32)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=64) as executor:
        yield executor


def wait_queued(batcher: Batcher, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while batcher.queued() != count:
        assert time.monotonic() < deadline, f"{batcher.queued()} queued, not {count}"
        time.sleep(0.001)


def queue_behind_held_call(
    batcher: Batcher,
    fake: FakeModel,
    pool: ThreadPoolExecutor,
    requests: Sequence[tuple[Arrays, Outputs]],
) -> list[Future[Arrays]]:
    """Hold a first call open, queue ``requests`` in order behind it, then release it."""
    fake.hold = True
    held = pool.submit(batcher.run, {"x": rows(1, start=1000)}, ("y",), "held")
    assert fake.entered.wait(5)
    futures = []
    for index, (inputs, outputs) in enumerate(requests):
        futures.append(pool.submit(batcher.run, inputs, outputs, f"r{index}"))
        wait_queued(batcher, index + 1)
    fake.release.set()
    held.result(timeout=10)
    return futures


def expect_own_answer(future: Future[Arrays], x: npt.NDArray[Any], outputs: Outputs) -> None:
    answer = future.result(timeout=10)
    assert sorted(answer) == sorted(outputs)
    if "y" in outputs:
        np.testing.assert_array_equal(answer["y"], x * 2)
    if "s" in outputs:
        np.testing.assert_array_equal(answer["s"], x.sum(axis=1))


# --- the batcher ----------------------------------------------------------------------------


def test_at_concurrency_1_a_request_runs_inline_in_its_callers_thread() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, executions=1, max_batch_size=256)
    for n in (1, 3, 2):
        x = rows(n)
        answer = batcher.run({"x": x}, ["y", "s"])
        np.testing.assert_array_equal(answer["s"], x.sum(axis=1))
    assert [c.thread for c in fake.calls] == [threading.get_ident()] * 3
    assert [c.rows for c in fake.calls] == [1, 3, 2]
    assert batcher.queued() == 0


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(
    pool: ThreadPoolExecutor,
) -> None:
    fake = FakeModel(delay_s=0.02)
    batcher = Batcher(fake, executions=1, max_batch_size=256)
    inputs = [rows(1 + i % 4, start=100 * i) for i in range(16)]
    start = threading.Barrier(16)

    def call(x: npt.NDArray[np.float32]) -> Arrays:
        start.wait()
        return batcher.run({"x": x}, ["y", "s"])

    futures = [pool.submit(call, x) for x in inputs]
    for future, x in zip(futures, inputs, strict=True):
        expect_own_answer(future, x, ("y", "s"))
    assert len(fake.calls) < len(inputs)
    assert max(c.rows for c in fake.calls) > 4  # at least one call held several requests
    assert sum(c.rows for c in fake.calls) == sum(len(x) for x in inputs)


def test_at_most_executions_model_calls_run_at_once(pool: ThreadPoolExecutor) -> None:
    fake = FakeModel(delay_s=0.01)
    batcher = Batcher(fake, executions=2, max_batch_size=0)  # never merge: 24 calls
    inputs = [rows(1, start=i) for i in range(24)]
    futures = [pool.submit(batcher.run, {"x": x}, ["s"]) for x in inputs]
    for future, x in zip(futures, inputs, strict=True):
        expect_own_answer(future, x, ("s",))
    assert len(fake.calls) == 24
    assert fake.most_running == 2


def test_mismatched_shapes_outputs_and_row_counts_do_not_merge(
    pool: ThreadPoolExecutor,
) -> None:
    fake = FakeModel()
    batcher = Batcher(fake, executions=1, max_batch_size=256)
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(1, start=1)}, ("y", "s")),  # head of the first batch
        ({"x": rows(1, width=4)}, ("y", "s")),  # other width
        ({"x": rows(2, start=2)}, ("y", "s")),  # merges with the first
        ({"x": rows(1, start=3)}, ("s",)),  # other outputs
        ({"x": rows(3, start=4)}, ("y", "s")),  # merges with the first
        ({"x": rows(1, start=5).astype(np.float64)}, ("y", "s")),  # other dtype
    ]
    futures = queue_behind_held_call(batcher, fake, pool, requests)
    for future, (inputs, outputs) in zip(futures, requests, strict=True):
        expect_own_answer(future, inputs["x"], outputs)
    batches = [(c.shape, c.outputs) for c in fake.calls[1:]]
    assert batches == [
        ((6, 3), ("y", "s")),
        ((1, 4), ("y", "s")),
        ((1, 3), ("s",)),
        ((1, 3), ("y", "s")),
    ]


def test_requests_whose_inputs_disagree_on_rows_run_alone(pool: ThreadPoolExecutor) -> None:
    fake = FakeModel()
    batcher = Batcher(fake, executions=1, max_batch_size=256)
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(2, start=10 * i), "w": rows(3)}, ("y",)) for i in range(3)
    ]
    futures = queue_behind_held_call(batcher, fake, pool, requests)
    for future, (inputs, outputs) in zip(futures, requests, strict=True):
        expect_own_answer(future, inputs["x"], outputs)
    assert [c.rows for c in fake.calls[1:]] == [2, 2, 2]


def test_max_batch_size_is_respected_and_a_bigger_request_still_runs(
    pool: ThreadPoolExecutor,
) -> None:
    fake = FakeModel()
    batcher = Batcher(fake, executions=1, max_batch_size=4)
    sizes = [2, 2, 3, 1, 4, 5]
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(n, start=10 * i)}, ("y",)) for i, n in enumerate(sizes)
    ]
    futures = queue_behind_held_call(batcher, fake, pool, requests)
    for future, (inputs, outputs) in zip(futures, requests, strict=True):
        expect_own_answer(future, inputs["x"], outputs)
    assert [c.rows for c in fake.calls[1:]] == [2 + 2, 3 + 1, 4, 5]


def test_max_batch_size_0_never_merges(pool: ThreadPoolExecutor) -> None:
    fake = FakeModel()
    batcher = Batcher(fake, executions=1, max_batch_size=0)
    requests: list[tuple[Arrays, Outputs]] = [({"x": rows(1, start=i)}, ("y",)) for i in range(3)]
    futures = queue_behind_held_call(batcher, fake, pool, requests)
    for future, (inputs, outputs) in zip(futures, requests, strict=True):
        expect_own_answer(future, inputs["x"], outputs)
    assert [c.rows for c in fake.calls] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ValueError("boom"), InternalError("internal error; see the runner log")),
        (InvalidInput("x", "values must not be negative"), None),
    ],
)
def test_a_predict_error_fails_only_its_batch(
    pool: ThreadPoolExecutor, raised: Exception, expected: Exception | None
) -> None:
    answered = expected or raised  # a GreenroomError from the model travels as it is
    fake = FakeModel(fail_below_zero=raised)
    batcher = Batcher(fake, executions=1, max_batch_size=256)
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(1, start=1)}, ("y",)),
        ({"x": rows(1, start=-50)}, ("y",)),  # poisons the batch it merges into
        ({"x": rows(1, width=4)}, ("y",)),  # a batch of its own
    ]
    with structlog.testing.capture_logs() as logs:
        futures = queue_behind_held_call(batcher, fake, pool, requests)
        for future in futures[:2]:
            error = future.exception(timeout=10)
            assert type(error) is type(answered)
            assert str(error) == str(answered)
        expect_own_answer(futures[2], requests[2][0]["x"], ("y",))
    failures = [entry for entry in logs if entry["event"] == "inference failed"]
    if isinstance(raised, InvalidInput):
        assert failures == []  # the caller's mistake: nothing to log
    else:
        assert [f["request_ids"] for f in failures] == [["r0", "r1"]]  # logged once
        assert failures[0]["exc_info"] is raised
    assert [c.rows for c in fake.calls[1:]] == [2, 1]


def test_an_output_without_one_row_per_input_row_reruns_the_batch_unmerged(
    pool: ThreadPoolExecutor,
) -> None:
    fake = FakeModel(scalar_sum=True)  # "s" is one number for the whole call
    batcher = Batcher(fake, executions=1, max_batch_size=256)
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(n, start=10 * n)}, ("s",)) for n in (1, 2, 3)
    ]
    with structlog.testing.capture_logs() as logs:
        futures = queue_behind_held_call(batcher, fake, pool, requests)
        for future, (inputs, _) in zip(futures, requests, strict=True):
            assert future.result(timeout=10)["s"] == inputs["x"].sum()
        assert [c.rows for c in fake.calls[1:]] == [6, 1, 2, 3]
        fake.calls.clear()
        fake.entered.clear()
        fake.release.clear()
        queue_behind_held_call(batcher, fake, pool, requests)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1  # once per process
    assert "one row per input row" in warnings[0]["event"]


# --- which models batch by default ----------------------------------------------------------


def test_batching_is_on_for_sklearn_and_onnx_off_for_custom_models(tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    dirs = {
        "sk": save_joblib(tmp_path, "sk", "1", clf),
        "ox": save_onnx(tmp_path, "ox", "1", clf, n_features=4, zipmap=False),
        "py": save_custom(tmp_path, "py", "1", "class Model:\n    def predict(self, x): ...\n"),
    }
    write_model_yaml(tmp_path, "py", "inputs: [{name: x}]\noutputs: [{name: y}]\n")

    def batch_size(name: str) -> int:
        config = load_model_config(dirs[name].parent)
        model = load_model(dirs[name], name, "1", config)
        return default_max_batch_size(model, config.runner.max_batch_size)

    assert (batch_size("sk"), batch_size("ox"), batch_size("py")) == (256, 256, 0)
    assert DEFAULT_MAX_BATCH_SIZE == 256
    write_model_yaml(tmp_path, "py", "inputs: [{name: x}]\noutputs: [{name: y}]\n"
                     "runner: {max_batch_size: 8}\n")  # fmt: skip
    assert batch_size("py") == 8
    write_model_yaml(tmp_path, "sk", "runner: {max_batch_size: 0}\n")
    assert batch_size("sk") == 0
    write_model_yaml(tmp_path, "sk", "outputs: [{name: label, datatype: INT64, shape: [2]}]\n")
    assert batch_size("sk") == 0  # an output without a batch dimension


def test_sklearn_refuses_nan_unless_the_estimator_takes_it_as_missing(tmp_path: Path) -> None:
    holes = X.copy()
    holes[::7, 1] = np.nan
    estimators = {
        "plain": LogisticRegression(max_iter=1000).fit(X, Y),
        "hgb": HistGradientBoostingClassifier(max_iter=5).fit(holes, Y),
        "imputer": make_pipeline(SimpleImputer(), LogisticRegression(max_iter=1000)).fit(holes, Y),
    }
    nan = {"input": np.array([[1, np.nan, 1, 1]], dtype=np.float32)}
    inf = {"input": np.array([[1, np.inf, 1, 1]], dtype=np.float32)}
    for name, estimator in estimators.items():
        model_dir = save_joblib(tmp_path, name, "1", estimator)
        model = load_model(model_dir, name, "1", load_model_config(model_dir.parent))
        with pytest.raises(InvalidInput) as refused:
            model.check(inf)
        if name == "plain":
            assert str(refused.value) == "input 'input': contains NaN or infinity"
            with pytest.raises(InvalidInput):
                model.check(nan)
            continue
        assert str(refused.value) == "input 'input': contains infinity"
        model.check(nan)  # missing values are the estimator's business
        np.testing.assert_array_equal(model.predict(nan)["label"], estimator.predict(nan["input"]))


# --- real runners ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris_clf() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(X, Y)


@pytest.fixture(scope="module")
def iris(
    tmp_path_factory: pytest.TempPathFactory, iris_clf: LogisticRegression
) -> Iterator[Runner]:
    root = tmp_path_factory.mktemp("models")
    with running(save_joblib(root, "iris", "1", iris_clf), "iris", extra=["--threads", "1"]) as r:
        yield r


def test_64_concurrent_requests_each_get_exactly_their_own_answers(
    iris: Runner, iris_clf: LogisticRegression, pool: ThreadPoolExecutor
) -> None:
    stub = iris.stub()
    slices = [(i * 7 % 140, i * 7 % 140 + 1 + i % 9) for i in range(64)]
    start = threading.Barrier(64)

    def call(index: int) -> Any:
        lo, hi = slices[index]
        request = infer_request(
            "iris", {"input": X32[lo:hi]}, raw=index % 2 == 0, request_id=f"req-{index}"
        )
        start.wait()
        return stub.ModelInfer(request, timeout=20)

    responses = list(pool.map(call, range(64)))
    for index, ((lo, hi), response) in enumerate(zip(slices, responses, strict=True)):
        assert response.id == f"req-{index}"
        out = outputs_of(response)
        np.testing.assert_array_equal(out["label"], iris_clf.predict(X32[lo:hi]))
        # Merged rows go through BLAS in a bigger matrix: the last bit may differ.
        want = iris_clf.predict_proba(X32[lo:hi])
        np.testing.assert_allclose(out["probabilities"], want, rtol=1e-12, atol=1e-15)
    assert '"max_batch_size": 256' in iris.log()


def test_nan_or_infinity_is_invalid_argument(iris: Runner) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = X32[:3].copy()
        x[1, 2] = bad
        err = rpc_error(iris.stub().ModelInfer, infer_request("iris", {"input": x}, raw=True))
        assert (err.code(), err.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'input': contains NaN or infinity",
        )


SLEEPY_MODEL = """
import time

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

    def predict(self, inputs):
        time.sleep(float(inputs["x"][0]))
        return {"y": inputs["x"] + 1}
"""


def test_health_and_metadata_answer_while_the_model_runs(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    model_dir = save_custom(tmp_path, "sleepy", "1", SLEEPY_MODEL)
    with running(model_dir, "sleepy") as runner:
        assert '"max_batch_size": 0' in runner.log()
        stub = runner.stub()
        request = infer_request("sleepy", {"x": np.array([2.0], dtype=np.float32)}, raw=True)
        busy = pool.submit(stub.ModelInfer, request, timeout=10)
        time.sleep(0.3)  # inside predict now
        began = time.monotonic()
        assert runner.health("sleepy") == health_pb2.HealthCheckResponse.SERVING
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="sleepy"), timeout=5).platform
        assert time.monotonic() - began < 1.0
        assert not busy.done()
        np.testing.assert_array_equal(outputs_of(busy.result(timeout=10))["y"], [3.0])
