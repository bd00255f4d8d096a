"""The in-process lane (``runner: inprocess``): ONNX models run by the gateway itself.

A real gateway serves the same ONNX file twice, in process (``fast``) and by a runner
process (``twin``): answers, metadata and errors must be the same, and no runner process
may exist for the in-process versions. Plus: a shadow run in process, recorded in the
ledger; a non-ONNX version marked inprocess; the event loop free while a model computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from gateway.inprocess import InProcessRunner
from gateway.ledger import Ledger
from gateway.recording import Recorder
from gateway.repository import load_model, scan
from gateway.router import Router
from gateway.server import RolesCache, open_ledger
from gateway.servicer import InferenceServicer
from gateway.settings import GatewaySettings
from gateway.shadow import ShadowFanout
from gateway.supervisor import RunnerState
from greenroom_client.control import ControlClient
from greenroom_client.errors import DeadlineExceeded
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from runners.config import ConfigError, ModelConfig
from tests.conftest import GatewayProcess, wait_for_predictions
from tests.models import export_onnx, iris
from tests.test_bad_input import CASES
from tests.test_external_and_cli import greenroom
from tests.test_gateway import outputs, request

LOOSE_INPUTS = "inputs: [{name: input, datatype: FP32, shape: [-1, -1]}]\n"


def build(repo: Path) -> dict[str, LogisticRegression]:
    """fast (in process) and twin (runner process): one ONNX file (batched: fast with a
    queue delay and two model threads); loose and loose-twin:
    the same with a signature that lets a wrong width reach the model; mixed: v1 by a
    runner process, v2 (another model) in process; wrong: a joblib marked inprocess."""
    x, y = iris()
    strong = make_pipeline(LogisticRegression(max_iter=500)).fit(x, y)
    weak = make_pipeline(LogisticRegression(C=0.001, max_iter=500)).fit(x, y)
    for name in ("fast", "twin", "loose", "loose-twin", "batched"):
        export_onnx(strong, 4, repo / name / "1" / "model.onnx")
    export_onnx(weak, 4, repo / "mixed" / "1" / "model.onnx")
    export_onnx(strong, 4, repo / "mixed" / "2" / "model.onnx")
    (repo / "fast" / "model.yaml").write_text("runner: inprocess\n")
    (repo / "batched" / "model.yaml").write_text(
        "runner: {kind: inprocess, threads: 2, max_batch_size: 64, max_queue_delay_us: 2000}\n"
    )
    (repo / "loose" / "model.yaml").write_text("runner: {kind: inprocess}\n" + LOOSE_INPUTS)
    (repo / "loose-twin" / "model.yaml").write_text(LOOSE_INPUTS)
    (repo / "mixed" / "model.yaml").write_text(
        'primary: "1"\nrunner: {kind: inprocess, versions: ["2"]}\n'
    )
    (repo / "wrong" / "1").mkdir(parents=True)
    joblib.dump(strong, repo / "wrong" / "1" / "model.joblib")
    (repo / "wrong" / "model.yaml").write_text("runner: inprocess\n")
    return {"strong": strong, "weak": weak}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    repo = tmp_path_factory.mktemp("inprocess-models")
    build(repo)
    gateway = GatewayProcess(repo, tmp_path_factory.mktemp("inprocess-data"))
    try:
        yield gateway, repo
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def stub(served: tuple[GatewayProcess, Path]) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served[0].target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def onnxruntime_answers(repo: Path, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
    label, proba = session.run(["label", "probabilities"], {"input": x})
    return {"label": label, "probabilities": proba}


def rpc_error(stub: pb_grpc.GRPCInferenceServiceStub, message: pb.ModelInferRequest) -> Any:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(message)
    return info.value


def test_no_runner_process_for_in_process_versions(served: tuple[GatewayProcess, Path]) -> None:
    pids = served[0].runner_pids()
    assert {"twin/1", "loose-twin/1", "mixed/1"} <= set(pids)
    assert not {"fast/1", "batched/1", "loose/1", "mixed/2", "wrong/1"} & set(pids)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_answers_equal_onnxruntime_and_the_runner_process(
    stub: pb_grpc.GRPCInferenceServiceStub, served: tuple[GatewayProcess, Path], raw: bool
) -> None:
    x, _ = iris()
    for rows in (x[:1], x):
        expected = onnxruntime_answers(served[1], "fast", rows)
        reply = stub.ModelInfer(request("fast", {"input": rows}, raw=raw, id="q-1"))
        assert (reply.model_name, reply.model_version, reply.id) == ("fast", "1", "q-1")
        assert bool(reply.raw_output_contents) == raw
        if not raw:
            assert reply.outputs[0].contents.int64_contents
        got = outputs(reply)
        for name, array in expected.items():
            np.testing.assert_array_equal(got[name], array)
        # Byte for byte what the ONNX runner process answers for the same request.
        twin = stub.ModelInfer(request("twin", {"input": rows}, raw=raw, id="q-1"))
        reply.model_name = "twin"
        assert reply == twin


def test_id_made_requested_outputs_and_stream(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x, _ = iris()
    made = stub.ModelInfer(request("fast", {"input": x[:1]})).id
    assert uuid.UUID(made)
    message = request("fast", {"input": x[:2]})
    message.outputs.add(name="probabilities")
    assert [o.name for o in stub.ModelInfer(message).outputs] == ["probabilities"]
    good = [request("fast", {"input": x[i : i + 2]}, id=f"s{i}") for i in range(3)]
    replies = list(stub.ModelStreamInfer(iter(good)))
    assert [r.infer_response.id for r in replies] == ["s0", "s1", "s2"]
    assert all(not r.error_message for r in replies)


def test_metadata_ready_and_index(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    fast = stub.ModelMetadata(pb.ModelMetadataRequest(name="fast"))
    twin = stub.ModelMetadata(pb.ModelMetadataRequest(name="twin"))
    assert fast.platform == "onnxruntime"
    twin.name = "fast"
    assert fast == twin
    assert stub.ModelReady(pb.ModelReadyRequest(name="fast")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mixed", version="2")).ready
    index = {
        (m.name, m.version): m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    }
    for key in (("fast", "1"), ("loose", "1"), ("mixed", "2")):
        assert (index[key].state, index[key].reason) == ("READY", "serving in process")
    assert index[("twin", "1")].state == "READY"


def _renamed(message: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    copy = pb.ModelInferRequest()
    copy.CopyFrom(message)
    if copy.model_name == "iris":
        copy.model_name = name
    return copy


@pytest.mark.parametrize(
    ("case", "message"), [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_errors_equal_the_runner_process(
    stub: pb_grpc.GRPCInferenceServiceStub, case: str, message: pb.ModelInferRequest
) -> None:
    fast = rpc_error(stub, _renamed(message, "fast"))
    twin = rpc_error(stub, _renamed(message, "twin"))
    assert fast.code() == twin.code(), case
    assert fast.details().replace("'fast'", "'twin'") == twin.details(), case


def test_model_errors_equal_the_runner_process(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """A width that the declared signature lets through fails inside ONNX Runtime: INTERNAL
    with the generic message, as from a runner process; the gateway serves on."""
    x, _ = iris()
    wrong_width = {"input": x[:2, :3].copy()}
    loose = rpc_error(stub, request("loose", wrong_width))
    twin = rpc_error(stub, request("loose-twin", wrong_width))
    assert loose.code() == twin.code() == grpc.StatusCode.INTERNAL
    assert loose.details() == twin.details()
    assert outputs(stub.ModelInfer(request("loose", {"input": x[:2]})))["label"].shape == (2,)


@pytest.mark.parametrize("name", ["fast", "batched"])
def test_100_concurrent_requests(
    stub: pb_grpc.GRPCInferenceServiceStub, served: tuple[GatewayProcess, Path], name: str
) -> None:
    x, _ = iris()
    rng = np.random.default_rng(5)
    batches = [x[rng.integers(0, len(x), size=1 + i % 9)] for i in range(100)]
    futures = [
        stub.ModelInfer.future(request(name, {"input": rows}, raw=i % 3 != 0, id=f"c{i}"))
        for i, rows in enumerate(batches)
    ]
    for i, (future, rows) in enumerate(zip(futures, batches, strict=True)):
        reply = future.result(timeout=60)
        assert reply.id == f"c{i}"
        expected = onnxruntime_answers(served[1], "fast", rows)
        got = outputs(reply)
        np.testing.assert_array_equal(got["label"], expected["label"])
        # Concurrent requests are merged into one model call (runners.batching), where a
        # float32 may differ from a lone call's in its last bits (a kernel for the shape).
        np.testing.assert_allclose(
            got["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-7
        )


def cli_json(*args: str) -> Any:
    done = greenroom(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_in_process_shadow_is_recorded_in_the_ledger(
    stub: pb_grpc.GRPCInferenceServiceStub, served: tuple[GatewayProcess, Path]
) -> None:
    gateway, repo = served
    target = gateway.target
    cli_json("deploy", "mixed", "--primary", "1", "--shadow", "2:1.0", "--reason", "try v2",
             "--target", target)  # fmt: skip
    x, y = iris()
    for i in range(len(x)):
        reply = stub.ModelInfer(request("mixed", {"input": x[i : i + 1]}, id=f"m-{i}"))
        assert reply.model_version == "1"
    labels = Path(gateway.data_dir) / "mixed-labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "row", "label"])
        writer.writerows([f"m-{i}", 0, int(label)] for i, label in enumerate(y))
    with ControlClient(target) as control:
        wait_for_predictions(control, "mixed", "2", len(x))
    report = cli_json("report", "mixed", "--target", target)
    by_version = {v["version"]: v for v in report["versions"]}
    assert report["ledger"]["shadow_drops"] == {"2": 0}
    assert by_version["2"]["role"] == "shadow"
    assert by_version["2"]["predictions"] == len(x)
    fed = cli_json("feedback", "mixed", "--file", str(labels), "--target", target)
    assert fed["matched"] == len(x)
    report = cli_json("report", "mixed", "--target", target)
    by_version = {v["version"]: v for v in report["versions"]}
    for version, model_dir in (("1", "mixed/1"), ("2", "mixed/2")):
        session = ort.InferenceSession(str(repo / model_dir / "model.onnx"))
        predicted = session.run(["label"], {"input": x})[0]
        expected = float(np.mean(predicted == y))
        assert by_version[version]["labelled"] == len(x)
        assert by_version[version]["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_non_onnx_version_marked_inprocess_is_unavailable_with_the_reason(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    index = {
        (m.name, m.version): m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    }
    wrong = index[("wrong", "1")]
    assert wrong.state == "UNAVAILABLE"
    assert "runner: inprocess" in wrong.reason and "ONNX" in wrong.reason
    assert "joblib" in wrong.reason
    assert not stub.ModelReady(pb.ModelReadyRequest(name="wrong")).ready
    x, _ = iris()
    error = rpc_error(stub, request("wrong", {"input": x[:1]}))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert wrong.reason in error.details()


# ---- without a gateway ---------------------------------------------------------------


def test_model_yaml_forms(tmp_path: Path) -> None:
    assert ModelConfig.model_validate({"runner": "inprocess"}).runner.in_process("1")
    options = ModelConfig.model_validate({"runner": {"kind": "inprocess", "threads": 2}}).runner
    assert options.threads == 2 and options.in_process("7")
    some = ModelConfig.model_validate({"runner": {"kind": "inprocess", "versions": ["2"]}}).runner
    assert some.in_process("2") and not some.in_process("1")
    assert not ModelConfig.model_validate({"runner": {"threads": 2}}).runner.in_process("1")
    assert ModelConfig.model_validate({"runner": "inprocess"}).runner.runs_inline()
    assert not options.runs_inline()  # two model calls at once need a pool
    delayed = {"kind": "inprocess", "max_batch_size": 8, "max_queue_delay_us": 100}
    assert not ModelConfig.model_validate({"runner": delayed}).runner.runs_inline()
    for bad in (
        "elsewhere",
        {"versions": ["2"]},
        {"kind": "inprocess", "instances": 2},
        {"inline": True},
        {**delayed, "inline": True},
        {"kind": "inprocess", "threads": 2, "inline": True},
    ):
        with pytest.raises(ValueError):
            ModelConfig.model_validate({"runner": bad})
    export_onnx(
        make_pipeline(LogisticRegression()).fit(*iris()), 4, tmp_path / "m" / "1" / "model.onnx"
    )
    (tmp_path / "m" / "model.yaml").write_text('runner: {kind: inprocess, versions: ["3"]}\n')
    with pytest.raises(ConfigError, match=r"runner\.versions names"):
        load_model(tmp_path / "m")


def test_the_event_loop_runs_while_the_model_computes(tmp_path: Path) -> None:
    """With ``inline: false`` model calls run in the runner's pool: the loop keeps ticking,
    and a call past its deadline is answered DEADLINE_EXCEEDED at once, whatever the model
    is doing."""
    x, _ = iris()
    model_dir = tmp_path / "m"
    export_onnx(
        make_pipeline(LogisticRegression(max_iter=500)).fit(*iris()),
        4,
        model_dir / "1" / "model.onnx",
    )
    (model_dir / "model.yaml").write_text("runner: {kind: inprocess, inline: false}\n")
    model = load_model(model_dir)
    message = request("m", {"input": x[:3]}, id="e-1").SerializeToString()

    async def scenario() -> None:
        runner = InProcessRunner(model.versions["1"], model.config, GatewaySettings())
        assert runner.reason == "loading the model in process"
        runner.start()
        await runner.wait_settled(30)
        assert runner.state == RunnerState.READY
        reply = pb.ModelInferResponse.FromString(await runner.infer(message, 5.0))
        assert reply.id == "e-1" and outputs(reply)["label"].shape == (3,)
        answer = runner._servicer.answer

        def slow(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
            time.sleep(1.5)  # holds a pool thread as a long model call would
            return answer(request)

        runner._servicer.answer = slow  # type: ignore[method-assign]
        call = asyncio.create_task(runner.infer(message, 5.0))
        ticks = 0
        began = time.monotonic()
        while not call.done():
            await asyncio.sleep(0.01)
            ticks += 1
        assert time.monotonic() - began >= 1.45 and ticks >= 20  # the loop went on
        assert pb.ModelInferResponse.FromString(call.result()).id == "e-1"
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"no answer within 0\.1s"):
            await runner.infer(message, 0.1)
        assert time.monotonic() - began < 1.2  # the deadline, not the 1.5 s answer
        assert runner.in_flight == 0
        await runner.stop()
        assert runner.reason == "gateway is shutting down"

    asyncio.run(scenario())


def test_inline_calls_run_on_the_event_loop(tmp_path: Path) -> None:
    """By default the model runs in the request's handler, on the loop's own thread: a
    plain request through the fused path (gateway.onnx_fused), a typed one through the
    general path."""
    x, _ = iris()
    model_dir = tmp_path / "m"
    export_onnx(
        make_pipeline(LogisticRegression(max_iter=500)).fit(*iris()),
        4,
        model_dir / "1" / "model.onnx",
    )
    model = load_model(model_dir)
    plain = request("m", {"input": x[:2]}, id="i-1").SerializeToString()
    typed = request("m", {"input": x[:3]}, raw=False, id="i-2").SerializeToString()
    calls: list[tuple[str, threading.Thread]] = []

    async def scenario() -> list[bytes]:
        runner = InProcessRunner(model.versions["1"], model.config, GatewaySettings())
        runner.start()
        await runner.wait_settled(30)
        assert runner._fused is not None
        run, answer = runner._fused._run, runner._servicer.answer

        def fused(*args: Any) -> Any:
            calls.append(("fused", threading.current_thread()))
            return run(*args)

        def general(message: pb.ModelInferRequest) -> pb.ModelInferResponse:
            calls.append(("general", threading.current_thread()))
            return answer(message)

        runner._fused._run = fused
        runner._servicer.answer = general  # type: ignore[method-assign,assignment]
        try:
            return [await runner.infer(plain, 5.0), await runner.infer(typed, 5.0)]
        finally:
            await runner.stop()

    first, second = (pb.ModelInferResponse.FromString(r) for r in asyncio.run(scenario()))
    assert first.id == "i-1" and outputs(first)["label"].shape == (2,)
    assert second.id == "i-2" and outputs(second)["label"].shape == (3,)
    main = threading.main_thread()
    assert calls == [("fused", main), ("general", main)]


def test_the_gateway_loads_onnxruntime_only_for_an_onnx_model() -> None:
    """Every gateway builds its backends through gateway.inprocess; importing it must not
    cost a gateway without in-process models ONNX Runtime's memory (about 18 MB RSS)."""
    modules = "gateway.cli, gateway.server, gateway.inprocess, gateway.workers, gateway.worker"
    code = f"import sys, {modules}; print('onnxruntime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@contextlib.asynccontextmanager
async def _servicer(
    tmp_path: Path, model_yaml: str = ""
) -> AsyncIterator[tuple[InferenceServicer, Ledger]]:
    """A gateway's inference servicer over one in-process iris model ``m``, without the
    gRPC server: for tests that break one of its parts."""
    repo = tmp_path / "models"
    export_onnx(
        make_pipeline(LogisticRegression(max_iter=500)).fit(*iris()),
        4,
        repo / "m" / "1" / "model.onnx",
    )
    (repo / "m" / "model.yaml").write_text("runner: inprocess\n" + model_yaml)
    settings = GatewaySettings(repo=repo, data_dir=tmp_path / "data")
    models = scan(repo)
    ledger = open_ledger(settings)
    runner = InProcessRunner(models["m"].versions["1"], models["m"].config, settings)
    try:
        ledger.start()
        runner.start()
        await runner.wait_settled(30)
        router = Router(models, {("m", "1"): runner})
        recorder = Recorder(ledger, RolesCache(router))
        yield (
            InferenceServicer(router, settings, ShadowFanout.from_settings(settings), recorder),
            ledger,
        )
    finally:
        await runner.stop()
        ledger.stop()


def _answers(tmp_path: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(tmp_path / "data" / "ledger.db") as db:
        return list(db.execute("SELECT request_id, version, role, status FROM answers"))


def test_a_request_that_meets_a_bug_is_still_recorded(tmp_path: Path) -> None:
    """Whatever a backend raises, the primary's row is written: an exception that is not
    a GreenroomError (a bug) is recorded INTERNAL, as the client is told, instead of
    leaving no trace in the ledger."""
    message = request("m", {"input": iris()[0][:1]}, id="bitten").SerializeToString()

    async def scenario() -> None:
        async with _servicer(tmp_path) as (servicer, ledger):
            runner = servicer.router.runners[("m", "1")]

            def bug(*_: Any) -> bytes:
                raise RuntimeError("a bug")

            runner._answer_inline = bug  # type: ignore[attr-defined]
            with pytest.raises(RuntimeError):
                await servicer.infer_bytes(message, 5.0)
            assert ledger.flush(10)

    asyncio.run(scenario())
    assert _answers(tmp_path) == [("bitten", "1", "primary", "INTERNAL")]


def test_an_answer_is_recorded_once_sent_and_a_failed_record_never_fails_it(
    tmp_path: Path,
) -> None:
    """The answer's record is queued at the event loop's next turn, after grpc.aio has
    the answer to send; if making the record fails, the caller still has its answer and
    the lost record is counted as dropped."""
    x = iris()[0][:2]
    first = request("m", {"input": x}).SerializeToString()  # the gateway makes its id
    second = request("m", {"input": x}, id="lost").SerializeToString()
    made: list[str] = []

    async def scenario() -> None:
        sampled = "monitoring: {input_sample_rate: 1.0}\n"
        async with _servicer(tmp_path, sampled) as (servicer, ledger):
            reply = pb.ModelInferResponse.FromString(await servicer.infer_bytes(first, 5.0))
            made.append(reply.id)
            assert reply.id and ledger.stats.queued == 0  # not yet: at the next turn
            await asyncio.sleep(0)
            assert ledger.flush(10) and ledger.stats.recorded_answers == 2  # answer, inputs

            def broken(*_: Any, **__: Any) -> None:
                raise RuntimeError("recorder bug")

            servicer.recorder.answered = broken  # type: ignore[method-assign]
            reply = pb.ModelInferResponse.FromString(await servicer.infer_bytes(second, 5.0))
            assert reply.id == "lost" and outputs(reply)["label"].shape == (2,)
            await asyncio.sleep(0)
            assert ledger.flush(10)
            assert (ledger.stats.recorded_answers, ledger.stats.dropped) == (3, 1)  # inputs

    asyncio.run(scenario())
    assert _answers(tmp_path) == [(made[0], "1", "primary", "OK")]
    with sqlite3.connect(tmp_path / "data" / "ledger.db") as db:
        sampled = list(db.execute("SELECT request_id, rows FROM inputs ORDER BY id"))
    assert sampled == [(made[0], 2), ("lost", 2)]


class _Aborted(Exception):
    pass


class _StreamContext:
    """The part of grpc.aio's context the stream handler uses, with its deadline fixed."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


@pytest.mark.parametrize("remaining", [0.0, None])
def test_a_stream_ends_deadline_exceeded_when_its_deadline_passes(
    tmp_path: Path, remaining: float | None
) -> None:
    """A request cut short by the stream's own deadline ends the stream with that status
    (an in-place error would let it end OK, racing the client's timer); a request timed
    out with the stream's deadline still far (none set) gets its error in place, and the
    stream goes on."""
    x = iris()[0][:1]
    messages = [request("m", {"input": x}, id=i).SerializeToString() for i in ("a", "b")]

    async def scenario() -> tuple[list[pb.ModelStreamInferResponse], _StreamContext]:
        context = _StreamContext(remaining)
        async with _servicer(tmp_path) as (servicer, _):
            runner = servicer.router.runners[("m", "1")]
            answer = runner._answer_inline  # type: ignore[attr-defined]

            def late(request: bytes, parsed: pb.ModelInferRequest | None) -> bytes:
                if parsed is not None and parsed.id == "a":
                    raise DeadlineExceeded("no answer within 0.3s")
                return answer(request, parsed)  # type: ignore[no-any-return]

            runner._answer_inline = late  # type: ignore[attr-defined]

            async def requests() -> AsyncIterator[bytes]:
                for message in messages:
                    yield message

            got = []
            with contextlib.suppress(_Aborted):
                async for raw in servicer.ModelStreamInfer(requests(), context):
                    got.append(pb.ModelStreamInferResponse.FromString(raw))
            return got, context

    got, context = asyncio.run(scenario())
    if remaining is not None:
        assert got == [] and context.aborted is not None
        assert context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert context.aborted is None
        assert "no answer within" in got[0].error_message and got[1].infer_response.id == "b"
