"""The control API's refusals, a stalled or crashing shadow, and SIGTERM under load."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest

from greenroom_client.control import ControlClient
from greenroom_client.errors import GreenroomError, InvalidArgument, NotFound
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.models import churn_data
from tests.test_external_and_cli import greenroom
from tests.test_gateway import outputs, request


@pytest.fixture
def churn_gateway(repo: Path, tmp_path: Path) -> Any:
    models = tmp_path / "models"
    models.mkdir()
    (models / "churn").symlink_to(repo / "churn")
    gateway = GatewayProcess(models, tmp_path / "data", env={"GREENROOM_SHADOW_LIMIT": "4"})
    try:
        yield gateway
    finally:
        gateway.stop()


def refused(call: Any, kind: type[GreenroomError], *words: str) -> None:
    with pytest.raises(kind) as info:
        call()
    for word in words:
        assert word in info.value.message, info.value.message


def test_bad_control_input_changes_nothing(churn_gateway: GatewayProcess, tmp_path: Path) -> None:
    with ControlClient(churn_gateway.target) as control:
        before = control.deploy("churn", "1", shadows={"2": 0.5}, reason="start")
        history = control.history("churn")
        deploy = functools.partial(control.deploy, reason="bad on purpose")
        refused(lambda: deploy("nope", "1"), NotFound, "model 'nope'")
        refused(lambda: deploy("churn", "9"), NotFound, "no version '9'")
        refused(lambda: deploy("churn", "1", shadows={"2": 1.5}), InvalidArgument,
                "shadow 2 fraction must be between 0 and 1")  # fmt: skip
        refused(lambda: deploy("churn", "1", canary=("2", -0.1)), InvalidArgument,
                "canary 2 weight")  # fmt: skip
        refused(lambda: deploy("churn", "1", shadows={"1": 1.0}), InvalidArgument,
                "version 1 of model 'churn' has more than one role")  # fmt: skip
        refused(lambda: control.promote("churn", "7", "why not"), NotFound, "no version '7'")
        refused(lambda: control.promote("churn", "2", ""), InvalidArgument, "needs a reason")
        refused(lambda: control.decide("churn", "1"), InvalidArgument, "already the primary")
        refused(lambda: control.promote("churn", "1", "again"), InvalidArgument,
                "version 1 is already the primary of 'churn'")  # fmt: skip
        refused(lambda: control.decide("churn", ""), InvalidArgument, "candidate is empty")
        window = "since_seconds must be 0 (all time) or a positive number"
        for since in (-1.0, float("nan"), float("inf")):
            refused(
                functools.partial(control.decide, "churn", "2", since_seconds=since),
                InvalidArgument, window,
            )  # fmt: skip
            refused(
                functools.partial(control.report, "churn", since_seconds=since),
                InvalidArgument, window,
            )  # fmt: skip
        refused(lambda: control.feedback("churn", [("", 0, "1")]), InvalidArgument, "request_id")
        refused(lambda: control.feedback("nope", [("a", 0, "1")]), NotFound, "model 'nope'")
        assert control.deployment("churn") == before
        assert control.history("churn") == history
        assert control.report("churn")["versions"][0]["labelled"] == 0

    bad = tmp_path / "labels.csv"
    bad.write_text("request_id,row,label\nr-1,0,1\nr-2,minus one,0\n")
    done = greenroom("feedback", "churn", "--file", str(bad), "--target", churn_gateway.target)
    assert done.returncode == 1 and "labels.csv:3: row must be an integer" in done.stderr
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text('{"request_id": "r-1", "label": "1"}\n{"request_id": "r-2", "label"\n')
    done = greenroom("feedback", "churn", "--file", str(jsonl), "--target", churn_gateway.target)
    assert done.returncode == 1 and "labels.jsonl:2: not JSON" in done.stderr
    headless = tmp_path / "headless.csv"
    headless.write_text("id,truth\nr-1,1\n")
    done = greenroom("feedback", "churn", "--file", str(headless), "--target", churn_gateway.target)
    assert done.returncode == 1 and "csv header needs request_id,row,label" in done.stderr
    with ControlClient(churn_gateway.target) as control:
        report = control.report("churn")
    assert all(v["labelled"] == 0 for v in report["versions"])


def test_a_deployment_change_without_a_reason_changes_nothing(
    churn_gateway: GatewayProcess,
) -> None:
    """SetDeployment, like Promote, is refused without a reason (or with only blanks):
    the history records why every change was made. Nothing is saved or put in force, and
    the CLI will not send such a change at all."""
    target = churn_gateway.target
    with ControlClient(target) as control:
        before = control.deployment("churn")
        history = control.history("churn")
        for reason in ("", "  "):
            change = functools.partial(control.deploy, "churn", "1", shadows={"2": 1.0})
            refused(functools.partial(change, reason=reason), InvalidArgument,
                    "a deployment change needs a reason")  # fmt: skip
            refused(functools.partial(control.promote, "churn", "2", reason), InvalidArgument,
                    "a promotion needs a reason")  # fmt: skip
        assert control.deployment("churn") == before
        assert control.history("churn") == history
    done = greenroom("deploy", "churn", "--primary", "1", "--shadow", "2:1.0", "--target", target)
    assert done.returncode == 2 and "the following arguments are required: --reason" in done.stderr
    with ControlClient(target) as control:
        assert control.history("churn") == history


def _timed_calls(target: str, rows: np.ndarray, n: int) -> list[tuple[float, object]]:
    """n single-row requests; (seconds, answer or status) each."""
    results: list[tuple[float, object]] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(n):
            began = time.monotonic()
            try:
                reply = stub.ModelInfer(request("churn", {"input": rows[i : i + 1]}), timeout=5)
                results.append((time.monotonic() - began, int(outputs(reply)["label"][0])))
            except grpc.RpcError as error:
                results.append((time.monotonic() - began, error.code()))
    return results


@pytest.mark.parametrize("trouble", ["SIGSTOP", "SIGKILL"])
def test_stalled_or_crashing_shadow_never_touches_the_primary(
    churn_gateway: GatewayProcess, repo: Path, trouble: str
) -> None:
    x, _ = churn_data()
    primary = joblib.load(repo / "churn" / "1" / "model.joblib")
    with ControlClient(churn_gateway.target) as control:
        control.deploy("churn", "1", shadows={"2": 1.0}, reason="watch v2")
    shadow_pid = churn_gateway.runner_pids()["churn/2"]
    os.kill(shadow_pid, getattr(signal, trouble))
    try:
        results = _timed_calls(churn_gateway.target, x, 200)
    finally:
        if trouble == "SIGSTOP":
            os.kill(shadow_pid, signal.SIGCONT)
    assert [answer for _, answer in results] == list(primary.predict(x[:200]))
    # A primary that waited on its shadow would take the shadow's 5 s deadline.
    assert max(seconds for seconds, _ in results) < 2.5
    with ControlClient(churn_gateway.target) as control:
        report = control.report("churn")
    drops = report["ledger"]["shadow_drops"]["2"]
    shadow = next(v for v in report["versions"] if v["version"] == "2")
    if trouble == "SIGSTOP":
        # Four copies hang until their deadline; every later one is dropped and counted.
        assert drops >= 190
    else:
        assert shadow["errors"] > 0  # the copies that failed are recorded as failures


def test_sigterm_under_load_loses_no_answered_prediction(repo: Path, tmp_path: Path) -> None:
    gateway = GatewayProcess(repo, tmp_path / "data")
    x, _ = churn_data()
    answered: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            i = 0
            while not stop.is_set():
                rid = f"c{k}-{i}"
                try:
                    stub.ModelInfer(request("churn", {"input": x[i % 100 : i % 100 + 1]}, id=rid))
                    answered.append(rid)
                except grpc.RpcError:
                    pass
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    assert gateway.stop() == 0
    stop.set()
    for thread in threads:
        thread.join()
    assert len(answered) > 100
    with sqlite3.connect(tmp_path / "data" / "ledger.db") as db:
        recorded = {row[0] for row in db.execute("SELECT request_id FROM answers")}
    missing = set(answered) - recorded
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions not in the ledger"


def test_unary_feedback_for_an_unseen_id_joins_when_the_answer_comes(
    churn_gateway: GatewayProcess,
) -> None:
    x, _ = churn_data()
    with grpc.insecure_channel(churn_gateway.target) as channel:
        feedback = cpb_grpc.FeedbackStub(channel)
        batch = cpb.FeedbackBatch(
            model="churn", items=[cpb.FeedbackItem(request_id="late", label="1")]
        )
        first = feedback.SendFeedback(batch)
        assert (first.accepted, first.matched, first.unmatched) == (1, 0, 1)
        again = feedback.SendFeedback(batch)
        assert again.duplicates == 1
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request("churn", {"input": x[:1]}, id="late")
        )
    with ControlClient(churn_gateway.target) as control:
        primary = control.report("churn")["versions"][0]
    assert (primary["version"], primary["predictions"], primary["labelled"]) == ("1", 1, 1)
