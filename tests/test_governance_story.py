"""The issue's story end to end on a real gateway: a stream whose distribution shifts
halfway. Drift is flagged on the shifted feature only; accuracy falls; the threshold
trigger retrains; the new version passes validation, is shadowed, wins ``decide`` and is
promoted; and the journal tells the whole story."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from greenroom_client import Client
from greenroom_client.control import ControlClient
from tests.conftest import GatewayProcess
from tests.test_external_and_cli import greenroom
from tests.test_governance import send, write_csv
from tests.test_shadow_e2e import cli_json

TRAIN = """
import csv, json, sys
from pathlib import Path
import joblib, numpy as np
from sklearn.linear_model import LogisticRegression
rows = list(csv.reader(open(sys.argv[1])))[1:]
x = np.array([[float(v) for v in r[:3]] for r in rows[-600:]], dtype=np.float32)
y = np.array([int(r[3]) for r in rows[-600:]])
model = LogisticRegression().fit(x, y)
joblib.dump(model, Path(sys.argv[2]) / "model.joblib")
(Path(sys.argv[2]) / "metrics.json").write_text(json.dumps({"train_accuracy": model.score(x, y)}))
"""

YAML = """
features: [a, b, c]
monitoring: {input_sample_rate: 1.0, drift_window: 600}
validation: {holdout: holdout.csv, min_accuracy: 0.85}
retraining:
  command: [PYTHON, train.py, "{dataset}", "{output}"]
  triggers: {min_accuracy: 0.8, last_labels: 300}
  check_interval_s: 0.5
  timeout_s: 120
promotion: {max_p99_ratio: null}
"""


def phase(n: int, seed: int, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Before: label = a + b > 0. After: c moves by +3 and the label follows a + (c - 3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    if not shifted:
        return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    x[:, 2] += 3
    return x, (x[:, 0] + x[:, 2] - 3 > 0).astype(np.int64)


def build(repo: Path) -> None:
    model_dir = repo / "m"
    (model_dir / "1").mkdir(parents=True)
    joblib.dump(LogisticRegression().fit(*phase(2000, 0, False)), model_dir / "1" / "model.joblib")
    (model_dir / "model.yaml").write_text(YAML.replace("PYTHON", sys.executable))
    (model_dir / "train.py").write_text(TRAIN)
    write_csv(model_dir / "holdout.csv", *phase(400, 1, True))


def wait_for(predicate, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError("timed out")


def test_drift_retrain_validate_shadow_decide_promote(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build(repo)
    gateway = GatewayProcess(repo, tmp_path / "data")
    try:
        with ControlClient(gateway.target) as control, Client(gateway.target) as client:
            # the old world; version 1 was validated before it went live
            assert control.validate("m", "1")["passed"] is False  # the holdout is the new world
            send(client, *phase(800, 2, False), control)
            before = control.report("m")["versions"][0]["accuracy"]
            assert before > 0.95
            assert control.freeze_reference("m")["rows"] == 600
            assert not control.drift("m")["drifted"]
            # the world shifts
            send(client, *phase(800, 3, True), control)
            drift = control.drift("m")
            assert {f["feature"] for f in drift["features"] if f["drifted"]} == {"c"}
            recent = control.report("m", since_seconds=0)["versions"][0]
            assert recent["accuracy"] < before - 0.1  # accuracy fell
            # the trigger retrains, validates and shadows the new version
            finished = wait_for(lambda: [
                e for e in control.history("m")
                if e["kind"] == "retraining" and e["details"]["event"] in ("finished", "failed")
            ])  # fmt: skip
            run = finished[0]["details"]
            assert run["outcome"] == "deployed", run
            assert run["trigger"] == "trigger" and "accuracy" in run["cause"]
            assert control.deployment("m")["shadows"] == [{"version": "2", "fraction": 1.0}]
            record = {v["version"]: v for v in control.versions("m")}["2"]
            assert record["author"] == "retraining" and record["parent"] == "1"
            assert record["data"]["rows"] == 1600 and record["metrics"]["train_accuracy"] > 0.9
            # live evidence, then the promotion test, then the promotion
            send(client, *phase(600, 4, True), control)
            decision = cli_json("decide", "m", "--candidate", "2", "--target", gateway.target)
            assert decision["decision"] == "promote", decision
            control.promote("m", "2", reason="; ".join(decision["reasons"]))
            assert control.deployment("m")["primary"] == "2"
            story = [(e["kind"], e["version"]) for e in control.history("m")]
            # `greenroom retrain` runs the same policy now and answers when it ends
            manual = greenroom("retrain", "m", "--reason", "new labels", "--json",
                               "--target", gateway.target)  # fmt: skip
            assert manual.returncode == 0, manual.stderr
            outcome = json.loads(manual.stdout)
            assert (outcome["outcome"], outcome["version"]) == ("deployed", "3"), outcome
            assert control.deployment("m")["shadows"][-1] == {"version": "3", "fraction": 1.0}
    finally:
        gateway.stop()
    expected = [
        ("registration", "1"),  # found in the repository at the first start
        ("validation", "1"),
        ("reference", "1"),
        ("retraining", None),  # started, by the trigger
        ("registration", "2"),
        ("reference", "2"),  # the training data
        ("validation", "2"),
        ("deployment", "2"),  # as a shadow
        ("retraining", "2"),  # finished
        ("promotion", "2"),
    ]
    assert story == expected, story
