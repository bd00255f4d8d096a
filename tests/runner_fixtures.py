"""Helpers for runner tests: tiny models saved into temporary model repositories, and real
runner processes started with ``python -m runners`` exactly as the gateway starts them.

Every runner is started on port 0 (or a unix socket in tmp) and its address read from the
``GREENROOM_RUNNER_LISTENING`` line; its stderr (the JSON log) goes to a file so that a
failing test can show it and a test can assert what was logged.
"""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from greenroom_client.tensors import decode, encode
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING = "GREENROOM_RUNNER_LISTENING "


# A custom model that sleeps x[0] seconds, then answers x + 1.
SLEEPY_MODEL = """
import time

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

    def predict(self, inputs):
        time.sleep(float(inputs["x"][0]))
        return {"y": inputs["x"] + 1}
"""


def version_dir(root: Path, name: str, version: str) -> Path:
    path = root / name / version
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_joblib(root: Path, name: str, version: str, estimator: Any) -> Path:
    path = version_dir(root, name, version)
    joblib.dump(estimator, path / "model.joblib")
    return path


def save_onnx(
    root: Path, name: str, version: str, estimator: Any, *, n_features: int, zipmap: bool
) -> Path:
    """skl2onnx export with one FP32 input named ``input`` of shape [None, n_features]."""
    path = version_dir(root, name, version)
    options = None if zipmap else {id(estimator): {"zipmap": False}}
    onx = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options=options,
        target_opset=17,
    )
    (path / "model.onnx").write_bytes(onx.SerializeToString())
    return path


def save_custom(root: Path, name: str, version: str, source: str) -> Path:
    path = version_dir(root, name, version)
    (path / "model.py").write_text(source)
    return path


def write_model_yaml(root: Path, name: str, text: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "model.yaml").write_text(text)


@dataclass
class Runner:
    """A runner process and what it said: its bound address and its log file."""

    proc: subprocess.Popen[str]
    log_path: Path
    address: str = ""
    channels: list[grpc.Channel] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self.channels.append(channel)
        return channel

    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel())

    def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel())
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        return status

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        for channel in self.channels:
            channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def spawn_runner(
    model_dir: Path,
    name: str,
    version: str,
    log_path: Path,
    *,
    address: str = "127.0.0.1:0",
    extra: Sequence[str] = (),
) -> Runner:
    command = [
        sys.executable, "-m", "runners",
        "--model-dir", str(model_dir), "--name", name, "--version", version,
        "--address", address, *extra,
    ]  # fmt: skip
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True
    )
    log_file.close()
    return Runner(proc, log_path)


def read_listening(runner: Runner, timeout: float = 30.0) -> str:
    """The address from the LISTENING line; fails with the runner's log otherwise."""
    assert runner.proc.stdout is not None
    ready, _, _ = select.select([runner.proc.stdout], [], [], timeout)
    line = runner.proc.stdout.readline() if ready else ""
    if not line.startswith(LISTENING):
        raise AssertionError(f"no LISTENING line (got {line!r}); log:\n{runner.log()}")
    runner.address = line[len(LISTENING) :].strip()
    return runner.address


def wait_serving(runner: Runner, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.proc.poll() is not None:
            raise AssertionError(f"runner exited {runner.proc.returncode}; log:\n{runner.log()}")
        if runner.health(name) == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.05)
    raise AssertionError(f"runner not SERVING after {timeout}s; log:\n{runner.log()}")


@contextlib.contextmanager
def running(
    model_dir: Path,
    name: str,
    version: str = "1",
    *,
    address: str = "127.0.0.1:0",
    extra: Sequence[str] = (),
    serving: bool = True,
) -> Iterator[Runner]:
    """A started runner (SERVING unless ``serving`` is False), always killed afterwards."""
    log_path = model_dir.parent / f"runner-{version}-{time.monotonic_ns()}.log"
    runner = spawn_runner(model_dir, name, version, log_path, address=address, extra=extra)
    try:
        read_listening(runner)
        if serving:
            wait_serving(runner, name)
        yield runner
    finally:
        runner.kill()


def infer_request(
    name: str,
    arrays: Mapping[str, npt.NDArray[Any]],
    raw: bool,
    *,
    version: str = "",
    outputs: Sequence[str] = (),
    request_id: str = "",
    datatypes: Mapping[str, str] | None = None,
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version=version, id=request_id)
    encode(request.inputs, request.raw_input_contents, arrays, raw, datatypes)
    for output in outputs:
        request.outputs.add(name=output)
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, npt.NDArray[Any]]:
    # cast: tensors._Tensor.HasField(str) is stricter than the stubs' Literal[...]
    return decode(response.outputs, response.raw_output_contents)


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The RpcError a call raises (fails the test when it succeeds)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call succeeded; an error was expected")


def float_rows(rows: Sequence[Sequence[float]]) -> npt.NDArray[np.float32]:
    return np.asarray(rows, dtype=np.float32)
