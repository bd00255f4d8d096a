"""Dynamic batching: the batcher alone with a fake model that records its calls, then real
runner processes answering many concurrent requests, each with exactly its own rows.

To make the queue deterministic, the unit tests hold the first model call open
(``FakeModel.hold``) while the requests under test queue up behind it, one at a time.
"""

from __future__ import annotations

import json
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
from sklearn.preprocessing import StandardScaler

from greenroom_client.errors import InternalError, InvalidInput
from greenroom_proto.inference import grpc_service_pb2 as pb
from runners.batching import DEFAULT_MAX_BATCH_SIZE, Batcher, default_max_batch_size
from runners.config import ConfigError, load_model_config
from runners.model import Arrays, load_model
from tests.runner_fixtures import (
    SLEEPY_MODEL,
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
    poisoned: bool = False


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
            call = Call(len(x), x.shape, tuple(outputs), threading.get_ident(), bool((x < 0).any()))
            self.calls.append(call)
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
def test_a_predict_error_fails_only_the_request_that_causes_it(
    pool: ThreadPoolExecutor, raised: Exception, expected: Exception | None
) -> None:
    answered = expected or raised  # a GreenroomError from the model travels as it is
    fake = FakeModel(fail_below_zero=raised)
    batcher = Batcher(fake, executions=1, max_batch_size=256)
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(1, start=1)}, ("y",)),
        ({"x": rows(2, start=-50)}, ("y",)),  # poisons the batch it merges into
        ({"x": rows(3, start=7)}, ("y",)),
        ({"x": rows(1, width=4)}, ("y",)),  # a batch of its own
    ]
    with structlog.testing.capture_logs() as logs:
        futures = queue_behind_held_call(batcher, fake, pool, requests)
        error = futures[1].exception(timeout=10)
        assert type(error) is type(answered)
        assert str(error) == str(answered)
        for index in (0, 2, 3):
            expect_own_answer(futures[index], requests[index][0]["x"], ("y",))
    failures = [entry for entry in logs if entry["event"] == "inference failed"]
    if isinstance(raised, InvalidInput):
        assert failures == []  # the caller's mistake: nothing to log
    else:
        assert [f["request_id"] for f in failures] == ["r1"]  # only the guilty request
        assert failures[0]["exc_info"] is raised
    # The merged call failed; its requests ran again one by one; then the other width.
    assert [(c.rows, c.poisoned) for c in fake.calls[1:]] == [
        (6, True), (1, False), (2, True), (3, False), (1, False)
    ]  # fmt: skip


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


# --- with a delay and preferred sizes --------------------------------------------------------


def hold_the_model(batcher: Batcher, fake: FakeModel, pool: ThreadPoolExecutor) -> Future[Arrays]:
    """A first call of 8 rows (the tests' ``max_batch_size``: it goes at once), held open in
    the model while others queue."""
    fake.hold = True
    held = pool.submit(batcher.run, {"x": rows(8, start=1000)}, ("y",), "held")
    assert fake.entered.wait(5)
    return held


def queue_requests(
    batcher: Batcher, pool: ThreadPoolExecutor, requests: Sequence[tuple[Arrays, Outputs]]
) -> list[Future[Arrays]]:
    futures = []
    for index, (inputs, outputs) in enumerate(requests):
        futures.append(pool.submit(batcher.run, inputs, outputs, f"r{index}"))
        wait_queued(batcher, index + 1)
    return futures


def test_with_a_delay_a_lone_request_waits_about_the_delay_then_runs_alone() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, executions=1, max_batch_size=64, max_queue_delay_us=200_000)
    x = rows(2)
    began = time.monotonic()
    answer = batcher.run({"x": x}, ["y"])
    elapsed = time.monotonic() - began
    np.testing.assert_array_equal(answer["y"], x * 2)
    assert 0.15 < elapsed < 10  # waited for the delay, and not forever
    assert [(c.rows, c.thread) for c in fake.calls] == [(2, threading.get_ident())]
    assert batcher.queued() == 0


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "callers"),
    [(4, (), 4), (64, (3, 16), 3)],
    ids=["full", "preferred"],
)
def test_a_full_or_preferred_batch_goes_at_once(
    pool: ThreadPoolExecutor, max_batch_size: int, preferred: tuple[int, ...], callers: int
) -> None:
    fake = FakeModel()
    batcher = Batcher(
        fake,
        executions=1,
        max_batch_size=max_batch_size,
        max_queue_delay_us=30_000_000,  # 30 s: never reached here
        preferred_batch_sizes=preferred,
    )
    start = threading.Barrier(callers)
    inputs = [rows(1, start=10 * i) for i in range(callers)]

    def call(x: npt.NDArray[np.float32]) -> Arrays:
        start.wait()
        return batcher.run({"x": x}, ["y", "s"])

    began = time.monotonic()
    futures = [pool.submit(call, x) for x in inputs]
    for future, x in zip(futures, inputs, strict=True):
        expect_own_answer(future, x, ("y", "s"))
    assert time.monotonic() - began < 10
    assert [c.rows for c in fake.calls] == [callers]


def test_requests_that_cannot_wait_for_a_batch_go_at_once() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, executions=1, max_batch_size=4, max_queue_delay_us=30_000_000)
    began = time.monotonic()
    for inputs in (
        {"x": rows(6)},  # bigger than max_batch_size: alone
        {"x": rows(4)},  # a full batch by itself
        {"x": rows(2), "w": rows(3)},  # inputs disagree on rows: cannot merge
    ):
        np.testing.assert_array_equal(batcher.run(inputs, ("y",))["y"], inputs["x"] * 2)
    assert time.monotonic() - began < 10
    assert [c.rows for c in fake.calls] == [6, 4, 2]


@pytest.mark.parametrize("delay_us", [0, 30_000_000])
def test_queued_requests_are_cut_at_the_largest_preferred_size(
    pool: ThreadPoolExecutor, delay_us: int
) -> None:
    fake = FakeModel()
    batcher = Batcher(
        fake, 1, max_batch_size=8, max_queue_delay_us=delay_us, preferred_batch_sizes=[2, 4]
    )
    held = hold_the_model(batcher, fake, pool)
    sizes = [1, 2, 1, 3, 1]  # in order: 1, 3, 4 (preferred) | 3, 4 (preferred)
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(n, start=10 * i)}, ("y",)) for i, n in enumerate(sizes)
    ]
    futures = queue_requests(batcher, pool, requests)
    fake.release.set()
    held.result(timeout=10)
    for future, (inputs, outputs) in zip(futures, requests, strict=True):
        expect_own_answer(future, inputs["x"], outputs)
    assert [c.rows for c in fake.calls] == [8, 4, 4]


def test_requests_queued_longer_than_the_delay_go_at_once_in_one_batch(
    pool: ThreadPoolExecutor,
) -> None:
    """The model is the bottleneck: by the time it is free, the delay is up."""
    fake = FakeModel()
    batcher = Batcher(fake, 1, max_batch_size=8, max_queue_delay_us=50_000)
    held = hold_the_model(batcher, fake, pool)
    requests: list[tuple[Arrays, Outputs]] = [
        ({"x": rows(1, width=3 if i < 3 else 4, start=10 * i)}, ("y", "s")) for i in range(4)
    ]  # the last: another width, so its own batch, after
    futures = queue_requests(batcher, pool, requests)
    time.sleep(0.2)  # well past every queued request's delay
    began = time.monotonic()
    fake.release.set()
    held.result(timeout=10)
    for future, (inputs, outputs) in zip(futures, requests, strict=True):
        expect_own_answer(future, inputs["x"], outputs)
    assert time.monotonic() - began < 5
    assert [c.shape for c in fake.calls] == [(8, 3), (3, 3), (1, 4)]


OUTPUT_CHOICES: list[Outputs] = [("y", "s"), ("s",), ("y",)]


@pytest.mark.parametrize("executions", [1, 2])
@pytest.mark.parametrize("delay_us", [0, 20_000])
def test_concurrent_callers_with_mixed_shapes_and_outputs_each_get_their_own_rows(
    pool: ThreadPoolExecutor, executions: int, delay_us: int
) -> None:
    fake = FakeModel(delay_s=0.003)
    preferred = (4, 8) if delay_us else ()
    batcher = Batcher(fake, executions, 16, delay_us, preferred_batch_sizes=preferred)
    requests: list[tuple[Arrays, Outputs]] = []
    for i in range(48):
        x = rows(1 + i % 5, width=3 + i % 2, start=100 * i)
        requests.append(({"x": x.astype(np.float64) if i % 7 == 0 else x}, OUTPUT_CHOICES[i % 3]))
    start = threading.Barrier(len(requests))

    def call(index: int) -> Arrays:
        start.wait()
        time.sleep(0.001 * (index % 4))  # some stragglers
        inputs, outputs = requests[index]
        return batcher.run(inputs, outputs, f"r{index}")

    futures = [pool.submit(call, index) for index in range(len(requests))]
    for future, (inputs, outputs) in zip(futures, requests, strict=True):
        answer = future.result(timeout=20)
        assert answer["y" if "y" in outputs else "s"].dtype == inputs["x"].dtype
        expect_own_answer(future, inputs["x"], outputs)
    assert sum(c.rows for c in fake.calls) == sum(len(r[0]["x"]) for r in requests)
    assert len(fake.calls) < len(requests)  # some merged
    assert max(c.rows for c in fake.calls) <= 16
    assert fake.most_running <= executions


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (RuntimeError("bad row"), InternalError("internal error; see the runner log")),
        (InvalidInput("x", "values must not be negative"), None),
    ],
)
def test_poisoned_requests_under_concurrency_fail_alone(
    pool: ThreadPoolExecutor, raised: Exception, expected: Exception | None
) -> None:
    answered = expected or raised
    fake = FakeModel(delay_s=0.002, fail_below_zero=raised)
    batcher = Batcher(fake, 2, max_batch_size=32, max_queue_delay_us=50_000)
    poisoned = {index for index in range(40) if index % 5 == 2}
    requests: list[tuple[Arrays, Outputs]] = [
        (
            {
                "x": rows(1, start=-7)
                if i in poisoned
                else rows(1 + i % 3, width=3 + i % 2, start=10 * i)
            },
            OUTPUT_CHOICES[i % 2],
        )
        for i in range(40)
    ]
    start = threading.Barrier(len(requests))

    def call(index: int) -> Arrays:
        start.wait()
        inputs, outputs = requests[index]
        return batcher.run(inputs, outputs, f"r{index}")

    with structlog.testing.capture_logs() as logs:
        futures = [pool.submit(call, index) for index in range(len(requests))]
        for index, (future, (inputs, outputs)) in enumerate(zip(futures, requests, strict=True)):
            if index in poisoned:
                error = future.exception(timeout=20)
                assert (type(error), str(error)) == (type(answered), str(answered))
            else:
                expect_own_answer(future, inputs["x"], outputs)
    # At least one merged call held a poisoned row next to good ones, and failed.
    assert any(c.poisoned and c.rows > 1 for c in fake.calls)
    failures = {entry["request_id"] for entry in logs if entry["event"] == "inference failed"}
    assert failures == (set() if expected is None else {f"r{i}" for i in poisoned})


# --- batching options in model.yaml -----------------------------------------------------------


@pytest.mark.parametrize(
    ("runner", "message"),
    [
        ("{max_batch_size: 8, max_queue_delay_us: -1}", "max_queue_delay_us"),
        ("{max_batch_size: 8, preferred_batch_sizes: [0, 4]}", "must be positive, got [0, 4]"),
        ("{max_batch_size: 8, preferred_batch_sizes: [4, 16]}", "must not exceed max_batch_size 8"),
        ("{max_queue_delay_us: 100}", "need max_batch_size set above 0"),
        ("{preferred_batch_sizes: [4]}", "need max_batch_size set above 0"),
        ("{max_batch_size: 0, max_queue_delay_us: 100}", "need max_batch_size set above 0"),
        ("{max_batch_size: -1}", "max_batch_size"),
        ("{max_batch_size: 8, max_queue_delay_ms: 5}", "max_queue_delay_ms"),  # not ours
        ("{max_batch_size: 8, preferred_batch_sizes: 4}", "preferred_batch_sizes"),
    ],
)
def test_bad_batching_options_are_config_errors(tmp_path: Path, runner: str, message: str) -> None:
    write_model_yaml(tmp_path, "m", f"runner: {runner}\n")
    with pytest.raises(ConfigError) as raised:
        load_model_config(tmp_path / "m")
    assert str(tmp_path / "m" / "model.yaml") in str(raised.value)
    assert message in str(raised.value)


def test_batching_options_defaults_and_preferred_sizes_sorted(tmp_path: Path) -> None:
    defaults = load_model_config(tmp_path / "none").runner
    assert (defaults.max_batch_size, defaults.max_queue_delay_us) == (None, 0)
    assert defaults.preferred_batch_sizes == []
    write_model_yaml(
        tmp_path,
        "m",
        "runner: {max_batch_size: 32, max_queue_delay_us: 500,"
        " preferred_batch_sizes: [16, 4, 16]}\n",
    )
    options = load_model_config(tmp_path / "m").runner
    assert (options.max_batch_size, options.max_queue_delay_us) == (32, 500)
    assert options.preferred_batch_sizes == [4, 16]
    with pytest.raises(ValueError, match=r"not in 1\.\.8"):
        Batcher(FakeModel(), 1, max_batch_size=8, preferred_batch_sizes=[4, 16])


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
        # StandardScaler passes NaN on: the pipeline takes it only if its next step does
        "scaled": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, Y),
        "scaled-hgb": make_pipeline(
            StandardScaler(), HistGradientBoostingClassifier(max_iter=5)
        ).fit(holes, Y),
    }
    nan = {"input": np.array([[1, np.nan, 1, 1]], dtype=np.float32)}
    inf = {"input": np.array([[1, np.inf, 1, 1]], dtype=np.float32)}
    for name, estimator in estimators.items():
        model_dir = save_joblib(tmp_path, name, "1", estimator)
        model = load_model(model_dir, name, "1", load_model_config(model_dir.parent))
        with pytest.raises(InvalidInput) as refused:
            model.check(inf)
        if name in ("plain", "scaled"):
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
        assert runner.health("sleepy") == health_pb2.HealthCheckResponse.SERVING
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="sleepy"), timeout=5).platform
        assert not busy.done()  # both answered while predict still slept
        np.testing.assert_array_equal(outputs_of(busy.result(timeout=10))["y"], [3.0])


def test_with_a_queue_delay_concurrent_requests_get_the_estimators_own_answers(
    tmp_path: Path, iris_clf: LogisticRegression, pool: ThreadPoolExecutor
) -> None:
    write_model_yaml(
        tmp_path,
        "iris",
        "runner: {threads: 1, max_batch_size: 64, max_queue_delay_us: 20000,"
        " preferred_batch_sizes: [32]}\n",
    )
    model_dir = save_joblib(tmp_path, "iris", "1", iris_clf)
    slices = [(i * 11 % 140, i * 11 % 140 + 1 + i % 6) for i in range(48)]
    with running(model_dir, "iris") as runner:
        log_text = runner.log()
        assert '"max_queue_delay_us": 20000' in log_text
        assert '"preferred_batch_sizes": [32]' in log_text
        stub = runner.stub()
        start = threading.Barrier(len(slices))

        def call(index: int) -> Any:
            lo, hi = slices[index]
            request = infer_request(
                "iris",
                {"input": X32[lo:hi]},
                raw=index % 2 == 0,
                outputs=["label"] if index % 3 == 0 else [],  # another batch key
                request_id=f"req-{index}",
            )
            start.wait()
            return stub.ModelInfer(request, timeout=20)

        responses = list(pool.map(call, range(len(slices))))
    for index, ((lo, hi), response) in enumerate(zip(slices, responses, strict=True)):
        assert response.id == f"req-{index}"
        out = outputs_of(response)
        np.testing.assert_array_equal(out["label"], iris_clf.predict(X32[lo:hi]))
        if index % 3 == 0:
            assert sorted(out) == ["label"]
        else:
            want = iris_clf.predict_proba(X32[lo:hi])
            np.testing.assert_allclose(out["probabilities"], want, rtol=1e-12, atol=1e-15)


POISONABLE_MODEL = """
from pathlib import Path

from greenroom_client.errors import InvalidInput

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]

    def load(self, path):
        self.calls = open(Path(path) / "calls.txt", "a", buffering=1)

    def predict(self, inputs):
        x = inputs["x"]
        self.calls.write(f"{len(x)} {int((x == 666).any())} {int((x == 777).any())}\\n")
        if (x == 666).any():
            raise InvalidInput("x", "666 is not allowed")
        if (x == 777).any():
            raise RuntimeError("777 breaks the model")
        return {"y": x * 2}
"""


def test_a_poisoned_request_fails_alone_in_a_real_runner(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    model_dir = save_custom(tmp_path, "poison", "1", POISONABLE_MODEL)
    write_model_yaml(
        tmp_path, "poison", "runner: {max_batch_size: 64, max_queue_delay_us: 50000}\n"
    )
    markers = {index: 666.0 if index % 2 else 777.0 for index in range(3, 40, 5)}
    inputs = [
        np.full((1, 2), markers[i], np.float32) if i in markers else rows(1 + i % 3, 2, 10 * i)
        for i in range(40)
    ]
    with running(model_dir, "poison") as runner:
        stub = runner.stub()
        start = threading.Barrier(len(inputs))

        def call(index: int) -> Any:
            request = infer_request(
                "poison", {"x": inputs[index]}, raw=index % 2 == 0, request_id=f"req-{index}"
            )
            start.wait()
            try:
                return outputs_of(stub.ModelInfer(request, timeout=20))
            except grpc.RpcError as err:
                return err

        answers = list(pool.map(call, range(len(inputs))))
        events = [json.loads(line) for line in runner.log().splitlines() if line.startswith("{")]
    for index, (x, answer) in enumerate(zip(inputs, answers, strict=True)):
        if index not in markers:
            np.testing.assert_array_equal(answer["y"], x * 2)
        elif markers[index] == 666.0:
            assert (answer.code(), answer.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "input 'x': 666 is not allowed",
            )
        else:
            assert (answer.code(), answer.details()) == (
                grpc.StatusCode.INTERNAL,
                "internal error; see the runner log",
            )
    lines = (model_dir / "calls.txt").read_text().splitlines()
    calls = [tuple(int(field) for field in line.split()) for line in lines]
    # Merged calls held poisoned rows beside good ones; each poisoned request ran again alone.
    assert any(n > 1 and (bad or broken) for n, bad, broken in calls)
    assert sum(1 for n, bad, broken in calls if n == 1 and (bad or broken)) == len(markers)
    failed = sorted(e["request_id"] for e in events if e.get("event") == "inference failed")
    assert failed == sorted(f"req-{i}" for i, marker in markers.items() if marker == 777.0)
