"""The Go client against a live gateway: its `infer` and `feedback` example programs.

`make -C clients/go build` generates the Go stubs from proto/ and builds the programs (Go
must be installed: the test fails without it). A scikit-learn classifier trained here is
served by a real `greenroom serve`; the Go `infer` program's printed answer must equal the
model's own predict/predict_proba, and labels sent by the Go `feedback` program must be
matched to that answer in the report.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression

from greenroom_client.control import ControlClient
from tests.client_programs import check_answer, iris_classifier, rows, serve_iris, write_request
from tests.conftest import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
GO_CLIENT = ROOT / "clients" / "go"
REQUEST_ID = "go-request-1"


@pytest.fixture(scope="module")
def go_bin() -> Path:
    if shutil.which("go") is None:
        pytest.fail("Go is not installed: the Go client cannot be built", pytrace=False)
    built = subprocess.run(
        ["make", "-s", "-C", str(GO_CLIENT), "build", f"PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return GO_CLIENT / "bin"


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    return iris_classifier()


@pytest.fixture(scope="module")
def iris_gateway(
    model: LogisticRegression, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_iris(model, tmp_path_factory, "go")


def run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(program), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("contents", ["raw", "typed"])
def test_go_infer_example(
    go_bin: Path,
    iris_gateway: GatewayProcess,
    model: LogisticRegression,
    tmp_path: Path,
    contents: str,
) -> None:
    request = tmp_path / "request.json"
    request_id = f"{REQUEST_ID}-{contents}"
    write_request(request, request_id)
    args = ["--target", iris_gateway.target, "--model", "iris", "--input", str(request)]
    if contents == "typed":
        answered = run(go_bin / "infer", *args, "--typed")
    else:  # through the documented entry point: make example ARGS="..."
        answered = subprocess.run(
            ["make", "-s", "-C", str(GO_CLIENT), "example", f"ARGS={shlex.join(args)}",
             f"PYTHON={sys.executable}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    check_answer(json.loads(answered.stdout), model, request_id)


def test_go_infer_named_version_and_errors(
    go_bin: Path, iris_gateway: GatewayProcess, model: LogisticRegression, tmp_path: Path
) -> None:
    request = tmp_path / "request.json"
    write_request(request, "go-versioned")
    target = ["--target", iris_gateway.target, "--input", str(request)]
    answered = run(go_bin / "infer", *target, "--model", "iris", "--version", "1")
    assert answered.returncode == 0, answered.stderr
    check_answer(json.loads(answered.stdout), model, "go-versioned")

    # The gRPC status survives into the program's error.
    missing = run(go_bin / "infer", *target, "--model", "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("infer: greenroom: infer nope: NotFound: "), missing.stderr
    assert "nope" in missing.stderr.split("NotFound: ", 1)[1]

    request.write_text(json.dumps({"inputs": [
        {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}))  # fmt: skip
    bad = run(go_bin / "infer", *target, "--model", "iris")
    assert bad.returncode == 1
    assert "InvalidArgument" in bad.stderr, bad.stderr
    assert "'input'" in bad.stderr, bad.stderr


def test_go_feedback_is_matched_in_report(
    go_bin: Path, iris_gateway: GatewayProcess, model: LogisticRegression, tmp_path: Path
) -> None:
    request = tmp_path / "request.json"
    request_id = f"{REQUEST_ID}-feedback"
    write_request(request, request_id)
    answered = run(go_bin / "infer", "--target", iris_gateway.target, "--model", "iris",
                   "--input", str(request))  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    with ControlClient(iris_gateway.target) as control:
        before = {v["version"]: v for v in control.report("iris")["versions"]}["1"]["labelled"]

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "row", "label"])
        writer.writerow([request_id, 1, int(model.predict(rows()[1:2])[0])])
    fed = run(go_bin / "feedback", "--target", iris_gateway.target, "--model", "iris",
              "--file", str(labels))  # fmt: skip
    assert fed.returncode == 0, fed.stderr
    assert json.loads(fed.stdout) == {"accepted": 1, "matched": 1, "unmatched": 0, "duplicates": 0}

    with ControlClient(iris_gateway.target) as control:
        report = control.report("iris")
    primary = {v["version"]: v for v in report["versions"]}["1"]
    assert primary["role"] == "primary"
    assert primary["labelled"] == before + 1 == 1
    assert primary["accuracy"] == 1.0
