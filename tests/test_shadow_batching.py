"""Merged shadow copies: which copies merge, the merged request, the windows, and end to
end each copy's own rows of the merged answer in the ledger."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from gateway.shadow import Copy, ShadowFanout, batched, merge_key, merged_request
from greenroom_client import Client
from greenroom_client.control import ControlClient
from greenroom_client.tensors import TensorSpec, decode, encode
from greenroom_proto.inference import grpc_service_pb2 as pb
from tests.conftest import GatewayProcess
from tests.models import churn_data


def _request(rows: np.ndarray, raw: bool = True, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id=request_id)
    encode(request.inputs, request.raw_input_contents, {"input": rows}, raw)
    return request


def _copy(rows: np.ndarray, request_id: str) -> Copy:
    request = _request(rows, request_id=request_id)
    key, count = merge_key(request)
    return Copy(request, request_id, request.SerializeToString(), key, count)


def test_which_requests_may_merge() -> None:
    four = np.ones((4, 3), np.float32)
    key, rows = merge_key(_request(four))
    assert key is not None and rows == 4
    assert merge_key(_request(np.ones((2, 3), np.float32)))[0] == key
    assert merge_key(_request(np.ones((2, 5), np.float32)))[0] != key  # other width
    assert merge_key(_request(four, raw=False)) == (None, 0)  # typed contents
    with_params = _request(four)
    with_params.parameters["priority"].int64_param = 1
    assert merge_key(with_params) == (None, 0)
    uneven = _request(four)
    uneven.inputs.add(name="other", datatype="FP32", shape=[3, 1])
    uneven.raw_input_contents.append(np.ones((3, 1), np.float32).tobytes())
    assert merge_key(uneven) == (None, 0)
    assert batched([TensorSpec("input", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,))])
    assert not batched([TensorSpec("input", "FP32", (1, 3))])


def test_merged_request_holds_every_copy_in_order() -> None:
    parts = [np.arange(i, i + 3 * n, dtype=np.float32).reshape(n, 3) for i, n in ((0, 1), (9, 2))]
    copies = [_copy(part, f"r{i}") for i, part in enumerate(parts)]
    merged = pb.ModelInferRequest.FromString(merged_request(copies, "batch"))
    assert merged.id == "batch" and list(merged.inputs[0].shape) == [3, 3]
    assert np.array_equal(
        decode(merged.inputs, merged.raw_input_contents)["input"], np.vstack(parts)
    )


def _run_fanout(fanout: ShadowFanout, copies: list[Copy], gap_s: float = 0.0) -> list[list[str]]:
    calls: list[list[str]] = []

    async def send(version: str, batch: Sequence[Copy], timeout: float) -> None:
        calls.append([c.request_id for c in batch])

    async def main() -> None:
        for copy in copies:
            fanout.fan_out("m", ["2"], copy, send, lambda version: True)
            if gap_s:
                await asyncio.sleep(gap_s)
        await fanout.drain(timeout=5)

    asyncio.run(main())
    return calls


def test_copies_within_the_window_go_together_up_to_max_rows() -> None:
    copies = [_copy(np.ones((2, 3), np.float32), f"r{i}") for i in range(5)]
    calls = _run_fanout(ShadowFanout(limit=64, deadline_s=1, window_s=10, max_rows=4), copies)
    assert calls == [["r0", "r1"], ["r2", "r3"], ["r4"]]  # the last one flushed by drain
    lone = _run_fanout(ShadowFanout(limit=64, deadline_s=1, window_s=0), copies)
    assert lone == [[f"r{i}"] for i in range(5)]


def test_a_different_layout_flushes_the_window() -> None:
    copies = [
        _copy(np.ones((1, 3), np.float32), "a"),
        _copy(np.ones((1, 4), np.float32), "b"),
        _copy(np.ones((1, 4), np.float32), "c"),
    ]
    calls = _run_fanout(ShadowFanout(limit=64, deadline_s=1, window_s=10), copies)
    assert calls == [["a"], ["b", "c"]]


def test_the_window_times_out() -> None:
    copies = [_copy(np.ones((1, 3), np.float32), f"r{i}") for i in range(3)]
    calls = _run_fanout(ShadowFanout(limit=64, deadline_s=1, window_s=0.01), copies, gap_s=0.05)
    assert calls == [["r0"], ["r1"], ["r2"]]


def test_queued_copies_count_against_the_limit() -> None:
    fanout = ShadowFanout(limit=3, deadline_s=1, window_s=10)
    copies = [_copy(np.ones((1, 3), np.float32), f"r{i}") for i in range(5)]
    calls = _run_fanout(fanout, copies)
    assert calls == [["r0", "r1", "r2"]]
    lane = fanout.lane("m", "2")
    assert (lane.sent, lane.dropped, lane.completed, lane.in_flight) == (3, 2, 3, 0)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    repo = tmp_path_factory.mktemp("shadow-batch")
    x, y = churn_data()
    models = {
        "1": LogisticRegression(max_iter=500).fit(x, y),
        "2": DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y),
    }
    for version, model in models.items():
        (repo / "churn" / version).mkdir(parents=True)
        joblib.dump(model, repo / "churn" / version / "model.joblib")
    (repo / "churn" / "model.yaml").write_text('primary: "1"\n')
    # A long window, so that concurrent copies surely merge; debug logs say when they do.
    env = {
        "GREENROOM_SHADOW_BATCH_WINDOW_MS": "50",
        "GREENROOM_SHADOW_BATCH_ROWS": "16",
        "GREENROOM_LOG_LEVEL": "debug",
        "GREENROOM_LOG_FORMAT": "json",
    }
    data = tmp_path_factory.mktemp("shadow-batch-data")
    return GatewayProcess(repo, data, env=env, log_path=data / "gateway.log")


def test_each_copy_gets_its_own_rows_of_a_merged_answer(gateway: GatewayProcess) -> None:
    x, _ = churn_data()
    shadow = joblib.load(gateway.repo / "churn" / "2" / "model.joblib")
    sizes = [1 + i % 4 for i in range(80)]
    starts = np.cumsum([0, *sizes[:-1]])
    try:
        with ControlClient(gateway.target) as control:
            control.deploy("churn", "1", shadows={"2": 1.0}, reason="merged copies")
            with Client(gateway.target, timeout=10.0) as client, ThreadPoolExecutor(12) as pool:
                list(pool.map(
                    lambda i: client.infer(
                        "churn", {"input": x[starts[i] : starts[i] + sizes[i]]}, request_id=f"q{i}"
                    ),
                    range(len(sizes)),
                ))  # fmt: skip
            # The shadow's own answers as truth: its accuracy is 1 only if every copy's
            # recorded rows are that copy's.
            truth = [
                (f"q{i}", row, str(label))
                for i in range(len(sizes))
                for row, label in enumerate(shadow.predict(x[starts[i] : starts[i] + sizes[i]]))
            ]
            control.feedback("churn", truth)
            # Shadow copies are answered after the primary: wait for the last window.
            deadline = time.monotonic() + 10
            while True:
                report = {v["version"]: v for v in control.report("churn")["versions"]}
                if report["2"]["predictions"] >= sum(sizes) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    finally:
        gateway.stop()
    assert gateway.log_path is not None
    merged = [
        json.loads(line)
        for line in gateway.log_path.read_text().splitlines()
        if "shadow copies merged" in line
    ]
    assert merged, "no shadow copies were merged: the test would prove nothing"
    assert all(m["copies"] >= 2 and m["rows"] <= 16 for m in merged)
    assert report["2"]["predictions"] == sum(sizes) == report["2"]["labelled"]
    assert report["2"]["accuracy"] == 1.0
    assert report["1"]["predictions"] == sum(sizes)
