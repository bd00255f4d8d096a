"""The Java client against a live gateway: its `infer` and `feedback` example programs.

`make -C clients/java build` generates the Java stubs from proto/ and builds the client with
Maven (a JDK and Maven must be installed: the test fails without them). A scikit-learn
classifier trained here is served by a real `greenroom serve`; the Java `infer` program's
printed answer must equal the model's own predict/predict_proba, and labels sent by the Java
`feedback` program must be matched to that answer in the report. The client's own JUnit tests
(encodings, a fake V2 server, the REST JSON and the CSV) run through `make test`.
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
JAVA_CLIENT = ROOT / "clients" / "java"
JAR = JAVA_CLIENT / "target" / "greenroom-client.jar"
REQUEST_ID = "java-request-1"


def make(target: str, *variables: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(JAVA_CLIENT), target,
         f"PYTHON={sys.executable}", *variables],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def java_client() -> Path:
    """Builds clients/java once; fails (does not skip) when the JDK or Maven is missing."""
    missing = [tool for tool in ("java", "javac", "mvn", "make") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the Java client needs a JDK 17 and Maven",
            pytrace=False,
        )
    built = make("build")
    assert built.returncode == 0, built.stdout + built.stderr
    assert JAR.is_file(), f"make build made no {JAR}"
    return JAR


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    return iris_classifier()


@pytest.fixture(scope="module")
def iris_gateway(
    model: LogisticRegression, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_iris(model, tmp_path_factory, "java")


def run(jar: Path, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An example program, run from the built jar as a user would run it."""
    return subprocess.run(
        ["java", "-cp", str(jar), f"dev.greenroom.examples.{program}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("contents", ["raw", "typed"])
def test_java_infer_example(
    java_client: Path,
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
        answered = run(java_client, "Infer", *args, "--typed")
    else:  # through the documented entry point: make example ARGS="..."
        answered = make("example", f"ARGS={shlex.join(args)}", timeout=120)
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.count("\n") == 1, answered.stdout  # one line
    check_answer(json.loads(answered.stdout), model, request_id)


def test_java_infer_named_version_and_errors(
    java_client: Path, iris_gateway: GatewayProcess, model: LogisticRegression, tmp_path: Path
) -> None:
    request = tmp_path / "request.json"
    write_request(request, "java-versioned")
    target = ["--target", iris_gateway.target, "--input", str(request)]
    answered = run(java_client, "Infer", *target, "--model", "iris", "--version", "1")
    assert answered.returncode == 0, answered.stderr
    check_answer(json.loads(answered.stdout), model, "java-versioned")

    # The gRPC status survives into the program's error.
    missing = run(java_client, "Infer", *target, "--model", "nope")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.startswith("infer: greenroom: infer nope: NOT_FOUND: "), missing.stderr
    assert "nope" in missing.stderr.split("NOT_FOUND: ", 1)[1]

    unknown_version = run(java_client, "Infer", *target, "--model", "iris", "--version", "9")
    assert unknown_version.returncode == 1
    assert "infer iris: NOT_FOUND: " in unknown_version.stderr, unknown_version.stderr

    request.write_text(json.dumps({"inputs": [
        {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}))  # fmt: skip
    bad = run(java_client, "Infer", *target, "--model", "iris")
    assert bad.returncode == 1
    assert bad.stderr.startswith("infer: greenroom: infer iris: INVALID_ARGUMENT: "), bad.stderr
    assert "'input'" in bad.stderr, bad.stderr

    usage = run(java_client, "Infer", "--target", iris_gateway.target, "--model", "iris")
    assert usage.returncode == 2
    assert "--input is required" in usage.stderr, usage.stderr


def test_java_feedback_is_matched_in_report(
    java_client: Path, iris_gateway: GatewayProcess, model: LogisticRegression, tmp_path: Path
) -> None:
    request = tmp_path / "request.json"
    request_id = f"{REQUEST_ID}-feedback"
    write_request(request, request_id)
    answered = run(java_client, "Infer", "--target", iris_gateway.target, "--model", "iris",
                   "--input", str(request))  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    with ControlClient(iris_gateway.target) as control:
        before = {v["version"]: v for v in control.report("iris")["versions"]}["1"]["labelled"]

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "row", "label"])
        writer.writerow([request_id, 1, int(model.predict(rows()[1:2])[0])])
    # Through the documented entry point: make feedback ARGS="..."
    args = ["--target", iris_gateway.target, "--model", "iris", "--file", str(labels)]
    fed = make("feedback", f"ARGS={shlex.join(args)}", timeout=120)
    assert fed.returncode == 0, fed.stderr
    assert json.loads(fed.stdout) == {"accepted": 1, "matched": 1, "unmatched": 0, "duplicates": 0}

    with ControlClient(iris_gateway.target) as control:
        report = control.report("iris")
    primary = {v["version"]: v for v in report["versions"]}["1"]
    assert primary["role"] == "primary"
    assert primary["labelled"] == before + 1 == 1
    assert primary["accuracy"] == 1.0


def test_java_unit_tests(java_client: Path) -> None:
    """The client's JUnit tests, and pom.xml's protobuf-java against grpcio-tools' protoc."""
    tested = make("test", "MVN_TEST_FLAGS=-q -B -Dstyle.color=never")
    assert tested.returncode == 0, tested.stdout + tested.stderr
