"""``greenroom serve --workers 2``: two gateway processes on one port, one ledger.

Each inference response names the worker that answered in its ``x-greenroom-worker``
trailing metadata (``<index>/<pid>``); the tests open channels with their own
connections (a local subchannel pool: by default gRPC Python shares one connection
between channels to the same target) so that the kernel can send each to either worker.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import joblib
import numpy as np
import psutil
import pytest
import sqlalchemy as sa

from greenroom_client.control import report_dict
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GREENROOM, GatewayProcess, pid_alive
from tests.models import churn_data
from tests.pg import Cluster
from tests.test_gateway import outputs, request

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
SHADOW_LIMIT = 2


def channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=OWN_CONNECTION)


def infer(ch: grpc.Channel, message: pb.ModelInferRequest) -> tuple[pb.ModelInferResponse, str]:
    """The answer, and the worker that gave it (``<index>/<pid>``)."""
    reply, call = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer.with_call(message, timeout=30)
    return reply, dict(call.trailing_metadata())["x-greenroom-worker"]


def worker_pids(gateway: GatewayProcess) -> dict[int, int]:
    """Worker processes by index, read from their command lines."""
    pids = {}
    for child in psutil.Process(gateway.pid).children():
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "gateway.worker" in cmd:
            pids[int(cmd[cmd.index("--index") + 1])] = child.pid
    return pids


def one_channel_per_worker(
    target: str, x: np.ndarray, model: str = "churn", version: str = ""
) -> dict[str, grpc.Channel]:
    """Fresh connections until each worker holds one: worker index -> channel. With a
    ``version``, every answer must come from it."""
    found: dict[str, grpc.Channel] = {}
    for _ in range(100):
        ch = channel(target)
        reply, worker = infer(ch, request(model, {"input": x[:1]}, model_version=version))
        assert not version or reply.model_version == version
        index = worker.split("/")[0]
        if index in found:
            ch.close()
            continue
        found[index] = ch
        if len(found) == 2:
            return found
    raise AssertionError(f"100 connections all went to worker(s) {sorted(found)}")


@pytest.fixture(scope="module")
def models(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workers-models")
    (path / "churn").symlink_to(repo / "churn")
    return path


@pytest.fixture(scope="module")
def gateway(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # A slow ledger writer: answers wait up to 2 s in a worker's queue, so reading another
    # worker's answers at once needs the flush the workers ask of each other.
    env = {
        "GREENROOM_WORKERS": "2",
        "GREENROOM_LEDGER_FLUSH_INTERVAL_S": "2.0",
        "GREENROOM_SHADOW_LIMIT": str(SHADOW_LIMIT),
        "GREENROOM_SHADOW_DEADLINE_S": "30",
    }
    process = GatewayProcess(models, tmp_path_factory.mktemp("workers-data"), env=env)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def workers(gateway: GatewayProcess) -> Iterator[dict[str, grpc.Channel]]:
    x, _ = churn_data()
    found = one_channel_per_worker(gateway.target, x)
    try:
        yield found
    finally:
        for ch in found.values():
            ch.close()


def deploy(ch: grpc.Channel, primary: str, shadows: dict[str, float], reason: str) -> None:
    spec = cpb.Deployment(model="churn", primary=primary)
    spec.shadows.extend(cpb.Shadow(version=v, fraction=f) for v, f in shadows.items())
    cpb_grpc.DeploymentsStub(ch).SetDeployment(
        cpb.SetDeploymentRequest(deployment=spec, reason=reason), timeout=30
    )


def test_connections_spread_over_workers_every_answer_right_and_recorded_once(
    gateway: GatewayProcess, repo: Path
) -> None:
    x, _ = churn_data()
    primary = joblib.load(repo / "churn" / "1" / "model.joblib")
    assert len(worker_pids(gateway)) == 2

    def one(k: int) -> tuple[str, np.ndarray]:
        with channel(gateway.target) as ch:
            reply, worker = infer(ch, request("churn", {"input": x[k : k + 3]}, id=f"spread-{k}"))
        assert reply.id == f"spread-{k}" and reply.model_version == "1"
        return worker, outputs(reply)["label"]

    n = 60
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(n)))
    by_worker = Counter(worker for worker, _ in results)
    assert {w.split("/")[0] for w in by_worker} == {"0", "1"}, by_worker
    assert {int(w.split("/")[1]) for w in by_worker} == set(worker_pids(gateway).values())
    for k, (_, labels) in enumerate(results):
        np.testing.assert_array_equal(labels, primary.predict(x[k : k + 3]))

    # A report through any worker has every worker write what it holds first.
    with channel(gateway.target) as ch:
        cpb_grpc.EvaluationStub(ch).Report(cpb.ReportRequest(model="churn"), timeout=30)
    with sqlite3.connect(gateway.data_dir / "ledger.db") as db:
        counts = dict(
            db.execute(
                "SELECT request_id, count(*) FROM answers "
                "WHERE request_id LIKE 'spread-%' GROUP BY request_id"
            ).fetchall()
        )
    assert counts == {f"spread-{k}": 1 for k in range(n)}


def test_deploy_through_one_worker_routes_every_worker_at_once(
    workers: dict[str, grpc.Channel],
) -> None:
    x, _ = churn_data()
    a, b = workers["0"], workers["1"]
    history = cpb_grpc.DeploymentsStub(a).GetHistory(cpb.GetHistoryRequest(model="churn"))
    before = len(history.entries)
    try:
        deploy(a, "2", {}, "v2 through worker 0")
        # No wait: the change is applied in every worker before deploy answers.
        reply, worker = infer(b, request("churn", {"input": x[:2]}))
        assert worker.startswith("1/") and reply.model_version == "2"
        got = cpb_grpc.DeploymentsStub(b).GetDeployment(cpb.GetDeploymentRequest(model="churn"))
        assert got.primary == "2"
        deploy(b, "1", {}, "back to v1 through worker 1")
        reply, worker = infer(a, request("churn", {"input": x[:2]}))
        assert worker.startswith("0/") and reply.model_version == "1"
    finally:
        deploy(a, "1", {}, "tidy up")
    for ch in (a, b):
        history = cpb_grpc.DeploymentsStub(ch).GetHistory(cpb.GetHistoryRequest(model="churn"))
        reasons = [e.reason for e in history.entries[before:]]
        assert reasons == ["v2 through worker 0", "back to v1 through worker 1", "tidy up"]


def test_feedback_and_report_through_one_worker_see_the_others_answers(
    workers: dict[str, grpc.Channel], repo: Path
) -> None:
    x, y = churn_data()
    primary = joblib.load(repo / "churn" / "1" / "model.joblib")
    served, asked = workers["0"], workers["1"]
    report = report_dict(
        cpb_grpc.EvaluationStub(asked).Report(cpb.ReportRequest(model="churn"), timeout=30)
    )
    labelled_before = next(v for v in report["versions"] if v["version"] == "1")["labelled"]
    n = 25
    for k in range(n):
        reply, worker = infer(served, request("churn", {"input": x[k : k + 1]}, id=f"fb-{k}"))
        assert worker.startswith("0/")
        assert outputs(reply)["label"][0] == primary.predict(x[k : k + 1])[0]
    # At once, through the other worker: the answers are still in worker 0's queue.
    batch = cpb.FeedbackBatch(model="churn")
    batch.items.extend(
        cpb.FeedbackItem(request_id=f"fb-{k}", row=0, label=str(y[k])) for k in range(n)
    )
    result = cpb_grpc.FeedbackStub(asked).SendFeedback(batch, timeout=30)
    assert (result.accepted, result.matched, result.unmatched) == (n, n, 0)
    report = report_dict(
        cpb_grpc.EvaluationStub(asked).Report(cpb.ReportRequest(model="churn"), timeout=30)
    )
    v1 = next(v for v in report["versions"] if v["version"] == "1")
    assert v1["labelled"] == labelled_before + n
    assert report["ledger"]["queued"] == 0


def test_shadow_drops_are_summed_over_workers(
    gateway: GatewayProcess, workers: dict[str, grpc.Channel]
) -> None:
    x, _ = churn_data()
    deploy(workers["0"], "1", {"2": 1.0}, "watch v2")
    shadow = gateway.runner_pids()["churn/2"]
    os.kill(shadow, signal.SIGSTOP)  # its copies hang: SHADOW_LIMIT per worker, then drops
    per_worker = 6
    try:
        for index, ch in workers.items():
            for k in range(per_worker):
                _, worker = infer(ch, request("churn", {"input": x[k : k + 1]}))
                assert worker.startswith(f"{index}/")
        report = report_dict(
            cpb_grpc.EvaluationStub(workers["1"]).Report(
                cpb.ReportRequest(model="churn"), timeout=30
            )
        )
    finally:
        os.kill(shadow, signal.SIGCONT)
        deploy(workers["0"], "1", {}, "stop watching")
    assert report["ledger"]["shadow_drops"]["2"] == 2 * (per_worker - SHADOW_LIMIT)


def _descendants(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def test_killed_worker_is_restarted_and_sigterm_leaves_no_process(
    models: Path, tmp_path: Path, repo: Path
) -> None:
    x, _ = churn_data()
    primary = joblib.load(repo / "churn" / "1" / "model.joblib")
    gateway = GatewayProcess(models, tmp_path / "data", "--workers", "2")
    try:
        before = worker_pids(gateway)
        assert len(before) == 2
        os.kill(before[1], signal.SIGKILL)
        # Service goes on meanwhile, over fresh connections.
        deadline = time.monotonic() + 60
        seen: set[str] = set()
        while time.monotonic() < deadline:
            with channel(gateway.target) as ch:
                try:
                    reply, worker = infer(ch, request("churn", {"input": x[:4]}))
                except grpc.RpcError as exc:  # a connection the dead worker had accepted
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    continue
            np.testing.assert_array_equal(outputs(reply)["label"], primary.predict(x[:4]))
            seen.add(worker)
            after = worker_pids(gateway)
            if after.get(1) not in (None, before[1]) and f"1/{after[1]}" in seen:
                break
        else:
            raise AssertionError(f"worker 1 was not back in time (answers from {seen})")
        assert after[0] == before[0]
        # The supervisor's runners serve every worker: one process per version, its children.
        runners = gateway.runner_pids()
        assert sorted(runners) == ["churn/1", "churn/2"]
        children = {p.pid for p in psutil.Process(gateway.pid).children()}
        assert set(runners.values()) <= children
        everything = [gateway.pid, *_descendants(gateway.pid)]
    finally:
        code = gateway.stop()
    assert code == 0
    assert [pid for pid in everything if pid_alive(pid)] == []


def test_workers_share_a_postgresql_ledger(
    models: Path, tmp_path: Path, pg_cluster: Cluster
) -> None:
    """The same guarantees with PostgreSQL: every answer once, truth through either worker."""
    x, y = churn_data()
    url = pg_cluster.create_database()
    env = {"GREENROOM_LEDGER_FLUSH_INTERVAL_S": "2.0"}
    gateway = GatewayProcess(
        models, tmp_path / "data", "--workers", "2", "--database-url", url, env=env
    )
    try:
        found = one_channel_per_worker(gateway.target, x)
        n = 20
        for k in range(n):
            infer(found[str(k % 2)], request("churn", {"input": x[k : k + 1]}, id=f"pg-{k}"))
        deploy(found["1"], "2", {}, "v2 on postgresql")
        assert infer(found["0"], request("churn", {"input": x[:1]}))[0].model_version == "2"
        batch = cpb.FeedbackBatch(model="churn")
        batch.items.extend(
            cpb.FeedbackItem(request_id=f"pg-{k}", row=0, label=str(y[k])) for k in range(n)
        )
        result = cpb_grpc.FeedbackStub(found["0"]).SendFeedback(batch, timeout=30)
        assert (result.matched, result.unmatched) == (n, 0)
        for ch in found.values():
            ch.close()
    finally:
        assert gateway.stop() == 0
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT request_id, count(*) FROM answers "
                "WHERE request_id LIKE 'pg-%' GROUP BY request_id"
            )
        ).all()
        history = connection.execute(sa.text("SELECT count(*) FROM deployment_history")).scalar()
    engine.dispose()
    assert dict((r[0], r[1]) for r in rows) == {f"pg-{k}": 1 for k in range(n)}
    assert history == 1


def test_a_busy_port_is_an_error_before_any_runner_starts(models: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [*GREENROOM, "serve", "--repo", str(models), "--port", port, "--workers", "2",
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "runner state" not in done.stderr  # no runner was started
    assert "GREENROOM_GATEWAY_LISTENING" not in done.stdout
