"""An external V2 server reached by address (runner.yaml), and the CLI against a gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest

from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.models import iris
from tests.runner_fixtures import running
from tests.test_gateway import outputs, request


def test_external_runner_by_address(repo: Path, tmp_path: Path) -> None:
    """Any V2 server can be a runner: here a runner process the gateway did not start,
    serving the iris model under another name and version."""
    x, _ = iris()
    model = joblib.load(repo / "iris" / "1" / "model.joblib")
    remote_repo = tmp_path / "remote"
    (remote_repo / "iris-remote").mkdir(parents=True)
    (remote_repo / "iris-remote" / "7").symlink_to(repo / "iris" / "1")
    gateway_repo = tmp_path / "models"
    with running(remote_repo / "iris-remote" / "7", "iris-remote", "7") as remote:
        (gateway_repo / "ext" / "1").mkdir(parents=True)
        (gateway_repo / "ext" / "1" / "runner.yaml").write_text(
            f"address: {remote.address}\nmodel: iris-remote\nversion: '7'\n"
        )
        gateway = GatewayProcess(gateway_repo, tmp_path / "data")
        try:
            with grpc.insecure_channel(gateway.target) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                reply = stub.ModelInfer(request("ext", {"input": x}))
                assert (reply.model_name, reply.model_version) == ("ext", "1")
                np.testing.assert_array_equal(outputs(reply)["label"], model.predict(x))
                meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="ext"))
                assert meta.platform == "sklearn" and list(meta.versions) == ["1"]
                remote.kill()
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(request("ext", {"input": x[:1]}), timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "model 'ext' version '1'" in info.value.details()
        finally:
            gateway.stop()


def greenroom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_output_to_a_reader_gone_away_ends_quietly(gateway: GatewayProcess) -> None:
    """`greenroom infer ... | head -1`: the reader's end is closed before the answer is
    printed (here, before the command even starts), so its writes meet a broken pipe."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "models", "--target", gateway.target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_cli_models_and_infer(gateway: GatewayProcess, repo: Path) -> None:
    listed = json.loads(greenroom("models", "--target", gateway.target, "--json").stdout)
    churn = [row for row in listed if row["name"] == "churn"]
    assert [(r["version"], r["state"]) for r in churn] == [("1", "READY"), ("2", "READY")]
    assert churn[0]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]

    x, _ = iris()
    rows = x[:2].tolist()
    done = greenroom(
        "infer", "iris", "--input", f"input={json.dumps(rows)}", "--id", "cli-1",
        "--target", gateway.target, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    model = joblib.load(repo / "iris" / "1" / "model.joblib")
    assert (body["model_name"], body["model_version"], body["id"]) == ("iris", "1", "cli-1")
    label = next(o for o in body["outputs"] if o["name"] == "label")
    assert label["datatype"] == "INT64" and label["shape"] == [2]
    assert label["data"] == model.predict(np.float32(rows)).tolist()

    human = greenroom(
        "infer", "iris", "--input", f"input={json.dumps(rows)}", "--target", gateway.target
    )
    assert human.returncode == 0 and "iris version 1" in human.stdout


def test_cli_errors_exit_1_with_the_status(gateway: GatewayProcess) -> None:
    missing = greenroom("infer", "nope", "--input", "input=[[1]]", "--target", gateway.target)
    assert missing.returncode == 1
    assert "error: NOT_FOUND: model 'nope' is not in the repository" in missing.stderr
    bad = greenroom("infer", "iris", "--input", "input=[[1, 2, 3]]", "--target", gateway.target)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT: input 'input': shape [1, 3]" in bad.stderr
    garbled = greenroom("infer", "iris", "--input", "input=[[1,", "--target", gateway.target)
    assert garbled.returncode == 1 and "not JSON" in garbled.stderr


def test_a_runner_command_that_cannot_start_is_reported(repo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "native" / "1").mkdir(parents=True)
    (models / "native" / "1" / "runner.yaml").write_text("command: [./no-such-runner]\n")
    (models / "iris").symlink_to(repo / "iris")
    gateway = GatewayProcess(models, tmp_path / "data")
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            assert "cannot start the runner" in index["native"].reason
            assert "no-such-runner" in index["native"].reason
            assert stub.ModelInfer(request("iris", {"input": iris()[0][:1]})).outputs
    finally:
        gateway.stop()
