"""The ledger's writer in a process of its own (``ledger_writer: process``, the gateway's
default): the same records as the writer thread, the same accounting, and a writer that
dies loses only the batches it held."""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Literal

import grpc
import numpy as np
import psutil
import pytest
import sqlalchemy as sa

from gateway.ledger import Ledger
from gateway.ledger.ledger import prepare_item
from gateway.ledger.schema import answers as answers_table
from gateway.ledger.store import Store
from gateway.ledger.writer import Bounds
from gateway.ledger.writer_process import ProcessWriter, WriterConfig
from gateway.recording import OutputRoles, Pending, PendingInputs, convert
from greenroom_client.tensors import encode
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests import ledger_items
from tests.conftest import GatewayProcess
from tests.runner_fixtures import infer_request
from tests.test_ledger import BACKENDS, _database, answer


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    return _database(str(request.param), tmp_path, request)


def process_ledger(url: str, **options: object) -> Ledger:
    ledger = Ledger(url, writer="process", flush_interval_s=0.01, **options)  # type: ignore[arg-type]
    ledger.start()
    return ledger


def writer_pid(ledger: Ledger) -> int:
    assert isinstance(ledger._writer, ProcessWriter)
    pid = ledger._writer.pid
    assert pid is not None and pid != os.getpid()
    return pid


def test_items_are_converted_and_written_in_the_writer_process(url: str) -> None:
    ledger = process_ledger(url, convert=ledger_items.convert)
    try:
        for item in [("a", 2), ("skipped", 0), ("b", 1)]:
            ledger.record(item, weight=100)
        assert ledger.flush(30)
        pid = writer_pid(ledger)
        parent = psutil.Process(pid).parent()
        assert parent is not None and parent.pid == os.getpid()
        rows = ledger.rows(f"pid{pid}")  # the model name says which process converted
        assert [(r.request_id, r.row) for r in rows] == [("a", 0), ("a", 1), ("b", 0)]
        stats = ledger.stats
        assert (stats.recorded_answers, stats.recorded_rows, stats.queued) == (2, 3, 0)
        assert (stats.dropped, stats.failed, stats.last_error) == (0, 0, None)
    finally:
        ledger.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def reply(rows: int, request_id: str) -> bytes:
    response = pb.ModelInferResponse(model_name="iris", model_version="v1", id=request_id)
    labels = np.arange(rows, dtype=np.int64) % 3
    proba = np.tile([0.7, 0.2, 0.1], (rows, 1))
    encode(
        response.outputs, response.raw_output_contents,
        {"label": labels, "probabilities": proba}, True,
        {"label": "INT64", "probabilities": "FP64"},
    )  # fmt: skip
    return response.SerializeToString()


def gateway_items() -> list[Pending | PendingInputs]:
    """What the gateway queues: replies of 1 and 1,000 rows, a slice of a merged reply,
    a failed call, and a sampled request."""
    roles = OutputRoles("label", None, "probabilities", ("a", "b", "c"))
    now = time.time()
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    request = infer_request("iris", {"input": x}, True, request_id="in")
    return [
        Pending("iris", "v1", "primary", "one", 1.0, roles, now, reply(1, "one")),
        Pending("iris", "v1", "primary", "many", 2.0, roles, now, reply(1000, "many")),
        Pending("iris", "v2", "shadow", "half", 3.0, roles, now, reply(4, "x"), row_slice=(2, 4)),
        Pending("iris", "v1", "primary", "bad", 4.0, roles, now, status="INTERNAL", request_rows=3),
        PendingInputs(request, "in", ("a", "b", "c", "d"), now),
    ]


def test_the_writer_process_records_what_the_writer_thread_records(tmp_path: Path) -> None:
    results = []
    kinds: tuple[Literal["thread", "process"], ...] = ("thread", "process")
    for kind in kinds:
        ledger = Ledger(f"sqlite:///{tmp_path / kind}.db", convert=convert, writer=kind)
        ledger.start()
        try:
            for item in gateway_items():
                ledger.record(item, weight=100)
            assert ledger.flush(30)
            rows = [dataclasses.replace(r, created_at=0.0) for r in ledger.rows("iris")]
            inputs = ledger.governance.recent_inputs("iris", 10)
            results.append((rows, inputs, ledger.stats))
        finally:
            ledger.stop()
    (thread_rows, thread_inputs, thread_stats), (process_rows, process_inputs, process_stats) = (
        results
    )
    assert len(thread_rows) == 1 + 1000 + 2 + 3
    assert process_rows == thread_rows
    assert len(thread_inputs[1]) == 2 and process_inputs == thread_inputs
    assert process_stats == thread_stats


def writing(url: str) -> tuple[Ledger, int]:
    """A process ledger that has written one answer, and its writer's pid."""
    ledger = process_ledger(url, convert=ledger_items.convert)
    ledger.record(("before", 1))
    assert ledger.flush(30)
    return ledger, writer_pid(ledger)


def test_a_killed_writer_loses_only_its_batch_and_a_new_one_takes_over(url: str) -> None:
    ledger, first = writing(url)
    try:
        ledger.record(("slow", 1))  # the writer sleeps in it
        assert not ledger.flush(1)
        os.kill(first, signal.SIGKILL)
        assert ledger.flush(30)
        stats = ledger.stats
        assert (stats.recorded_answers, stats.failed, stats.queued) == (1, 1, 0)
        assert stats.last_error is not None and "exited (code -9)" in stats.last_error
        ledger.record(("after", 2))
        assert ledger.flush(30)
        second = writer_pid(ledger)
        assert second != first
        assert [r.request_id for r in ledger.rows(f"pid{second}")] == ["after", "after"]
        assert ledger.stats.recorded_answers == 2
    finally:
        ledger.stop()


def test_a_writer_killed_while_idle_loses_nothing(url: str) -> None:
    ledger, first = writing(url)
    try:
        os.kill(first, signal.SIGKILL)
        psutil.Process(first).wait(10)
        for i in range(50):
            ledger.record((f"r{i}", 1))
        assert ledger.flush(30)
        stats = ledger.stats
        assert (stats.recorded_answers, stats.failed, stats.dropped) == (51, 0, 0)
    finally:
        ledger.stop()


def test_sigint_and_sigterm_leave_the_writer_to_the_gateway(url: str) -> None:
    """A Ctrl-C reaches the terminal's whole process group: the writer must keep writing
    what the gateway hands it while the gateway drains, and end when the gateway does."""
    ledger, pid = writing(url)
    try:
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        ledger.record(("b", 1))
        assert ledger.flush(30)
        assert writer_pid(ledger) == pid
        assert ledger.stats.recorded_answers == 2
    finally:
        ledger.stop()
    assert isinstance(ledger._writer, ProcessWriter) and ledger._writer._child is not None
    assert ledger._writer._child.proc.returncode == 0  # ended by the gateway, not a signal


def test_stop_drains_the_queue_through_the_process(url: str) -> None:
    ledger = Ledger(url, writer="process", flush_interval_s=60)  # batches would wait a minute
    ledger.start()
    for i in range(100):
        ledger.record(answer(f"r{i}", 3))
    began = time.monotonic()
    ledger.stop()
    assert time.monotonic() - began < 20
    assert ledger.count() == 300


def test_database_errors_in_the_writer_process_count_failed(url: str) -> None:
    Store(url).migrate()
    config = WriterConfig(url, functools.partial(prepare_item, None), retry_delays=(0.01,))
    writer = ProcessWriter(config, Bounds(flush_interval_s=0.01))
    writer.start()
    try:
        answers_table.drop(sa.create_engine(url, poolclass=sa.NullPool))
        for i in range(10):
            writer.put(answer(f"lost{i}", 2))
        assert writer.flush(30)
        stats = writer.stats
        assert (stats.recorded_answers, stats.failed, stats.queued) == (0, 10, 0)
        assert stats.last_error is not None and "answers" in stats.last_error
    finally:
        writer.stop(30)


@pytest.mark.parametrize(
    ("target", "convert_fn", "message"),
    [
        ("sqlite:///:memory:", None, "in-memory"),
        ("sqlite:///{tmp}/x.db", lambda item: item, "importable"),
    ],
)
def test_what_another_process_cannot_do_is_refused(
    tmp_path: Path, target: str, convert_fn: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Ledger(target.format(tmp=tmp_path), convert=convert_fn, writer="process")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_the_gateway_records_with_either_writer_and_ctrl_c_loses_nothing(
    repo: Path, tmp_path: Path, kind: str
) -> None:
    gateway = GatewayProcess(repo, tmp_path / "data", "--ledger-writer", kind)
    try:
        writers = [
            child.pid
            for child in psutil.Process(gateway.pid).children()
            if child.cmdline()[-3:-1] == ["gateway.ledger", "writer"]
        ]
        assert len(writers) == (1 if kind == "process" else 0)
        x = np.tile(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32), (3, 1))
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for i in range(200):
                stub.ModelInfer(infer_request("iris", {"input": x}, True, request_id=f"c{i}"))
        for pid in (gateway.pid, *writers):  # what a terminal's Ctrl-C does
            os.kill(pid, signal.SIGINT)
        assert gateway.proc.wait(60) == 0
        assert not any(psutil.pid_exists(pid) for pid in writers)
    finally:
        gateway.stop()
    ledger = Ledger.for_data_dir(tmp_path / "data")
    ledger.start()
    try:
        assert ledger.count("iris") == 600
        assert {r.request_id for r in ledger.rows("iris")} == {f"c{i}" for i in range(200)}
    finally:
        ledger.stop()


def test_queued_items_survive_the_trip_to_the_writer_process() -> None:
    items = gateway_items()
    assert pickle.loads(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)) == items
