"""Runner crashes, gateway shutdown and orphan processes, with real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess, pid_alive
from tests.models import churn_data, iris
from tests.test_gateway import outputs, request


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


class Load:
    """Threads that call one model in a loop and record (start, seconds, status) per call."""

    def __init__(
        self, stub: pb_grpc.GRPCInferenceServiceStub, model: str, rows: np.ndarray
    ) -> None:
        self.stub, self.model, self.rows = stub, model, rows
        self.calls: list[tuple[float, float, grpc.StatusCode]] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(2)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        message = request(self.model, {"input": self.rows})
        while not self.stopped.is_set():
            began = time.monotonic()
            try:
                self.stub.ModelInfer(message, timeout=30)
                status = grpc.StatusCode.OK
            except grpc.RpcError as error:
                status = error.code()
            self.calls.append((began, time.monotonic() - began, status))

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()


def test_runner_killed_under_load(repo: Path, tmp_path: Path) -> None:
    gateway = GatewayProcess(repo, tmp_path)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            victim = gateway.runner_pids()["iris/1"]
            iris_load = Load(stub, "iris", iris()[0][:3])
            churn_load = Load(stub, "churn", churn_data()[0][:3])
            time.sleep(1.0)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            back = wait_until(
                lambda: (
                    any(
                        b > killed_at and s == grpc.StatusCode.OK
                        for b, _, s in iris_load.calls[-5:]
                    )
                    and gateway.runner_pids().get("iris/1") not in (None, victim)
                ),
                timeout=60,  # a restart imports numpy, grpc (and a helper scikit-learn)
            )
            recovered_after = time.monotonic() - killed_at
            time.sleep(0.5)
            iris_load.stop()
            churn_load.stop()
        after_kill = [(b, d, s) for b, d, s in iris_load.calls if b >= killed_at]
        failures = [(d, s) for _, d, s in after_kill if s != grpc.StatusCode.OK]
        assert back, f"iris did not come back within 60 s ({len(failures)} failures)"
        assert failures, "the kill was not observed by any call"
        assert {s for _, s in failures} == {grpc.StatusCode.UNAVAILABLE}
        # Refused at once, not after the 30 s deadline: a hung call would take that long.
        assert max(d for d, _ in failures) < 10, "a call to the dead runner hung"
        assert recovered_after < 60
        # The other model never noticed.
        assert churn_load.calls and {s for _, _, s in churn_load.calls} == {grpc.StatusCode.OK}
    finally:
        gateway.stop()


def test_unavailable_message_says_why(repo: Path, tmp_path: Path) -> None:
    gateway = GatewayProcess(repo, tmp_path)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            os.kill(gateway.runner_pids()["iris/1"], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while True:  # until the supervisor has reaped it (a few ms; more on a busy CI)
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(request("iris", {"input": iris()[0][:1]}), timeout=5)
                details = info.value.details() or ""
                if "exited" in details or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "model 'iris' version '1'" in details
            assert "runner exited with code -9" in details
    finally:
        gateway.stop()


def test_sigterm_finishes_in_flight_and_leaves_no_process(repo: Path, tmp_path: Path) -> None:
    gateway = GatewayProcess(repo, tmp_path)
    runners = list(gateway.runner_pids().values())
    assert len(runners) == 6
    results: list[object] = []
    # Connected before the calls start, so that 0.5 s is ample for each call to reach the
    # gateway; the calls (1 s each, one at a time) are still running when it is stopped.
    channels = [grpc.insecure_channel(gateway.target) for _ in range(3)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)

    def slow_call(i: int) -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(channels[i])
        seconds = np.array([1.0], dtype=np.float64)
        try:
            reply = stub.ModelInfer(request("slow", {"seconds": seconds}, id=f"t{i}"), timeout=20)
            results.append((reply.id, outputs(reply)["slept"].tolist()))
        except grpc.RpcError as error:
            results.append(error.code())

    threads = [threading.Thread(target=slow_call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    code = gateway.stop()
    for thread in threads:
        thread.join()
    for channel in channels:
        channel.close()
    assert code == 0
    assert sorted(results) == [(f"t{i}", [1.0]) for i in range(3)]  # type: ignore[type-var]
    assert wait_until(lambda: not any(pid_alive(pid) for pid in runners), timeout=5)


def test_gateway_killed_outright_takes_its_runners_along(repo: Path, tmp_path: Path) -> None:
    gateway = GatewayProcess(repo, tmp_path)
    runners = list(gateway.runner_pids().values())
    gateway.proc.kill()
    gateway.proc.wait()
    assert wait_until(lambda: not any(pid_alive(pid) for pid in runners), timeout=5), [
        psutil.Process(pid).cmdline() for pid in runners if pid_alive(pid)
    ]


def test_a_broken_model_does_not_stop_the_others(repo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "broken" / "1").mkdir(parents=True)
    (models / "broken" / "1" / "model.joblib").write_bytes(b"not a pickle")
    (models / "iris").symlink_to(repo / "iris")
    gateway = GatewayProcess(models, tmp_path / "data")
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(request("iris", {"input": iris()[0][:1]})).outputs
            index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            # Failing, backing off or trying again: the reason stays in sight either way.
            assert index["broken"].state in {"UNAVAILABLE", "LOADING"}
            assert "runner exited with code 3" in index["broken"].reason
            assert not stub.ServerReady(pb.ServerReadyRequest()).ready
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("broken", {"input": iris()[0][:1]}), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "model 'broken' version '1' is not ready" in info.value.details()
    finally:
        gateway.stop()


def statuses(gateway: GatewayProcess) -> dict[str, str]:
    """Each recorded request's status, read from the ledger (nothing before its first
    batch is written)."""
    database = gateway.data_dir / "ledger.db"
    if not database.exists():
        return {}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        return dict(db.execute("SELECT request_id, status FROM answers"))


QUICK = np.array([0.0], dtype=np.float64)  # the slow model's seconds, for an answer at once


def _cancelled_left_out(gateway: GatewayProcess) -> None:
    """Request "gone" was recorded CANCELLED and "kept" OK; the version's report counts
    "kept" alone, so no error."""
    expected = {"gone": "CANCELLED", "kept": "OK"}
    assert wait_until(lambda: statuses(gateway) == expected, 10), statuses(gateway)
    with ControlClient(gateway.target) as control:
        version = control.report("slow")["versions"][0]
    assert (version["errors"], version["error_rate"]) == (0, 0.0)


def test_a_request_its_client_cancels_is_recorded_as_cancelled(repo: Path, tmp_path: Path) -> None:
    """grpc.aio cancels the handler when the client cancels: the request still leaves its
    row (status CANCELLED), which the version's evaluation leaves out."""
    gateway = GatewayProcess(repo, tmp_path)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            seconds = np.array([1.5], dtype=np.float64)
            call = stub.ModelInfer.future(request("slow", {"seconds": seconds}, id="gone"))
            time.sleep(0.5)
            assert call.cancel()
            stub.ModelInfer(request("slow", {"seconds": QUICK}, id="kept"), timeout=20)
        _cancelled_left_out(gateway)
    finally:
        gateway.stop()


def test_a_stream_request_its_client_cancels_is_recorded_as_cancelled(
    repo: Path, tmp_path: Path
) -> None:
    """ModelStreamInfer as the unary test above: the client cancels the stream while its
    request is at the runner (the stream still open, as a client that gives up mid-stream
    leaves it); the request leaves its row with status CANCELLED, out of the version's
    evaluation, and the next stream is answered and recorded as usual."""
    gateway = GatewayProcess(repo, tmp_path)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            seconds = np.array([1.5], dtype=np.float64)
            gone = request("slow", {"seconds": seconds}, id="gone")
            hang_up = threading.Event()

            def requests() -> Iterator[pb.ModelInferRequest]:
                yield gone
                hang_up.wait(10)  # the stream stays open until the client cancels it

            call = stub.ModelStreamInfer(requests())
            time.sleep(0.5)
            assert call.cancel()
            hang_up.set()
            kept = request("slow", {"seconds": QUICK}, id="kept")
            [reply] = stub.ModelStreamInfer(iter([kept]), timeout=20)
            assert not reply.error_message and reply.infer_response.id == "kept"
        _cancelled_left_out(gateway)
    finally:
        gateway.stop()


def test_requests_whose_deadline_passes_count_against_the_version(
    repo: Path, tmp_path: Path
) -> None:
    """When the client's deadline passes, grpc.aio's cancel of the handler and the runner
    call's own timer race; either way the row says DEADLINE_EXCEEDED and is an error of
    the version, as the client was told (only a client that gave up early is CANCELLED)."""
    gateway = GatewayProcess(repo, tmp_path)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            seconds = np.array([1.0], dtype=np.float64)
            calls = [
                stub.ModelInfer.future(
                    request("slow", {"seconds": seconds}, id=f"d{i}"), timeout=0.3
                )
                for i in range(20)
            ]
            for call in calls:
                assert call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: len(statuses(gateway)) == 20, 15), statuses(gateway)
        assert set(statuses(gateway).values()) == {"DEADLINE_EXCEEDED"}
        with ControlClient(gateway.target) as control:
            version = control.report("slow")["versions"][0]
        assert (version["errors"], version["error_rate"]) == (20, 1.0)
    finally:
        gateway.stop()


def test_a_stream_request_whose_deadline_passes_counts_against_the_version(
    repo: Path, tmp_path: Path
) -> None:
    """The stream form of the test above: the client was told DEADLINE_EXCEEDED, so the
    row says so and counts against the version. (The stream used to time each request
    with ``settings.default_deadline_s``, not what was left of the client's deadline, so
    the deadline's cancel read as a client giving up early: CANCELLED.)"""
    gateway = GatewayProcess(repo, tmp_path)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            late = request("slow", {"seconds": np.array([1.0], dtype=np.float64)}, id="late")
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([late]), timeout=0.3))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: "late" in statuses(gateway), 15), statuses(gateway)
        assert statuses(gateway) == {"late": "DEADLINE_EXCEEDED"}
    finally:
        gateway.stop()
