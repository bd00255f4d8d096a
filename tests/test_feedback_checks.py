"""Feedback that could never join, or could only mislead, is refused whole; a stream of
batches is one call (all items or none); the CLI reads a jsonl file's rows and labels as
written; stored truths that are no number never make a regression's metrics disagree."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from gateway.evaluation import Scored, evaluate
from greenroom_client.control import ControlClient
from greenroom_client.errors import InvalidArgument
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.models import churn_data
from tests.test_external_and_cli import greenroom
from tests.test_gateway import request

REGRESSION_WEIGHTS = np.array([1.0, 2.0, -1.0])
MAX_FEEDBACK_ITEMS = 100_000  # gateway.ledger.ledger's: items in one call


@pytest.fixture(scope="module")
def feedback_gateway(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """churn (a classifier), reg and reg-old (regressions); each test uses ids of its own."""
    models = tmp_path_factory.mktemp("feedback-models")
    (models / "churn").symlink_to(repo / "churn")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    regressor = LinearRegression().fit(x, x @ REGRESSION_WEIGHTS + 0.5)
    for name in ("reg", "reg-old"):
        (models / name / "1").mkdir(parents=True)
        joblib.dump(regressor, models / name / "1" / "model.joblib")
        (models / name / "model.yaml").write_text('task: regression\nprimary: "1"\n')
    with GatewayProcess(models, tmp_path_factory.mktemp("feedback-data")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def channel(feedback_gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(feedback_gateway.target) as channel:
        yield channel


def stored(gateway: GatewayProcess, prefix: str) -> list[tuple[str, int, str]]:
    """The feedback rows in the gateway's ledger whose request id starts with ``prefix``."""
    con = sqlite3.connect(gateway.data_dir / "ledger.db", timeout=10)
    try:
        rows = con.execute(
            "select request_id, row, truth from feedback where request_id like ? "
            "order by request_id, row",
            (prefix + "%",),
        ).fetchall()
    finally:
        con.close()
    return [(str(r), int(i), str(t)) for r, i, t in rows]


def infer(channel: grpc.Channel, model: str, rows: int, request_id: str) -> None:
    width = 8 if model == "churn" else 3
    x = churn_data()[0][:rows] if model == "churn" else np.ones((rows, width), np.float32)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    stub.ModelInfer(request(model, {"input": np.asarray(x, np.float32)}, id=request_id))


def send(channel: grpc.Channel, model: str, *items: tuple[str, int, str]) -> Any:
    batch = cpb.FeedbackBatch(
        model=model, items=[cpb.FeedbackItem(request_id=r, row=i, label=t) for r, i, t in items]
    )
    return cpb_grpc.FeedbackStub(channel).SendFeedback(batch, timeout=30)


def refused(call: Any, *words: str) -> str:
    """Call, expect INVALID_ARGUMENT whose message holds every word; the message."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for word in words:
        assert word in error.details(), error.details()
    return str(error.details())


def labelled(control: ControlClient, model: str) -> int:
    return sum(v["labelled"] for v in control.report(model)["versions"])


# -- 1. rows the recorded answer does not have ----------------------------------------------


def test_a_row_beyond_the_recorded_answer_is_refused_and_nothing_stored(
    feedback_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    infer(channel, "churn", 3, "rows-three")
    for row in (3, 7, 2**62):
        refused(
            lambda row=row: send(channel, "churn", ("rows-ok", 0, "1"), ("rows-three", row, "1")),
            "feedback item 1:",
            f"row {row} is out of range",
            "request 'rows-three' has 3 rows",
        )
    assert stored(feedback_gateway, "rows-") == []  # not even the good first item
    result = send(channel, "churn", ("rows-three", 0, "0"), ("rows-three", 2, "1"))
    assert (result.accepted, result.matched, result.unmatched) == (2, 2, 0)
    assert stored(feedback_gateway, "rows-") == [("rows-three", 0, "0"), ("rows-three", 2, "1")]


def test_truth_sent_before_its_answer_is_kept_and_joins_only_rows_the_answer_has(
    feedback_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    result = send(channel, "churn", ("early-two", 1, "1"), ("early-two", 5, "0"))
    assert (result.accepted, result.matched, result.unmatched) == (2, 0, 2)
    with ControlClient(feedback_gateway.target) as control:
        before = labelled(control, "churn")
        infer(channel, "churn", 2, "early-two")
        deadline = time.monotonic() + 30
        while labelled(control, "churn") == before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # anything more would show up now
        # Row 1 joined; row 5 of a 2-row answer joins nothing (it is kept, not counted).
        assert labelled(control, "churn") == before + 1
    assert stored(feedback_gateway, "early-two") == [("early-two", 1, "1"), ("early-two", 5, "0")]
    # Now that the answer is recorded, the same row 5 is refused.
    refused(lambda: send(channel, "churn", ("early-two", 5, "1")), "has 2 rows")


def test_a_row_no_answer_can_have_is_refused_even_for_an_unknown_id(
    feedback_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    refused(
        lambda: send(channel, "churn", ("huge-row", 2**62, "1")),
        "feedback item 0:",
        f"row {2**62} is beyond any answer",
    )
    assert stored(feedback_gateway, "huge-row") == []


# -- 2. a stream is one call ------------------------------------------------------------------


def test_a_bad_item_in_a_later_batch_stores_nothing_and_is_named_by_its_call_index(
    feedback_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    items = [(f"stream-{i}", 0, "1") for i in range(2500)]  # three batches of the client's
    items[1200] = ("", 0, "1")
    with ControlClient(feedback_gateway.target) as control:
        with pytest.raises(InvalidArgument) as info:
            control.feedback("churn", items)
        assert info.value.message == "feedback item 1200: request_id is empty"
        assert stored(feedback_gateway, "stream-") == []
        infer_id = "stream-2499"
        items[1200] = ("stream-1200", 0, "1")
        infer(channel, "churn", 1, infer_id)
        items[2499] = (infer_id, 1, "1")  # the 1-row answer has no row 1
        with pytest.raises(InvalidArgument) as info:
            control.feedback("churn", items)
        assert info.value.message.startswith("feedback item 2499: row 1 is out of range")
        assert stored(feedback_gateway, "stream-") == []
        items[2499] = (infer_id, 0, "1")
        assert control.feedback("churn", items) == {
            "accepted": 2500, "matched": 1, "unmatched": 2499, "duplicates": 0,
        }  # fmt: skip
    assert len(stored(feedback_gateway, "stream-")) == 2500


def test_a_raw_stream_is_all_or_nothing_and_of_one_model(
    feedback_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    stub = cpb_grpc.FeedbackStub(channel)

    def batch(model: str, *ids: str) -> cpb.FeedbackBatch:
        items = [cpb.FeedbackItem(request_id=r, row=0, label="1") for r in ids]
        return cpb.FeedbackBatch(model=model, items=items)

    good, bad = batch("churn", "raw-1", "raw-2"), batch("churn", "raw-3", "")
    refused(lambda: stub.StreamFeedback(iter([good, bad]), timeout=30), "feedback item 3:")
    refused(
        lambda: stub.StreamFeedback(iter([good, batch("reg", "raw-3")]), timeout=30),
        "feedback batch 1 is for model 'reg'",
        "one stream carries one model's feedback",
    )
    assert stored(feedback_gateway, "raw-") == []
    reply = stub.StreamFeedback(iter([good, batch("churn", "raw-3")]), timeout=30)
    assert (reply.accepted, reply.unmatched) == (3, 3)
    assert stub.StreamFeedback(iter([]), timeout=30) == cpb.FeedbackResult()


def test_a_stream_over_the_limit_is_stored_in_parts_and_says_what_it_stored(
    feedback_gateway: GatewayProcess,
) -> None:
    """Past MAX_FEEDBACK_ITEMS a stream is stored in parts of that many, each all or
    none (the clients of every language stream, and one transaction may not hold
    SQLite's write lock for long); an error says what the parts before it stored."""
    items = [(f"parts-{i}", 0, "1") for i in range(MAX_FEEDBACK_ITEMS + 2500)]
    bad = MAX_FEEDBACK_ITEMS + 1000
    items[bad] = ("", 0, "1")
    with ControlClient(feedback_gateway.target, timeout=120) as control:
        with pytest.raises(InvalidArgument) as info:
            control.feedback("churn", items)
        assert info.value.message == (
            f"feedback item {bad}: request_id is empty (the first {MAX_FEEDBACK_ITEMS} "
            "items of this stream were stored; nothing after)"
        )
        assert len(stored(feedback_gateway, "parts-")) == MAX_FEEDBACK_ITEMS
        items[bad] = (f"parts-{bad}", 0, "1")
        result = control.feedback("churn", items)  # sending it all again is harmless
    assert (result["accepted"], result["duplicates"]) == (len(items), MAX_FEEDBACK_ITEMS)
    assert len(stored(feedback_gateway, "parts-")) == len(items)


# -- 3. a regression's truths are finite numbers ----------------------------------------------


def test_a_regression_truth_that_is_no_finite_number_is_refused(
    feedback_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    infer(channel, "reg", 2, "reg-a")
    for bad in ("abc", "nan", "NaN", "inf", "-Infinity", "1,5"):
        refused(
            lambda bad=bad: send(channel, "reg", ("reg-a", 0, "1.5"), ("reg-a", 1, bad)),
            f"feedback item 1: truth {bad!r} is not a finite number",
            "regression",
        )
    assert stored(feedback_gateway, "reg-a") == []
    result = send(channel, "reg", ("reg-a", 0, "1.5"), ("reg-a", 1, " -2e0 "))
    assert (result.accepted, result.matched) == (2, 2)
    # A classifier's labels stay free text: its classes are not always known.
    infer(channel, "churn", 1, "cls-free")
    assert send(channel, "churn", ("cls-free", 0, "banana")).matched == 1


def test_stored_truths_that_are_no_number_leave_a_regression_unlabelled(
    feedback_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    """A ledger written before the check may hold them: they count as no truth at all."""
    for request_id in ("old-abc", "old-nan", "old-inf", "old-good"):
        infer(channel, "reg-old", 1, request_id)
    with ControlClient(feedback_gateway.target) as control:
        control.report("reg-old")  # the answers are in the database now
        con = sqlite3.connect(feedback_gateway.data_dir / "ledger.db", timeout=10)
        try:
            con.executemany(
                "insert into feedback (model, request_id, row, truth, received_at, updated_at,"
                " revisions) values ('reg-old', ?, 0, ?, 0, 0, 1)",
                [("old-abc", "abc"), ("old-nan", "nan"), ("old-inf", "inf")],
            )
            con.commit()
        finally:
            con.close()
        before = control.report("reg-old")["versions"][0]
        prediction = float(np.ones(3) @ REGRESSION_WEIGHTS + 0.5)
        send(channel, "reg-old", ("old-good", 0, str(prediction + 2.0)))
        after = control.report("reg-old")["versions"][0]
    assert (before["predictions"], before["labelled"]) == (4, 0)
    assert before["mae"] is None and before["rmse"] is None
    assert after["labelled"] == 1
    assert after["mae"] == pytest.approx(2.0, abs=1e-4)
    assert after["rmse"] == pytest.approx(2.0, abs=1e-4)


def test_evaluation_skips_non_finite_truths_for_every_metric() -> None:
    rows = [Scored(1.0, 3.0), Scored(1.0, math.nan), Scored(1.0, "abc"), Scored(1.0, math.inf)]
    metrics = evaluate(rows, "regression")
    assert (metrics.labelled, metrics.mae, metrics.rmse) == (1, 2.0, 2.0)
    only_bad = evaluate(rows[1:], "regression")
    assert (only_bad.labelled, only_bad.mae, only_bad.rmse) == (0, None, None)
    nan_prediction = evaluate([Scored(math.nan, 1.0), Scored(1.0, 2.0)], "regression")
    assert math.isnan(nan_prediction.mae or 0.0) and math.isnan(nan_prediction.rmse or 0.0)


# -- 4. the CLI's jsonl reader ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"request_id": "cli-x", "row": 1.7, "label": "1"}', "row must be an integer, got 1.7"),
        ('{"request_id": "cli-x", "row": true, "label": "1"}', "row must be an integer, got true"),
        ('{"request_id": "cli-x", "row": 1.0, "label": "1"}', "row must be an integer, got 1.0"),
        ('{"request_id": "cli-x", "row": [0], "label": "1"}', "row must be an integer, got [0]"),
        ('{"request_id": "cli-x", "label": true}', "label must be a string or a number, got true"),
        ('{"request_id": "cli-x", "label": {"a": 1}}', "label must be a string or a number"),
        ('{"request_id": 7, "label": "1"}', "request_id must be a string, got 7"),
    ],
)
def test_jsonl_rows_and_labels_that_are_not_what_they_seem_are_refused(
    feedback_gateway: GatewayProcess, tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"request_id": "cli-ok", "row": 0, "label": "1"}\n' + line + "\n")
    done = greenroom("feedback", "churn", "--file", str(path), "--target", feedback_gateway.target)
    assert done.returncode == 1
    assert f"labels.jsonl:2: {message}" in done.stderr, done.stderr
    assert stored(feedback_gateway, "cli-") == []


def test_jsonl_numbers_are_kept_as_the_text_they_were_written_with(
    feedback_gateway: GatewayProcess, tmp_path: Path
) -> None:
    lines = [
        {"request_id": "num-int", "row": 2, "label": 1},
        {"request_id": "num-float", "row": "3", "label": 1.0},
        {"request_id": "num-exp", "label": 1e0},
        {"request_id": "num-text", "row": None, "label": "1"},
    ]
    path = tmp_path / "labels.jsonl"
    # json.dumps writes 1e0 as 1.0: write that line by hand.
    texts = [json.dumps(line) for line in lines]
    texts[2] = '{"request_id": "num-exp", "label": 1e0}'
    path.write_text("\n".join(texts) + "\n")
    done = greenroom(
        "feedback", "churn", "--file", str(path), "--target", feedback_gateway.target, "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accepted"] == 4
    assert stored(feedback_gateway, "num-") == [
        ("num-exp", 0, "1e0"),
        ("num-float", 3, "1.0"),
        ("num-int", 2, "1"),
        ("num-text", 0, "1"),
    ]
