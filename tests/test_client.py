"""The Python client against a real runner process serving a model trained by the test.

The runner is a full V2 server for one model, so everything the client does is exercised
over real gRPC: raw and typed tensors, metadata, the index, and status -> exception mapping
(status and message both asserted, as the design asks).
"""

from __future__ import annotations

import asyncio
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris

from gateway.demo import ensure_demo_repository
from greenroom_client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    GreenroomError,
    InferResult,
    InvalidArgument,
    NotFound,
    TensorSpec,
    Unavailable,
)

ROOT = Path(__file__).resolve().parent.parent
LISTENING = "GREENROOM_RUNNER_LISTENING "
STARTUP_TIMEOUT_S = 60.0


@contextmanager
def runner_process(model_dir: Path, name: str, version: str) -> Iterator[str]:
    """Start ``python -m runners`` on port 0 and yield the address it prints."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runners",
            "--model-dir",
            str(model_dir),
            "--name",
            name,
            "--version",
            version,
            "--address",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:  # keeps draining so a chatty runner never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield _await_listening(lines, seen)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _await_listening(lines: queue.Queue[str | None], seen: list[str]) -> str:
    while True:
        try:
            line = lines.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"runner printed no {LISTENING.strip()} line; output: {seen}")
        if line is None:
            pytest.fail(f"runner exited before listening; output: {''.join(seen)}")
        seen.append(line)
        if line.startswith(LISTENING):
            return line[len(LISTENING) :].strip()


def _await_ready(address: str) -> None:
    """The runner listens before its model is loaded; ServerReady turns true after."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with Client(address, timeout=5) as client:
        while not client.server_ready():
            if time.monotonic() > deadline:
                pytest.fail(f"runner at {address} never became ready")
            time.sleep(0.05)


@dataclass(frozen=True)
class Served:
    address: str
    model: Any  # the very estimator the runner loaded
    x: np.ndarray[Any, np.dtype[np.float32]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("models")
    ensure_demo_repository(repo, models=["iris"])
    model_dir = repo / "iris" / "1"
    x = load_iris(return_X_y=True)[0][::10].astype(np.float32)
    with runner_process(model_dir, "iris", "1") as address:
        _await_ready(address)
        yield Served(address, joblib.load(model_dir / "model.joblib"), x)


def _assert_matches_model(result: InferResult, served: Served) -> None:
    assert set(result.outputs) == {"label", "probabilities"}
    assert result.outputs["label"].dtype == np.int64
    np.testing.assert_array_equal(result["label"], served.model.predict(served.x))
    assert result.outputs["probabilities"].dtype == np.float64
    np.testing.assert_allclose(
        result["probabilities"], served.model.predict_proba(served.x), rtol=1e-6
    )
    assert (result.model, result.version) == ("iris", "1")


# -------------------------------------------------------------------------- sync client


def test_health_and_server_metadata(served: Served) -> None:
    with Client(served.address, timeout=10) as client:
        assert client.server_live()
        assert client.server_ready()
        assert client.model_ready("iris")
        assert client.model_ready("iris", version="1")
        meta = client.server_metadata()
        assert meta.name
        assert isinstance(meta.extensions, list)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_infer_equals_the_models_own_predictions(served: Served, raw: bool) -> None:
    with Client(served.address, timeout=10) as client:
        result = client.infer("iris", {"input": served.x}, raw=raw)
    _assert_matches_model(result, served)


def test_infer_echoes_request_id_and_honours_version(served: Served) -> None:
    with Client(served.address, timeout=10) as client:
        result = client.infer("iris", {"input": served.x}, version="1", request_id="req-42")
    assert result.id == "req-42"
    assert result.version == "1"


def test_infer_returns_only_the_requested_outputs(served: Served) -> None:
    with Client(served.address, timeout=10) as client:
        result = client.infer("iris", {"input": served.x}, outputs=["label"])
    assert list(result.outputs) == ["label"]
    np.testing.assert_array_equal(result["label"], served.model.predict(served.x))


def test_model_metadata(served: Served) -> None:
    with Client(served.address, timeout=10) as client:
        meta = client.model_metadata("iris")
    assert meta.name == "iris"
    assert "1" in meta.versions
    assert meta.inputs == [TensorSpec("input", "FP32", (-1, 4))]
    assert {(s.name, s.datatype) for s in meta.outputs} == {
        ("label", "INT64"),
        ("probabilities", "FP64"),
    }


def test_repository_index(served: Served) -> None:
    with Client(served.address, timeout=10) as client:
        entries = client.repository_index()
        ready_only = client.repository_index(ready=True)
    assert [(e.name, e.version, e.state) for e in entries] == [("iris", "1", "READY")]
    assert [(e.name, e.version) for e in ready_only] == [("iris", "1")]


# ------------------------------------------------------------------------ error mapping


def _cause(err: GreenroomError) -> Any:
    cause = err.__cause__
    assert isinstance(cause, grpc.RpcError), "the original RpcError is kept as __cause__"
    return cause


def test_unknown_model_is_not_found_with_the_servers_message(served: Served) -> None:
    with Client(served.address, timeout=10) as client, pytest.raises(NotFound) as info:
        client.infer("no-such-model", {"input": served.x})
    err = info.value
    assert err.code == "NOT_FOUND"
    assert "no-such-model" in err.message
    assert err.message == _cause(err).details()
    assert _cause(err).code() == grpc.StatusCode.NOT_FOUND


def test_unknown_version_is_not_found(served: Served) -> None:
    with Client(served.address, timeout=10) as client, pytest.raises(NotFound) as info:
        client.model_metadata("iris", version="9")
    assert "9" in info.value.message
    assert _cause(info.value).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("inputs", "mentions"),
    [
        ({"input": np.zeros((2, 4), dtype=np.float64)}, "FP64"),
        ({"input": np.zeros((2, 3), dtype=np.float32)}, "shape"),
        ({"features": np.zeros((2, 4), dtype=np.float32)}, "features"),
    ],
    ids=["datatype", "shape", "name"],
)
def test_bad_input_is_invalid_argument(
    served: Served, inputs: dict[str, np.ndarray[Any, Any]], mentions: str
) -> None:
    with Client(served.address, timeout=10) as client, pytest.raises(InvalidArgument) as info:
        client.infer("iris", inputs)
    err = info.value
    assert err.code == "INVALID_ARGUMENT"
    assert mentions in err.message
    assert err.message == _cause(err).details()


def test_deadline_is_deadline_exceeded(served: Served) -> None:
    # A listener that never speaks: the call can only end by its deadline.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with Client(address, timeout=0.3) as client, pytest.raises(DeadlineExceeded):
            client.infer("iris", {"input": served.x})


def test_no_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=5) as client, pytest.raises(Unavailable) as info:
        client.server_live()
    assert _cause(info.value).code() == grpc.StatusCode.UNAVAILABLE


def test_unencodable_array_fails_before_sending() -> None:
    with Client("127.0.0.1:1") as client, pytest.raises(InvalidArgument, match="complex"):
        client.infer("iris", {"input": np.zeros((1, 4), dtype=np.complex64)})


# ------------------------------------------------------------------------- async client


async def _async_session(served: Served) -> None:
    async with AsyncClient(served.address, timeout=10) as client:
        assert await client.server_live()
        assert await client.server_ready()
        assert await client.model_ready("iris", version="1")
        assert (await client.server_metadata()).name
        for raw in (True, False):
            result = await client.infer("iris", {"input": served.x}, raw=raw, request_id="a-1")
            _assert_matches_model(result, served)
            assert result.id == "a-1"
        meta = await client.model_metadata("iris")
        assert meta.inputs == [TensorSpec("input", "FP32", (-1, 4))]
        index = await client.repository_index()
        assert [(e.name, e.version, e.state) for e in index] == [("iris", "1", "READY")]
        with pytest.raises(NotFound) as info:
            await client.infer("no-such-model", {"input": served.x})
        assert info.value.message == _cause(info.value).details()
        with pytest.raises(InvalidArgument):
            await client.infer("iris", {"input": np.zeros((2, 3), dtype=np.float32)})


def test_async_client_behaves_like_the_sync_one(served: Served) -> None:
    asyncio.run(_async_session(served))


def test_async_client_no_server_is_unavailable() -> None:
    async def call() -> None:
        async with AsyncClient("127.0.0.1:1", timeout=5) as client:
            await client.server_live()

    with pytest.raises(Unavailable):
        asyncio.run(call())
