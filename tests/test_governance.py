"""Registry, journal, sampled inputs, drift, accuracy over time, backtests and the
validation gate, on a real gateway with real runners."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from gateway import provenance, registry
from gateway.repository import ModelEntry
from greenroom_client import Client
from greenroom_client.control import ControlClient
from greenroom_client.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc
from runners.config import ModelConfig
from tests.conftest import GatewayProcess, wait_for_predictions
from tests.test_external_and_cli import greenroom
from tests.test_shadow_e2e import cli_json

FEATURES = ["a", "b", "c"]


def data(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Label = a + b > 0; ``shift`` moves feature ``c`` only (which the label ignores)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    x[:, 2] += shift
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    header = ",".join(FEATURES + (["label"] if y is not None else []))
    lines = [header]
    for i, row in enumerate(x):
        cells = [f"{v:.6f}" for v in row] + ([str(y[i])] if y is not None else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def build(repo: Path, yaml: str) -> None:
    x, y = data(2000, 0)
    (repo / "m" / "1").mkdir(parents=True)
    joblib.dump(LogisticRegression().fit(x[:, :1], y), repo / "m" / "1" / "model.joblib.tmp")
    # version 1 sees only feature a (weak); registered later versions see all three
    weak = LogisticRegression().fit(np.c_[x[:, :1], np.zeros((len(x), 2))], y)
    joblib.dump(weak, repo / "m" / "1" / "model.joblib")
    (repo / "m" / "1" / "model.joblib.tmp").unlink()
    (repo / "m" / "model.yaml").write_text(yaml)


YAML = """
features: [a, b, c]
monitoring: {input_sample_rate: 1.0, drift_window: 600, check_interval_s: 0.2}
"""


@pytest.fixture
def strong(tmp_path: Path) -> Path:
    x, y = data(2000, 1)
    path = tmp_path / "strong.joblib"
    joblib.dump(LogisticRegression().fit(x, y), path)
    return path


def send(client: Client, x: np.ndarray, y: np.ndarray, control: ControlClient) -> None:
    items = []
    for start in range(0, len(x), 50):
        result = client.infer("m", {"input": x[start : start + 50]})
        items += [(result.id, i, str(y[start + i])) for i in range(len(result["label"]))]
    control.feedback("m", items)


def wait_for_gauge(url: str, name: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    value = float(line.split()[-1])
                    if value > 0.2:
                        return value
        time.sleep(0.2)
    raise AssertionError(f"{name} never above 0.2 on {url}")


def traffic_drift_report_backtest(
    control: ControlClient, client: Client, x: np.ndarray, y: np.ndarray
) -> None:
    """Version 1 primary, 2 shadowing: calm traffic, then traffic where only c moved."""
    send(client, x, y, control)
    # drift: the registered reference against the same distribution
    with pytest.raises(FailedPrecondition, match="no reference"):
        control.drift("m", "1")
    calm = control.drift("m", "2")
    assert not calm["drifted"], calm
    x2, y2 = data(700, 4, shift=3.0)
    send(client, x2, y2, control)
    shifted = control.drift("m", "2")
    flagged = {f["feature"] for f in shifted["features"] if f["drifted"]}
    assert flagged == {"c"}, shifted
    wait_for_predictions(control, "m", "2", 1300)
    over = control.report_over_time("m", "hour")
    by_version = {p["version"]: p for p in over["points"]}
    assert by_version["1"]["labelled"] == 1300 and by_version["2"]["labelled"] == 1300
    assert by_version["2"]["value"] > by_version["1"]["value"] + 0.1
    back = control.backtest("m", ["1", "2"], by="day")
    replay = {p["version"]: p for p in back["points"]}
    assert replay["1"]["labelled"] == 1300
    assert replay["1"]["value"] == pytest.approx(by_version["1"]["value"], abs=1e-9)
    assert replay["2"]["value"] == pytest.approx(by_version["2"]["value"], abs=1e-9)
    kinds = [e["kind"] for e in control.history("m")]
    assert kinds[:3] == ["registration", "registration", "reference"]
    assert "deployment" in kinds


def test_register_sample_drift_report_backtest(tmp_path: Path, strong: Path) -> None:
    repo = tmp_path / "models"
    build(repo, YAML)
    gateway = GatewayProcess(repo, tmp_path / "data")
    try:
        reference = write_csv(tmp_path / "ref.csv", *data(1000, 2))
        meta = tmp_path / "meta.json"
        meta.write_text(json.dumps({"author": "ana", "notes": "all features",
                                    "data": {"rows": 2000, "sha256": "ab" * 32},
                                    "metrics": {"accuracy": 0.99}, "parent": "1"}))  # fmt: skip
        body = cli_json("register", "m", "--artifact", str(strong), "--metadata", str(meta),
                        "--reference", str(reference), "--target", gateway.target)  # fmt: skip
        assert body["version"] == "2" and body["author"] == "ana"
        assert body["framework"] == "scikit-learn" and len(body["sha256"]) == 64
        assert body["data"]["rows"] == 2000 and body["metrics"] == {"accuracy": 0.99}
        with ControlClient(gateway.target) as control, Client(gateway.target) as client:
            # the new version serves at once
            x, y = data(600, 3)
            assert client.infer("m", {"input": x[:5]}, version="2").version == "2"
            with pytest.raises(AlreadyExists):
                control.register("m", strong, version="2")
            with pytest.raises(InvalidArgument, match="does not load"):
                garbage = tmp_path / "garbage.joblib"
                garbage.write_bytes(b"not a pickle")
                control.register("m", garbage)
            assert not (repo / "m" / "3").exists()
            control.deploy("m", "1", shadows={"2": 1.0}, reason="try 2")
            traffic_drift_report_backtest(control, client, x, y)
        # the gauges follow (the monitor checks every 0.2 s here)
        gauge = 'greenroom_drift_psi{feature="c",model="m",version="2"}'
        scraped = wait_for_gauge(gateway.metrics_url, gauge)
        assert scraped > 0.2
        # the picture, written by the CLI from the same RPCs (its rendering is checked in
        # a browser by tests/test_report_html.py)
        html = tmp_path / "report.html"
        out = greenroom("report", "m", "--html", str(html), "--by", "hour",
                        "--target", gateway.target)  # fmt: skip
        assert out.returncode == 0, out.stderr
        page = html.read_text()
        assert "DRIFTED" in page and ">c<" in page
    finally:
        gateway.stop()
    # a served artifact whose bytes change is refused at the next start
    joblib.dump(LogisticRegression().fit(*data(100, 9)), repo / "m" / "2" / "model.joblib")
    gateway = GatewayProcess(repo, tmp_path / "data")
    try:
        with ControlClient(gateway.target) as control, Client(gateway.target) as client:
            assert control.deployment("m")["primary"] == "1"
            with pytest.raises(Exception, match="version"):
                client.infer("m", {"input": data(2, 0)[0]}, version="2")
    finally:
        gateway.stop()


VALIDATED = (
    YAML
    + """
validation: {holdout: holdout.csv, min_accuracy: 0.9}
"""
)


def test_validation_gates_shadow_and_promotion(tmp_path: Path, strong: Path) -> None:
    repo = tmp_path / "models"
    build(repo, VALIDATED)
    write_csv(repo / "m" / "holdout.csv", *data(300, 5))
    gateway = GatewayProcess(repo, tmp_path / "data")
    try:
        with ControlClient(gateway.target) as control:
            control.register("m", strong)
            with pytest.raises(FailedPrecondition, match="has not passed validation"):
                control.deploy("m", "1", shadows={"2": 1.0}, reason="not validated yet")
            weak = control.validate("m", "1")
            assert not weak["passed"] and weak["checks"][0]["value"] < 0.9
            result = control.validate("m", "2")
            assert result["passed"], result
            control.deploy("m", "1", shadows={"2": 1.0}, reason="validated")
            control.promote("m", "2", reason="ok")
            entries = control.history("m")
            validations = [e for e in entries if e["kind"] == "validation"]
            assert [(e["version"], e["details"]["passed"]) for e in validations] == [
                ("1", False), ("2", True),
            ]  # fmt: skip
            assert entries[-1]["kind"] == "promotion" and entries[-1]["version"] == "2"
    finally:
        gateway.stop()


def test_register_creates_a_model_the_gateway_did_not_serve(tmp_path: Path, strong: Path) -> None:
    repo = tmp_path / "models"
    build(repo, YAML)
    gateway = GatewayProcess(repo, tmp_path / "data")
    try:
        with ControlClient(gateway.target) as control, Client(gateway.target) as client:
            garbage = tmp_path / "garbage.joblib"
            garbage.write_bytes(b"not a pickle")
            with pytest.raises(InvalidArgument, match="does not load"):
                control.register("fresh", garbage)
            assert not (repo / "fresh").exists()
            with pytest.raises(InvalidArgument, match="not valid"):
                control.register("../escape", strong)
            record = control.register("fresh", strong, metadata={"author": "ana"})
            assert (record["version"], record["role"]) == ("1", "primary")
            x, _ = data(3, 0)
            assert client.infer("fresh", {"input": x}).version == "1"
            assert control.deployment("fresh")["primary"] == "1"
            assert [e["kind"] for e in control.history("fresh")] == ["registration"]
        # --data: the training data's fingerprint is computed, and it is drift's reference
        x, y = data(600, 7)
        train = tmp_path / "train.csv"
        lines = ["a,b,c,ts,label"] + [
            f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},2026-11-{1 + i % 20:02d},{y[i]}"
            for i, r in enumerate(x)
        ]  # fmt: skip
        train.write_text("\n".join(lines) + "\n")
        body = cli_json("register", "fresh", "--artifact", str(strong), "--data", str(train),
                        "--time-column", "ts", "--target", gateway.target)  # fmt: skip
        fingerprint = body["data"]
        assert fingerprint["rows"] == 600 and fingerprint["file"] == "train.csv"
        assert fingerprint["time_range"] == ["2026-11-01", "2026-11-20"]
        assert {c["name"]: c["type"] for c in fingerprint["columns"]}["ts"] == "categorical"
        with ControlClient(gateway.target) as control:
            drift = control.drift("fresh", "2")  # a reference without the time column
            assert [f["feature"] for f in drift["features"]] == ["a", "b", "c"]
    finally:
        gateway.stop()
    # after a restart it is an ordinary model of the repository
    gateway = GatewayProcess(repo, tmp_path / "data")
    try:
        with ControlClient(gateway.target) as control:
            assert sorted(v["version"] for v in control.versions("fresh")) == ["1", "2"]
            kinds = [e["kind"] for e in control.history("fresh")]
            assert kinds == ["registration", "registration", "reference"]
    finally:
        gateway.stop()


def test_code_ref_is_the_commit_and_says_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True,
                              text=True, check=True)  # fmt: skip
        return done.stdout.strip()

    assert provenance.code_ref(tmp_path) is None  # not a repository
    git("init", "-q")
    (tmp_path / "train.py").write_text("print('train')\n")
    git("add", "train.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert provenance.code_ref(tmp_path) == head
    (tmp_path / "train.py").write_text("print('changed')\n")
    assert provenance.code_ref(tmp_path) == head + "-dirty"


def test_a_registration_whose_client_gave_up_completes(tmp_path: Path, strong: Path) -> None:
    """The client's deadline passes while the new version's runner starts (grpc.aio then
    cancels the handler): the registration still completes, so that no half of it (a
    record without its directory, or the reverse) blocks the next one's number."""
    repo = tmp_path / "models"
    build(repo, YAML)
    gateway = GatewayProcess(repo, tmp_path / "data")
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            request = cpb.RegisterRequest(
                model="m", artifact_name="model.joblib", artifact=strong.read_bytes(),
                metadata_json="{}", reason="impatient",
            )  # fmt: skip
            with pytest.raises(grpc.RpcError) as gave_up:
                cpb_grpc.GovernanceStub(channel).Register(request, timeout=0.2)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with ControlClient(gateway.target) as control:
            deadline = time.monotonic() + 60
            while [v["version"] for v in control.versions("m")] != ["1", "2"]:
                assert time.monotonic() < deadline, "the registration never completed"
                time.sleep(0.2)
            assert control.register("m", strong)["version"] == "3"
            assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "3", "model.yaml"]
            x, _ = data(2, 0)
            with Client(gateway.target) as client:
                assert client.infer("m", {"input": x}, version="2").version == "2"
    finally:
        gateway.stop()


def test_an_auto_numbered_version_skips_numbers_taken_elsewhere(tmp_path: Path) -> None:
    """The number comes from this process's view of the model, but a directory another
    process made since, or a record whose directory is gone, keeps theirs."""
    model = ModelEntry("m", tmp_path, ModelConfig(), {}, primary="")
    (tmp_path / "\u00b2").mkdir()  # "²" is a digit to str.isdigit, not a number to int()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("taken by another process\n")
    first = registry.stage(model, None, "model.py", b"A = 1\n", ["2"])
    assert (first.version, first.artifact.read_bytes()) == ("3", b"A = 1\n")
    second = registry.stage(model, None, "model.py", b"A = 2\n")
    assert second.version == "4"
    with pytest.raises(AlreadyExists):
        registry.stage(model, "3", "model.py", b"A = 3\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "3", "4", "\u00b2"]  # no temp
