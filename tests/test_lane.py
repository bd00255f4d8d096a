"""The lane (runners.lane, gateway.lane): ModelInfer to a local runner without gRPC.

Real runner processes with ``--lane``, called over the lane by the gateway's own client
and over gRPC, must give the same answers and the same errors; calls that the gateway
gives up on, runners that die and runners that stop are checked on the lane itself; and a
real gateway with the lane on and off must answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from sklearn.linear_model import LogisticRegression

from gateway.lane import Lane, LaneStatus
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from runners.lane import HEADER
from tests.conftest import GatewayProcess
from tests.models import iris
from tests.runner_fixtures import (
    Runner,
    float_rows,
    infer_request,
    outputs_of,
    rpc_error,
    running,
    save_custom,
    save_joblib,
)

X, Y = iris()

SLEEPY_MODEL = """
import time

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

    def predict(self, inputs):
        time.sleep(float(inputs["x"][0]))
        return {"y": inputs["x"] + 1}
"""


def lane_call(path: Path, request: bytes, timeout: float = 10.0) -> bytes:
    """One call on a fresh Lane, as the gateway makes it."""

    async def call() -> bytes:
        lane = Lane(path)
        try:
            async with asyncio.timeout(timeout):
                return await lane.send(request)
        finally:
            lane.close()

    return asyncio.run(call())


def lane_status(path: Path, request: bytes) -> LaneStatus:
    with pytest.raises(LaneStatus) as info:
        lane_call(path, request)
    return info.value


@pytest.fixture(scope="module")
def iris_lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runner, Path]]:
    root = tmp_path_factory.mktemp("lane")
    model = LogisticRegression(max_iter=1000).fit(X, Y)
    model_dir = save_joblib(root, "iris", "1", model)
    lane = root / "iris.lane"
    with running(model_dir, "iris", extra=["--lane", str(lane)]) as runner:
        yield runner, lane


def test_lane_answers_equal_grpc_answers(iris_lane: tuple[Runner, Path]) -> None:
    runner, lane = iris_lane
    stub = runner.stub()
    requests = [
        infer_request("iris", {"input": X[:1]}, raw=True),
        infer_request("iris", {"input": X[:40]}, raw=True, request_id="r-40"),
        infer_request("iris", {"input": X[:5]}, raw=False, version="1"),
        infer_request("iris", {"input": X[:3]}, raw=True, outputs=["label"]),
    ]
    for request in requests:
        by_lane = pb.ModelInferResponse.FromString(lane_call(lane, request.SerializeToString()))
        assert by_lane == stub.ModelInfer(request)
        assert by_lane.id == request.id


def test_lane_errors_equal_grpc_errors(iris_lane: tuple[Runner, Path]) -> None:
    runner, lane = iris_lane
    stub = runner.stub()
    wrong_type = infer_request("iris", {"input": X[:2].astype(np.float64)}, raw=True)
    wrong_name = infer_request("iris", {"features": X[:2]}, raw=True)
    other_model = infer_request("rose", {"input": X[:2]}, raw=True)
    other_version = infer_request("iris", {"input": X[:2]}, raw=True, version="9")
    for request in (wrong_type, wrong_name, other_model, other_version):
        expected = rpc_error(stub.ModelInfer, request)
        got = lane_status(lane, request.SerializeToString())
        assert (got.code, got.details) == (expected.code(), expected.details())
    garbage = lane_status(lane, b"\xff\xff\xff")
    assert garbage.code == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_calls_each_get_their_own_answer(iris_lane: tuple[Runner, Path]) -> None:
    _, lane_path = iris_lane
    model_rows = [X[i : i + 1 + i % 4] for i in range(48)]

    async def many() -> list[bytes]:
        lane = Lane(lane_path)
        try:
            calls = [
                lane.send(
                    infer_request(
                        "iris", {"input": rows}, raw=True, request_id=f"c{i}"
                    ).SerializeToString()
                )
                for i, rows in enumerate(model_rows)
            ]
            first = await asyncio.gather(*calls)
            # The connections went back to the pool: a second round reuses them.
            again = await lane.send(
                infer_request("iris", {"input": X[:2]}, raw=True).SerializeToString()
            )
            return [*first, again]
        finally:
            lane.close()

    answers = asyncio.run(many())
    model = LogisticRegression(max_iter=1000).fit(X, Y)
    for i, (rows, raw) in enumerate(zip(model_rows, answers, strict=False)):
        answer = pb.ModelInferResponse.FromString(raw)
        assert answer.id == f"c{i}"
        np.testing.assert_array_equal(outputs_of(answer)["label"], model.predict(rows))
    assert len(outputs_of(pb.ModelInferResponse.FromString(answers[-1]))["label"]) == 2


def test_a_call_given_up_does_not_answer_the_next_one(tmp_path: Path) -> None:
    model_dir = save_custom(tmp_path, "sleepy", "1", SLEEPY_MODEL)
    lane_path = tmp_path / "sleepy.lane"
    slow = infer_request("sleepy", {"x": np.array([0.6], np.float32)}, raw=True)
    quick = infer_request("sleepy", {"x": np.array([0.0, 5.0], np.float32)}, raw=True)

    async def scenario(lane: Lane) -> bytes:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await lane.send(slow.SerializeToString())
        # The slow answer arrives later on the connection the timeout closed, never here.
        answer = await lane.send(quick.SerializeToString())
        await asyncio.sleep(0.6)
        return answer

    with running(model_dir, "sleepy", extra=["--lane", str(lane_path)]):
        lane = Lane(lane_path)
        answer = asyncio.run(scenario(lane))
        lane.close()
        np.testing.assert_array_equal(
            outputs_of(pb.ModelInferResponse.FromString(answer))["y"], [1.0, 6.0]
        )
        assert lane_call(lane_path, quick.SerializeToString()) == answer


def test_runner_killed_mid_call_is_unavailable(tmp_path: Path) -> None:
    model_dir = save_custom(tmp_path, "sleepy", "1", SLEEPY_MODEL)
    lane_path = tmp_path / "sleepy.lane"
    slow = infer_request("sleepy", {"x": np.array([5.0], np.float32)}, raw=True)

    async def scenario(runner: Runner) -> LaneStatus:
        lane = Lane(lane_path)
        call = asyncio.ensure_future(lane.send(slow.SerializeToString()))
        await asyncio.sleep(0.3)
        runner.proc.kill()
        with pytest.raises(LaneStatus) as info:
            await call
        lane.close()
        return info.value

    with running(model_dir, "sleepy", extra=["--lane", str(lane_path)]) as runner:
        status = asyncio.run(scenario(runner))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert "closed the lane" in status.details
    refused = lane_status(lane_path, slow.SerializeToString())
    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach its lane" in refused.details


def test_sigterm_lets_a_call_in_flight_finish(tmp_path: Path) -> None:
    model_dir = save_custom(tmp_path, "sleepy", "1", SLEEPY_MODEL)
    lane_path = tmp_path / "sleepy.lane"
    slow = infer_request("sleepy", {"x": np.array([0.8], np.float32)}, raw=True)

    async def scenario(runner: Runner) -> bytes:
        lane = Lane(lane_path)
        call = asyncio.ensure_future(lane.send(slow.SerializeToString()))
        await asyncio.sleep(0.3)
        runner.proc.send_signal(signal.SIGTERM)
        try:
            return await call
        finally:
            lane.close()

    with running(model_dir, "sleepy", extra=["--lane", str(lane_path)]) as runner:
        answer = asyncio.run(scenario(runner))
        assert runner.wait_exit() == 0
    np.testing.assert_array_equal(
        outputs_of(pb.ModelInferResponse.FromString(answer))["y"], [np.float32(0.8) + 1]
    )
    assert not lane_path.exists()


def test_a_malformed_frame_closes_the_connection(iris_lane: tuple[Runner, Path]) -> None:
    runner, lane = iris_lane
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(lane))
        conn.sendall(HEADER.pack(3, 7) + b"abc")  # kind 7 does not exist
        with contextlib.suppress(ConnectionResetError):  # reset: "abc" was never read
            assert conn.recv(16) == b""
    assert "malformed request" in runner.log()
    # The runner serves on.
    request = infer_request("iris", {"input": X[:1]}, raw=True)
    assert pb.ModelInferResponse.FromString(lane_call(lane, request.SerializeToString())).outputs


# ---- the gateway: lane on and off ------------------------------------------------------


def _runner_commands(gateway: GatewayProcess) -> list[list[str]]:
    return [psutil.Process(pid).cmdline() for pid in gateway.runner_pids().values()]


def test_gateway_answers_alike_with_the_lane_on_and_off(
    gateway: GatewayProcess, repo: Path, tmp_path: Path
) -> None:
    off = GatewayProcess(repo, tmp_path / "data", env={"GREENROOM_RUNNER_LANE": "false"})
    try:
        assert all("--lane" in cmd for cmd in _runner_commands(gateway))
        assert not any("--lane" in cmd for cmd in _runner_commands(off))
        stubs = [
            pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(g.target))
            for g in (gateway, off)
        ]
        requests = [
            infer_request("iris", {"input": X[:30]}, raw=True, request_id="same"),
            infer_request("iris", {"input": X[:3]}, raw=False, request_id="typed"),
            infer_request("iris-onnx", {"input": X[:9]}, raw=True, request_id="onnx"),
        ]
        for request in requests:
            on_answer, off_answer = (stub.ModelInfer(request) for stub in stubs)
            assert on_answer == off_answer
        bad = [
            infer_request("iris", {"input": float_rows([[1.0, 2.0]])}, raw=True),
            infer_request("iris", {"input": X[:2]}, raw=True, version="77"),
        ]
        for request in bad:
            on_error, off_error = (rpc_error(stub.ModelInfer, request) for stub in stubs)
            assert (on_error.code(), on_error.details()) == (off_error.code(), off_error.details())
    finally:
        off.stop()


def test_gateway_deadline_over_the_lane(repo: Path, tmp_path: Path) -> None:
    """A deadline the runner cannot meet is DEADLINE_EXCEEDED; the next call gets its own
    answer, not the late one."""
    model_dir = save_custom(tmp_path / "models", "sleepy", "1", SLEEPY_MODEL)
    gateway = GatewayProcess(model_dir.parent.parent, tmp_path / "data")
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gateway.target))
        slow = infer_request("sleepy", {"x": np.array([1.0], np.float32)}, raw=True)
        error = rpc_error(stub.ModelInfer, slow, timeout=0.3)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        quick = infer_request("sleepy", {"x": np.array([0.0, 2.0], np.float32)}, raw=True)
        np.testing.assert_array_equal(outputs_of(stub.ModelInfer(quick, timeout=5))["y"], [1, 3])
    finally:
        gateway.stop()
