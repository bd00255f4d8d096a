"""The framed socket (runners.framed, gateway.framed): ModelInfer to a local runner without gRPC.

Real runner processes with ``--framed``, called over the framed socket by the gateway's own client
and over gRPC, must give the same answers and the same errors; calls that the gateway
gives up on, runners that die and runners that stop are checked on the framed socket itself; and a
real gateway with the framed socket on and off must answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from sklearn.linear_model import LogisticRegression

from gateway.framed import FramedClient, FramedStatus, _Connection
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from runners.framed import HEADER, _recv_exactly, _send
from tests.conftest import GatewayProcess
from tests.models import iris
from tests.runner_fixtures import (
    SLEEPY_MODEL,
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


def framed_call(path: Path, request: bytes, timeout: float = 10.0) -> bytes:
    """One call on a fresh FramedClient, as the gateway makes it."""

    async def call() -> bytes:
        framed = FramedClient(path)
        try:
            async with asyncio.timeout(timeout):
                return await framed.send(request)
        finally:
            framed.close()

    return asyncio.run(call())


def framed_status(path: Path, request: bytes) -> FramedStatus:
    with pytest.raises(FramedStatus) as info:
        framed_call(path, request)
    return info.value


@contextlib.contextmanager
def sleepy_runner(tmp_path: Path) -> Iterator[tuple[Runner, Path]]:
    """A runner of SLEEPY_MODEL with its framed socket, and the socket's path."""
    model_dir = save_custom(tmp_path, "sleepy", "1", SLEEPY_MODEL)
    framed_path = tmp_path / "sleepy.framed"
    with running(model_dir, "sleepy", extra=["--framed-socket", str(framed_path)]) as runner:
        yield runner, framed_path


@pytest.fixture(scope="module")
def iris_framed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runner, Path]]:
    root = tmp_path_factory.mktemp("framed")
    model = LogisticRegression(max_iter=1000).fit(X, Y)
    model_dir = save_joblib(root, "iris", "1", model)
    framed = root / "iris.framed"
    with running(model_dir, "iris", extra=["--framed-socket", str(framed)]) as runner:
        yield runner, framed


def test_framed_answers_equal_grpc_answers(iris_framed: tuple[Runner, Path]) -> None:
    runner, framed = iris_framed
    stub = runner.stub()
    requests = [
        infer_request("iris", {"input": X[:1]}, raw=True),
        infer_request("iris", {"input": X[:40]}, raw=True, request_id="r-40"),
        infer_request("iris", {"input": X[:5]}, raw=False, version="1"),
        infer_request("iris", {"input": X[:3]}, raw=True, outputs=["label"]),
    ]
    for request in requests:
        by_framed = pb.ModelInferResponse.FromString(
            framed_call(framed, request.SerializeToString())
        )
        assert by_framed == stub.ModelInfer(request)
        assert by_framed.id == request.id


def test_framed_errors_equal_grpc_errors(iris_framed: tuple[Runner, Path]) -> None:
    runner, framed = iris_framed
    stub = runner.stub()
    wrong_type = infer_request("iris", {"input": X[:2].astype(np.float64)}, raw=True)
    wrong_name = infer_request("iris", {"features": X[:2]}, raw=True)
    other_model = infer_request("rose", {"input": X[:2]}, raw=True)
    other_version = infer_request("iris", {"input": X[:2]}, raw=True, version="9")
    for request in (wrong_type, wrong_name, other_model, other_version):
        expected = rpc_error(stub.ModelInfer, request)
        got = framed_status(framed, request.SerializeToString())
        assert (got.code, got.details) == (expected.code(), expected.details())
    garbage = framed_status(framed, b"\xff\xff\xff")
    assert garbage.code == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_calls_each_get_their_own_answer(iris_framed: tuple[Runner, Path]) -> None:
    _, framed_path = iris_framed
    model_rows = [X[i : i + 1 + i % 4] for i in range(48)]

    async def many() -> list[bytes]:
        framed = FramedClient(framed_path)
        try:
            calls = [
                framed.send(
                    infer_request(
                        "iris", {"input": rows}, raw=True, request_id=f"c{i}"
                    ).SerializeToString()
                )
                for i, rows in enumerate(model_rows)
            ]
            first = await asyncio.gather(*calls)
            # The connections went back to the pool: a second round reuses them.
            again = await framed.send(
                infer_request("iris", {"input": X[:2]}, raw=True).SerializeToString()
            )
            return [*first, again]
        finally:
            framed.close()

    answers = asyncio.run(many())
    model = LogisticRegression(max_iter=1000).fit(X, Y)
    for i, (rows, raw) in enumerate(zip(model_rows, answers, strict=False)):
        answer = pb.ModelInferResponse.FromString(raw)
        assert answer.id == f"c{i}"
        np.testing.assert_array_equal(outputs_of(answer)["label"], model.predict(rows))
    assert len(outputs_of(pb.ModelInferResponse.FromString(answers[-1]))["label"]) == 2


def test_a_call_given_up_does_not_answer_the_next_one(tmp_path: Path) -> None:
    slow = infer_request("sleepy", {"x": np.array([0.6], np.float32)}, raw=True)
    quick = infer_request("sleepy", {"x": np.array([0.0, 5.0], np.float32)}, raw=True)

    async def scenario(framed: FramedClient) -> bytes:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await framed.send(slow.SerializeToString())
        # The slow answer arrives later on the connection the timeout closed, never here.
        answer = await framed.send(quick.SerializeToString())
        await asyncio.sleep(0.6)
        return answer

    with sleepy_runner(tmp_path) as (_, framed_path):
        framed = FramedClient(framed_path)
        answer = asyncio.run(scenario(framed))
        framed.close()
        np.testing.assert_array_equal(
            outputs_of(pb.ModelInferResponse.FromString(answer))["y"], [1.0, 6.0]
        )
        assert framed_call(framed_path, quick.SerializeToString()) == answer


def test_a_deadline_ends_the_call_on_time_and_frees_nothing_wrong(tmp_path: Path) -> None:
    """``send``'s own deadline (the gateway's per-request one): TimeoutError at the
    deadline, not before and not much after; the connection it held is closed, so the
    late answer cannot answer the next call; a call with time to spare is untouched."""
    slow = infer_request("sleepy", {"x": np.array([2.0], np.float32)}, raw=True)
    quick = infer_request("sleepy", {"x": np.array([0.0, 5.0], np.float32)}, raw=True)

    async def scenario(framed: FramedClient) -> tuple[float, bytes]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(TimeoutError):
            await framed.send(slow.SerializeToString(), began + 0.2)
        waited = loop.time() - began
        answer = await framed.send(quick.SerializeToString(), loop.time() + 30)
        await asyncio.sleep(2.0)  # the slow answer lands on the closed connection
        assert framed.open_connections == 1  # the given-up one closed, the other idle
        return waited, answer

    with sleepy_runner(tmp_path) as (_, framed_path):
        framed = FramedClient(framed_path)
        waited, answer = asyncio.run(scenario(framed))
        framed.close()
    assert 0.2 <= waited < 1.5  # well before the 2 s answer
    np.testing.assert_array_equal(
        outputs_of(pb.ModelInferResponse.FromString(answer))["y"], [1.0, 6.0]
    )


def test_calls_beyond_the_connection_cap_wait_for_a_connection(
    iris_framed: tuple[Runner, Path],
) -> None:
    _, framed_path = iris_framed
    seen: list[int] = []

    async def many() -> list[bytes]:
        client = FramedClient(framed_path, max_connections=2)

        async def one(i: int) -> bytes:
            request = infer_request("iris", {"input": X[i : i + 1]}, raw=True, request_id=f"w{i}")
            answer = await client.send(request.SerializeToString())
            seen.append(client.open_connections)
            return answer

        try:
            return await asyncio.gather(*(one(i) for i in range(20)))
        finally:
            client.close()

    answers = [pb.ModelInferResponse.FromString(raw) for raw in asyncio.run(many())]
    assert [a.id for a in answers] == [f"w{i}" for i in range(20)]
    assert max(seen) <= 2


def test_a_call_given_up_while_waiting_leaks_no_connection(tmp_path: Path) -> None:
    slow = infer_request("sleepy", {"x": np.array([0.5], np.float32)}, raw=True)
    quick = infer_request("sleepy", {"x": np.array([0.0], np.float32)}, raw=True)

    async def scenario() -> tuple[bytes, bytes, int]:
        client = FramedClient(framed_path, max_connections=1)
        first = asyncio.ensure_future(client.send(slow.SerializeToString()))
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):  # waits for the only connection, then gives up
            async with asyncio.timeout(0.1):
                await client.send(quick.SerializeToString())
        slow_answer = await first
        quick_answer = await client.send(quick.SerializeToString())  # the freed connection
        open_now = client.open_connections
        client.close()
        return slow_answer, quick_answer, open_now

    with sleepy_runner(tmp_path) as (_, framed_path):
        slow_answer, quick_answer, open_now = asyncio.run(scenario())
    assert outputs_of(pb.ModelInferResponse.FromString(slow_answer))["y"] == [1.5]
    assert outputs_of(pb.ModelInferResponse.FromString(quick_answer))["y"] == [1.0]
    assert open_now == 1


async def in_flight(
    framed_path: Path, request: pb.ModelInferRequest
) -> tuple[FramedClient, asyncio.Future[bytes]]:
    """A client with ``request`` sent and, 0.3 s later, in the runner's hands."""
    framed = FramedClient(framed_path)
    call = asyncio.ensure_future(framed.send(request.SerializeToString()))
    await asyncio.sleep(0.3)
    return framed, call


def test_runner_killed_mid_call_is_unavailable(tmp_path: Path) -> None:
    slow = infer_request("sleepy", {"x": np.array([5.0], np.float32)}, raw=True)

    async def scenario(runner: Runner) -> FramedStatus:
        framed, call = await in_flight(framed_path, slow)
        runner.proc.kill()
        with pytest.raises(FramedStatus) as info:
            await call
        framed.close()
        return info.value

    with sleepy_runner(tmp_path) as (runner, framed_path):
        status = asyncio.run(scenario(runner))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert "closed the framed socket" in status.details
    refused = framed_status(framed_path, slow.SerializeToString())
    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach its framed socket" in refused.details


def test_sigterm_lets_a_call_in_flight_finish(tmp_path: Path) -> None:
    slow = infer_request("sleepy", {"x": np.array([0.8], np.float32)}, raw=True)

    async def scenario(runner: Runner) -> bytes:
        framed, call = await in_flight(framed_path, slow)
        runner.proc.send_signal(signal.SIGTERM)
        try:
            return await call
        finally:
            framed.close()

    with sleepy_runner(tmp_path) as (runner, framed_path):
        answer = asyncio.run(scenario(runner))
        assert runner.wait_exit() == 0
    np.testing.assert_array_equal(
        outputs_of(pb.ModelInferResponse.FromString(answer))["y"], [np.float32(0.8) + 1]
    )
    assert not framed_path.exists()


class _Pipe(asyncio.Transport):
    """Where a connection's request goes; the test feeds the answer's bytes itself."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("cut", ["whole", "byte by byte", "in the header", "in the body"])
def test_an_answer_read_in_pieces_is_the_same_answer(cut: str) -> None:
    body = bytes(range(256)) * 100  # the size of a 1,000-row answer
    frame = HEADER.pack(len(body), 7) + body
    at = {"whole": [], "byte by byte": list(range(1, len(frame))), "in the header": [3],
          "in the body": [HEADER.size + 1000]}[cut]  # fmt: skip

    async def scenario() -> tuple[tuple[int, bytes], bool]:
        conn, pipe = _Connection(), _Pipe()
        conn.connection_made(pipe)
        answer = conn.send(b"request")
        edges = [0, *at, len(frame)]
        for start, stop in itertools.pairwise(edges):
            assert not answer.done()
            conn.data_received(frame[start:stop])
        return await answer, pipe.closed

    (code, got), closed = asyncio.run(scenario())
    assert (code, got, closed) == (7, body, False)


def test_bytes_beyond_the_answer_close_the_connection() -> None:
    async def scenario() -> tuple[tuple[int, bytes], bool]:
        conn, pipe = _Connection(), _Pipe()
        conn.connection_made(pipe)
        answer = conn.send(b"request")
        conn.data_received(HEADER.pack(2, 0) + b"ok" + b"extra")
        return await answer, pipe.closed and conn.closed

    assert asyncio.run(scenario()) == ((0, b"ok"), True)


def test_a_malformed_frame_closes_the_connection(iris_framed: tuple[Runner, Path]) -> None:
    runner, framed = iris_framed
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(framed))
        conn.sendall(HEADER.pack(3, 7) + b"abc")  # kind 7 does not exist
        with contextlib.suppress(ConnectionResetError):  # reset: "abc" was never read
            assert conn.recv(16) == b""
    assert "malformed request" in runner.log()
    # The runner serves on.
    request = infer_request("iris", {"input": X[:1]}, raw=True)
    assert pb.ModelInferResponse.FromString(
        framed_call(framed, request.SerializeToString())
    ).outputs


class _CutShort(socket.socket):
    """A socket whose first ``recv`` and ``sendmsg`` move only ``cut`` bytes, as a call
    that a signal interrupts after it has moved some does; the calls made are recorded."""

    def __init__(self, peer: socket.socket, cut: int) -> None:
        super().__init__(peer.family, peer.type, fileno=peer.detach())
        self.cut, self.calls = cut, list[str]()

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.calls.append("recv")
        return super().recv(min(size, self.cut) if len(self.calls) == 1 else size, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.calls.append("recv_into")
        return super().recv_into(buffer, nbytes, flags)

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        self.calls.append("sendmsg")
        whole = b"".join(buffers)
        return super().sendmsg([whole[: self.cut]], *args)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.calls.append("sendall")
        super().sendall(data, flags)


def test_a_request_read_in_pieces_is_the_same_request() -> None:
    """The runner reads a request's body with one MSG_WAITALL ``recv``; one cut short (a
    signal) is completed, and a peer that closes mid-request ends the connection."""
    body = bytes(range(256)) * 128
    ours, theirs = socket.socketpair()
    with _CutShort(ours, cut=1000) as short, theirs:
        theirs.sendall(body)
        assert _recv_exactly(short, len(body)) == body
        assert short.calls[:2] == ["recv", "recv_into"]
        theirs.sendall(b"abc")
        theirs.shutdown(socket.SHUT_WR)
        assert _recv_exactly(short, 5) is None


@pytest.mark.parametrize("cut", [3, HEADER.size + 1000])
def test_an_answer_cut_short_goes_out_whole(cut: int) -> None:
    """One ``sendmsg`` of header and body; cut short in the header or in the body, the
    rest follows with ``sendall``, and the peer reads exactly one frame."""
    body = bytes(range(256)) * 100
    ours, theirs = socket.socketpair()
    with _CutShort(ours, cut=cut) as short, theirs:
        _send(short, 3, body)
        short.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := theirs.recv(1 << 20):
            received += chunk
        assert short.calls[0] == "sendmsg" and "sendall" in short.calls
    assert bytes(received) == HEADER.pack(len(body), 3) + body


# ---- the gateway: framed on and off ------------------------------------------------------


def _runner_commands(gateway: GatewayProcess) -> list[list[str]]:
    return [psutil.Process(pid).cmdline() for pid in gateway.runner_pids().values()]


def test_gateway_answers_alike_with_the_framed_socket_on_and_off(
    gateway: GatewayProcess, repo: Path, tmp_path: Path
) -> None:
    off = GatewayProcess(repo, tmp_path / "data", env={"GREENROOM_FRAMED_SOCKET": "false"})
    try:
        assert all("--framed-socket" in cmd for cmd in _runner_commands(gateway))
        assert not any("--framed-socket" in cmd for cmd in _runner_commands(off))
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


def test_gateway_deadline_over_the_framed_socket(repo: Path, tmp_path: Path) -> None:
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
