"""The prediction ledger and feedback store, against SQLite and a real PostgreSQL.

PostgreSQL comes from ``tests/pg.py`` (one throwaway cluster per session, one database per
test). Without its binaries the postgres cases fail with the install hint: a green run
must mean both databases were exercised.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ledger import Answer, FeedbackResult, Ledger, Role, store, writer
from gateway.ledger.migrate import current_revision, upgrade
from gateway.ledger.schema import answers as answers_table
from gateway.ledger.schema import metadata
from tests.pg import Cluster

BACKENDS = ["sqlite", "postgres"]
CLASSES = ("setosa", "versicolor", "virginica")


def _database(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'ledger.db'}"
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    return _database(str(request.param), tmp_path, request)


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    started = Ledger(url, flush_interval_s=0.01)
    started.start()
    yield started
    started.stop()


def answer(
    request_id: str,
    rows: int = 1,
    *,
    model: str = "iris",
    version: str = "v1",
    role: Role = "primary",
    labels: str | Sequence[str] | None = "setosa",
    values: Sequence[float] | None = None,
    probabilities: npt.NDArray[np.float64] | None = None,
    status: str = "OK",
    created_at: float | None = None,
) -> Answer:
    """An answer of ``rows`` rows; a single label is repeated on every row, and the
    probabilities default to (0.7, 0.2, 0.1) on every row."""
    if probabilities is None:
        probabilities = np.tile(np.array([0.7, 0.2, 0.1]), (rows, 1))
    if isinstance(labels, str):
        labels = (labels,) * rows
    return Answer(
        request_id=request_id,
        model=model,
        version=version,
        role=role,
        rows=rows,
        labels=None if labels is None else tuple(labels),
        values=None if values is None else tuple(values),
        probabilities=probabilities,
        classes=CLASSES,
        latency_ms=1.5,
        status=status,
        created_at=time.time() if created_at is None else created_at,
    )  # fmt: skip


def record_all(ledger: Ledger, items: Sequence[Answer]) -> None:
    for item in items:
        ledger.record(item)


def sql_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def database_answers(url: str) -> int:
    """Rows of the answers table itself (not the prediction rows they hold)."""
    engine = sql_engine(url)
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM answers")).scalar_one())


# -- schema, migrations, restarts ---------------------------------------------------------


def test_upgrading_from_0001_keeps_the_history_in_the_journal(url: str) -> None:
    engine = sql_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO deployment_history (model, at, spec, reason, actor) VALUES "
                    "('iris', 1.0, '{\"primary\": \"1\"}', 'first', 'cli'), "
                    "('iris', 2.0, '{\"primary\": \"2\"}', 'second', 'policy')")
        )  # fmt: skip
    ledger = Ledger(url)
    ledger.start()
    try:
        journal = ledger.journal("iris")
        assert [(e.kind, e.reason, e.actor, e.details) for e in journal] == [
            ("deployment", "first", "cli", {"primary": "1"}),
            ("deployment", "second", "policy", {"primary": "2"}),
        ]
        ledger.save_deployment("iris", {"primary": "3"}, "third", kind="promotion", version="3")
        assert [(e.kind, e.version) for e in ledger.journal("iris")][-1] == ("promotion", "3")
    finally:
        ledger.stop()


def test_migrations_create_the_schema_the_queries_use(url: str) -> None:
    ledger = Ledger(url)
    ledger.start()
    ledger.stop()
    engine = sql_engine(url)
    assert current_revision(engine) == "0002"
    tables = set(sa.inspect(engine).get_table_names())
    assert {"answers", "feedback", "deployments", "deployment_history"} <= tables
    assert {"inputs", "versions", "reference_samples", "journal"} <= tables
    assert "predictions" not in tables
    assert "alembic_version" in tables
    with engine.connect() as connection:
        drift = compare_metadata(MigrationContext.configure(connection), metadata)
    assert drift == [], "schema.py and the migrations disagree"
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("answers")}
    assert {"ix_answers_model_request_id", "ix_answers_model_created_at"} <= indexes


def test_restart_keeps_answers_feedback_and_deployments(url: str) -> None:
    first = Ledger(url)
    first.start()
    record_all(first, [answer("a"), answer("b")])
    first.save_deployment("iris", {"primary": "v1", "shadows": []}, "initial")
    first.save_deployment("iris", {"primary": "v1", "shadows": [{"version": "v2"}]}, "shadow v2")
    assert first.add_feedback("iris", [("a", 0, "setosa")]).matched == 1
    first.stop()
    first.start()  # the same object restarts: migrations are a no-op
    first.stop()

    second = Ledger(url)
    second.start()
    try:
        assert second.count("iris") == 2
        assert [(r.request_id, r.truth) for r in second.rows("iris")] == [
            ("a", "setosa"),
            ("b", None),
        ]
        assert second.deployment("iris") == {"primary": "v1", "shadows": [{"version": "v2"}]}
        second.save_deployment("iris", {"primary": "v2"}, "promote v2", actor="policy")
        history = second.history("iris")
        assert [(h.reason, h.actor) for h in history] == [
            ("initial", "cli"),
            ("shadow v2", "cli"),
            ("promote v2", "policy"),
        ]
        assert history[0].spec == {"primary": "v1", "shadows": []}
        assert [h.at for h in history] == sorted(h.at for h in history)
        assert second.deployment("other") is None
        assert second.history("other") == []
    finally:
        second.stop()


def test_a_deployment_that_cannot_be_stored_changes_nothing(ledger: Ledger) -> None:
    ledger.save_deployment("iris", {"primary": "v1"}, "initial")
    with pytest.raises(TypeError):
        ledger.save_deployment("iris", {"primary": object()}, "broken")
    assert ledger.deployment("iris") == {"primary": "v1"}
    assert len(ledger.history("iris")) == 1


def test_for_data_dir_makes_a_wal_sqlite_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    ledger = Ledger.for_data_dir(data_dir, convert=lambda rows: answer("a", rows))
    ledger.start()
    ledger.record(3)
    ledger.stop()
    with closing(sqlite3.connect(data_dir / "ledger.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT count(*), sum(rows) FROM answers").fetchone() == (1, 3)


def test_postgresql_urls_without_a_driver_mean_psycopg(pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database().replace("postgresql+psycopg://", "postgresql://")
    ledger = Ledger(url)
    ledger.start()
    ledger.record(answer("a"))
    ledger.stop()
    assert Ledger(url).count() == 1


# -- answers: one record however many rows ------------------------------------------------


def test_a_thousand_row_answer_is_one_record_expanded_on_read(ledger: Ledger) -> None:
    rows = 1_000
    rng = np.random.default_rng(7)
    probabilities = rng.dirichlet(np.ones(3), size=rows)
    labels = [CLASSES[int(i)] for i in probabilities.argmax(axis=1)]
    values = rng.normal(size=rows)
    values[5] = math.nan  # regression values may be NaN
    ledger.record(
        answer("big", rows, labels=labels, values=values.tolist(), probabilities=probabilities)
    )
    ledger.record(answer("small", 2, version="v2"))
    truth = [("big", row, f"t{row}") for row in range(0, rows, 7)]
    beyond = f"row {rows} is out of range: the recorded answer to request 'big' has {rows} rows"
    with pytest.raises(ValueError, match=beyond):  # all or nothing
        ledger.add_feedback("iris", [*truth, ("big", rows, "beyond")])
    assert ledger.add_feedback("iris", truth) == FeedbackResult(
        accepted=len(truth), matched=len(truth), unmatched=0, duplicates=0
    )
    assert database_answers(ledger.url) == 2
    assert ledger.count("iris") == rows + 2
    assert (ledger.stats.recorded_answers, ledger.stats.recorded_rows) == (2, rows + 2)

    expanded = ledger.rows("iris")
    assert len(expanded) == rows + 2
    big = expanded[:rows]
    assert [r.row for r in big] == list(range(rows))
    assert {r.request_id for r in big} == {"big"}
    assert [r.truth for r in big] == [f"t{row}" if row % 7 == 0 else None for row in range(rows)]
    assert [r.label for r in big] == labels
    got_values = np.array([r.value for r in big])
    assert np.array_equal(got_values, values, equal_nan=True)
    assert np.array_equal(np.array([r.probabilities for r in big]), probabilities)
    assert all(r.classes == CLASSES for r in big)
    assert [(r.request_id, r.row, r.version, r.label) for r in expanded[rows:]] == [
        ("small", 0, "v2", "setosa"),
        ("small", 1, "v2", "setosa"),
    ]


def test_a_window_streams_in_chunks_with_every_truth_joined(ledger: Ledger) -> None:
    """More answers (and answer pairs) than one read chunk, the truth of a request in
    another chunk than its first answer: the streams hold exactly what the lists hold."""
    count = 2 * store.READ_CHUNK + 7
    record_all(ledger, [answer(f"r-{i}") for i in range(count)])
    record_all(ledger, [answer(f"r-{i}", version="v2", role="shadow") for i in range(count)])
    ledger.add_feedback("iris", [(f"r-{i}", 0, "setosa") for i in range(0, count, 3)])
    streamed = list(ledger.iter_rows("iris"))
    assert streamed == ledger.rows("iris")
    assert len(streamed) == 2 * count
    labelled = {(r.request_id, r.version) for r in streamed if r.truth == "setosa"}
    assert ("r-0", "v2") in labelled and (f"r-{count - 1}", "v1") not in labelled
    assert len(labelled) == 2 * len(range(0, count, 3))
    pairs = list(ledger.iter_pairs("iris", "v1", "v2"))
    assert pairs == ledger.pairs("iris", "v1", "v2")
    assert [p.request_id for p in pairs] == [f"r-{i}" for i in range(0, count, 3)]


def test_failed_answers_hold_the_requests_rows_without_predictions(ledger: Ledger) -> None:
    ledger.record(answer("f", 3, status="UNAVAILABLE", labels=None, probabilities=None))
    with pytest.raises(ValueError, match="item 1: row 3 is out of range"):
        ledger.add_feedback("iris", [("f", 2, "setosa"), ("f", 3, "setosa")])
    assert ledger.add_feedback("iris", [("f", 2, "setosa")]).matched == 1
    rows = ledger.rows("iris")
    assert [(r.row, r.status, r.label, r.value, r.probabilities, r.truth) for r in rows] == [
        (0, "UNAVAILABLE", None, None, None, None),
        (1, "UNAVAILABLE", None, None, None, None),
        (2, "UNAVAILABLE", None, None, None, "setosa"),
    ]
    assert ledger.count("iris") == 3


def test_inconsistent_answers_count_as_failed(ledger: Ledger) -> None:
    ledger.record(answer("labels", 2, labels=["setosa"]))
    ledger.record(answer("values", 2, labels=None, values=[1.0, 2.0, 3.0]))
    ledger.record(answer("proba", 2, probabilities=np.zeros((3, 3))))
    ledger.record(answer("proba1d", 2, probabilities=np.zeros(6)))
    ledger.record(answer("good", 2))
    assert ledger.flush()
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows, stats.failed) == (1, 2, 4)
    assert "ValueError: answer probabilities" in (stats.last_error or "")
    assert [r.request_id for r in ledger.rows("iris")] == ["good", "good"]


# -- the writer ---------------------------------------------------------------------------


def test_convert_runs_in_the_writer_thread_and_may_skip(url: str) -> None:
    threads: set[int] = set()

    def convert(item: tuple[str, int]) -> Answer | None:
        threads.add(threading.get_ident())
        request_id, rows = item
        return None if rows == 0 else answer(request_id, rows)

    ledger = Ledger(url, convert=convert)
    ledger.start()
    for item in [("a", 2), ("skipped", 0), ("b", 1)]:
        ledger.record(item, weight=100)
    assert ledger.flush()
    writer_thread = ledger._writer._thread
    assert writer_thread is not None
    assert threads == {writer_thread.ident}
    assert threading.get_ident() not in threads
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows, stats.queued) == (2, 3, 0)
    assert (stats.dropped, stats.failed) == (0, 0)
    assert [(r.request_id, r.row) for r in ledger.rows("iris")] == [("a", 0), ("a", 1), ("b", 0)]
    ledger.stop()


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def test_a_raising_convert_counts_failed_logs_once_and_the_writer_goes_on(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = RecordingLog()
    monkeypatch.setattr(writer, "log", log)

    def convert(item: str) -> Answer:
        if item.startswith("bad"):
            raise ValueError(f"cannot decode {item}")
        if item.startswith("worse"):
            raise KeyError(item)
        return answer(item)

    ledger = Ledger(url, convert=convert, flush_interval_s=0.01)
    ledger.start()
    for item in ["ok1", "bad1", "bad2", "worse1", "ok2", "bad3"]:
        ledger.record(item)
    assert ledger.flush()
    ledger.record("ok3")
    assert ledger.flush()
    stats = ledger.stats
    assert (stats.recorded_answers, stats.failed, stats.dropped) == (3, 4, 0)
    assert stats.last_error is not None
    assert stats.last_error.startswith(("ValueError: cannot decode", "KeyError"))
    logged = [fields["error"].split(":")[0] for event, fields in log.events]
    assert sorted(logged) == ["KeyError", "ValueError"]  # once per error type
    assert ledger.count() == 3
    ledger.stop()


def test_the_byte_bound_and_the_count_bound_drop_and_count(url: str) -> None:
    ledger = Ledger(url, queue_items=5, queue_bytes=1_000)  # not started: nothing drains
    for i, weight in enumerate([300, 300, 300, 300, 5_000, 100, 0, 0, 0]):
        ledger.record(answer(f"w{i}"), weight=weight)
    # 300+300+300 fit, a 4th 300 would make 1,200 bytes, 5,000 alone exceeds the bound;
    # 100 fits exactly, and 0 always fits by bytes, but the count bound (5) refuses the rest.
    stats = ledger.stats
    assert (stats.queued, stats.dropped) == (5, 4)
    ledger.record(answer("bad weight"), weight="heavy")  # type: ignore[arg-type]
    assert ledger.stats.dropped == 5

    ledger.start()
    assert ledger.flush()
    assert [r.request_id for r in ledger.rows("iris")] == ["w0", "w1", "w2", "w5", "w6"]
    ledger.record(answer("room again"), weight=1_000)  # written items free their bytes
    assert ledger.flush()
    stats = ledger.stats
    assert (stats.recorded_answers, stats.queued, stats.dropped, stats.failed) == (6, 0, 5, 0)
    ledger.stop()


def test_fifty_thousand_answers_from_another_thread_are_all_written(url: str) -> None:
    ledger = Ledger(url, queue_items=50_000)
    ledger.start()
    items = [answer(f"r{i}", created_at=1.0) for i in range(50_000)]

    def produce() -> None:
        for item in items:
            ledger.record(item)

    began = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    ledger.stop()
    elapsed = time.perf_counter() - began
    backend = url.split(":", 1)[0]
    rate = len(items) / elapsed
    print(f"\nledger {backend}, 1-row answers: {rate:,.0f} answers/s = {rate:,.0f} rows/s")
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows) == (50_000, 50_000)
    assert (stats.queued, stats.dropped, stats.failed) == (0, 0, 0)
    assert ledger.count("iris") == 50_000


def test_thousand_row_answers_throughput(url: str) -> None:
    rows, n = 1_000, 200
    probabilities = np.random.default_rng(1).dirichlet(np.ones(3), size=rows)
    labels = [CLASSES[int(i)] for i in probabilities.argmax(axis=1)]
    items = [answer(f"r{i}", rows, labels=labels, probabilities=probabilities) for i in range(n)]
    ledger = Ledger(url)
    ledger.start()
    began = time.perf_counter()
    for item in items:
        ledger.record(item, weight=probabilities.nbytes)
    assert ledger.flush(timeout=120)
    elapsed = time.perf_counter() - began
    began = time.perf_counter()
    read = len(ledger.rows("iris"))
    read_elapsed = time.perf_counter() - began
    backend = url.split(":", 1)[0]
    print(
        f"\nledger {backend}, {rows}-row answers: {n / elapsed:,.0f} answers/s = "
        f"{n * rows / elapsed:,.0f} rows/s written; rows() {read / read_elapsed:,.0f} rows/s"
    )
    assert read == n * rows
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows) == (n, n * rows)
    assert (stats.queued, stats.dropped, stats.failed) == (0, 0, 0)
    assert database_answers(url) == n
    ledger.stop()


def stall(url: str) -> tuple[Any, threading.Event]:
    """Hold the answers table locked (from another connection) until the event is set."""
    release, locked = threading.Event(), threading.Event()

    def hold() -> None:
        if url.startswith("sqlite"):
            connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            connection.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait()
            connection.execute("ROLLBACK")
            connection.close()
            return
        conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(conninfo) as pg, pg.transaction():
            pg.execute("LOCK TABLE answers IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    return holder, release


def test_a_stalled_database_never_blocks_record_and_memory_stays_bounded(url: str) -> None:
    ledger = Ledger(url, queue_items=5_000, batch_items=500, flush_interval_s=0.01)
    ledger.start()
    holder, release = stall(url)
    try:
        items = [answer(f"r{i}", 10) for i in range(10_000)]

        def record() -> None:
            for item in items:
                ledger.record(item, weight=100)

        # Liveness, not speed: every record() must return while the database is still
        # held, since the hold is released only after this. A record() that waited on
        # the database would never return here.
        recorder = threading.Thread(target=record)
        recorder.start()
        recorder.join(timeout=60)
        assert not recorder.is_alive(), "record() waited on the stalled database"
        stats = ledger.stats
        assert stats.queued == 5_000
        assert stats.dropped == 5_000
        assert stats.recorded_answers == 0
        assert not ledger.flush(timeout=0.2)  # the database is still stalled
    finally:
        release.set()
        holder.join()
    assert ledger.flush(timeout=30)
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows) == (5_000, 50_000)
    assert (stats.queued, stats.dropped, stats.failed) == (0, 5_000, 0)
    assert ledger.count() == 50_000
    ledger.stop()


def test_database_errors_count_answers_as_failed_and_the_writer_goes_on(ledger: Ledger) -> None:
    assert isinstance(ledger._writer, writer.BatchWriter)
    ledger._writer.handler.retry_delays = (0.01, 0.01)
    engine = sql_engine(ledger.url)
    answers_table.drop(engine)
    record_all(ledger, [answer(f"lost{i}", 2) for i in range(10)])
    assert ledger.flush(timeout=30)
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows, stats.failed) == (0, 0, 10)
    assert stats.last_error is not None
    assert "answers" in stats.last_error

    answers_table.create(engine)
    record_all(ledger, [answer(f"kept{i}", 2) for i in range(5)])
    assert ledger.flush(timeout=30)
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows, stats.failed) == (5, 10, 10)
    assert ledger.count() == 10


def test_one_answer_the_database_rejects_does_not_lose_its_batch(pg_cluster: Cluster) -> None:
    ledger = Ledger(pg_cluster.create_database(), flush_interval_s=10)
    ledger.start()
    record_all(ledger, [answer("nul\x00" if i == 3 else f"r{i}", 2) for i in range(10)])
    assert ledger.flush(timeout=30)
    stats = ledger.stats
    assert (stats.recorded_answers, stats.recorded_rows, stats.failed) == (9, 18, 1)
    assert "NUL" in (stats.last_error or "")
    ledger.stop()


def test_record_never_raises_and_answers_after_stop_are_counted(ledger: Ledger) -> None:
    ledger.record(None)  # without convert, None is skipped
    ledger.record("not an answer")  # fails in the writer thread, not here
    assert ledger.flush()
    stats = ledger.stats
    assert (stats.recorded_answers, stats.failed, stats.dropped) == (0, 1, 0)
    assert "TypeError: expected an Answer, got str" in (stats.last_error or "")
    ledger.stop()
    ledger.record(answer("late"))
    ledger.record(answer("later"), weight=10)
    assert ledger.stats.dropped == 2
    ledger.start()
    ledger.record(answer("again"))
    assert ledger.flush()
    assert ledger.count() == 1


def test_stop_writes_everything_still_queued(url: str) -> None:
    ledger = Ledger(url, flush_interval_s=60)  # the writer would wait a minute for more
    ledger.start()
    record_all(ledger, [answer(f"r{i}", 3) for i in range(100)])
    began = time.monotonic()
    ledger.stop()
    assert time.monotonic() - began < 10
    assert ledger.count() == 300


# -- feedback -----------------------------------------------------------------------------


def truths(ledger: Ledger, model: str = "iris") -> dict[tuple[str, int, str], str | None]:
    return {(r.request_id, r.row, r.version): r.truth for r in ledger.rows(model)}


def test_feedback_right_after_the_answer_is_matched(url: str) -> None:
    ledger = Ledger(url, flush_interval_s=60)  # nothing reaches the database by itself
    ledger.start()
    ledger.record(answer("a"))
    assert ledger.add_feedback("iris", [("a", 0, "setosa")]) == FeedbackResult(1, 1, 0, 0)
    assert truths(ledger) == {("a", 0, "v1"): "setosa"}
    ledger.stop()


def test_feedback_after_the_flush_is_matched_by_row(ledger: Ledger) -> None:
    ledger.record(answer("a", 2))
    assert ledger.flush()
    result = ledger.add_feedback("iris", [("a", 0, "setosa"), ("a", 1, "virginica")])
    assert result == FeedbackResult(accepted=2, matched=2, unmatched=0, duplicates=0)
    with pytest.raises(ValueError, match="answer to request 'a' has 2 rows"):
        ledger.add_feedback("iris", [("a", 2, "setosa")])  # it could never join
    ledger.record(answer("a", 3, version="v2"))  # a longer answer to the same id matches
    assert ledger.add_feedback("iris", [("a", 2, "versicolor")]) == FeedbackResult(1, 1, 0, 0)


def test_feedback_for_an_unknown_id_is_kept_and_joined_later(ledger: Ledger) -> None:
    result = ledger.add_feedback("iris", [("early", 0, "setosa")])
    assert result == FeedbackResult(accepted=1, matched=0, unmatched=1, duplicates=0)
    assert ledger.rows("iris") == []
    record_all(ledger, [answer("early", version="v1"), answer("early", version="v2")])
    assert truths(ledger) == {("early", 0, "v1"): "setosa", ("early", 0, "v2"): "setosa"}
    assert [p.truth for p in ledger.pairs("iris", "v1", "v2")] == ["setosa"]


def test_duplicate_feedback_last_wins_and_is_counted(ledger: Ledger) -> None:
    record_all(ledger, [answer("a"), answer("b")])
    assert ledger.add_feedback("iris", [("a", 0, "setosa")]).duplicates == 0
    batch = [("a", 0, "virginica"), ("b", 0, "setosa"), ("b", 0, "versicolor")]
    assert ledger.add_feedback("iris", batch) == FeedbackResult(3, 3, 0, 2)
    assert truths(ledger) == {("a", 0, "v1"): "virginica", ("b", 0, "v1"): "versicolor"}


def test_the_same_label_sent_at_once_counts_every_duplicate(url: str) -> None:
    """Threads sending the same (request id, row) at once, each through its own
    connection: every label but the first is a duplicate, whatever the interleaving.
    (The count was read before the upsert, so two at once could both read none.)"""
    senders, rounds = 4, 5
    ledgers = [Ledger(url, flush_interval_s=0.01) for _ in range(senders)]
    for each in ledgers:
        each.start()
    try:
        record_all(ledgers[0], [answer(f"r{k}") for k in range(rounds)])
        for k in range(rounds):
            barrier = threading.Barrier(senders)

            def send(each: Ledger, k: int = k, barrier: threading.Barrier = barrier) -> int:
                barrier.wait()
                return each.add_feedback("iris", [(f"r{k}", 0, "setosa")]).duplicates

            with ThreadPoolExecutor(senders) as pool:
                counts = list(pool.map(send, ledgers))
            assert sorted(counts) == [0] + [1] * (senders - 1), (k, counts)
    finally:
        for each in ledgers:
            each.stop()


def test_feedback_is_per_model(ledger: Ledger) -> None:
    record_all(ledger, [answer("a", model="iris"), answer("a", model="wine")])
    ledger.add_feedback("wine", [("a", 0, "red")])
    assert truths(ledger, "iris") == {("a", 0, "v1"): None}
    assert truths(ledger, "wine") == {("a", 0, "v1"): "red"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (("", 0, "setosa"), "feedback item 1: request_id is empty"),
        (("b", -1, "setosa"), "feedback item 1: row must be a non-negative integer, got -1"),
        (("b", True, "setosa"), "feedback item 1: row must be a non-negative integer"),
        (("b", 0, ""), "feedback item 1: truth is empty"),
        (("b", 0), "feedback item 1: expected"),
    ],
)
def test_invalid_feedback_is_refused_whole(ledger: Ledger, bad: Any, message: str) -> None:
    record_all(ledger, [answer("a"), answer("b")])
    with pytest.raises(ValueError, match=message):
        ledger.add_feedback("iris", [("a", 0, "setosa"), bad])
    assert truths(ledger) == {("a", 0, "v1"): None, ("b", 0, "v1"): None}


# -- pairs --------------------------------------------------------------------------------


def test_pairs_are_rows_both_versions_answered_ok_with_known_truth(ledger: Ledger) -> None:
    record_all(
        ledger,
        [
            answer("both", version="v1"),
            answer("both", version="v2"),
            answer("failed", version="v1"),
            answer("failed", version="v2", status="UNAVAILABLE", labels=None),
            answer("alone", version="v1"),
            answer("unlabelled", version="v1"),
            answer("unlabelled", version="v2"),
            answer("multi", 2, version="v1", labels=["setosa", "versicolor"]),
            answer("multi", 2, version="v2", labels=["virginica", "versicolor"]),
            answer("both", model="wine", version="v1"),
            answer("both", model="wine", version="v2"),
        ],
    )
    labels = [("both", 0, "setosa"), ("failed", 0, "setosa"), ("alone", 0, "setosa")]
    ledger.add_feedback("iris", [*labels, ("multi", 0, "virginica"), ("multi", 1, "setosa")])
    pairs = {(p.request_id, p.row): p for p in ledger.pairs("iris", "v1", "v2")}
    assert set(pairs) == {("both", 0), ("multi", 0), ("multi", 1)}
    assert (pairs[("multi", 0)].truth, pairs[("multi", 1)].truth) == ("virginica", "setosa")
    assert (pairs[("multi", 0)].primary_label, pairs[("multi", 0)].candidate_label) == (
        "setosa",
        "virginica",
    )
    reversed_pairs = ledger.pairs("iris", "v2", "v1")
    assert {(p.request_id, p.row, p.primary_label) for p in reversed_pairs} == {
        ("both", 0, "setosa"),
        ("multi", 0, "virginica"),
        ("multi", 1, "versicolor"),
    }
    assert ledger.pairs("wine", "v1", "v2") == []


def test_pairs_of_mixed_multi_row_answers_use_the_latest_ok_answers(ledger: Ledger) -> None:
    # Sent before any answer to "m": kept (unmatched), and never joins its 3-row answers.
    assert ledger.add_feedback("iris", [("m", 9, "beyond")]).unmatched == 1
    record_all(
        ledger,
        [
            # v1 answered "m" twice: the second answer stands.
            answer("m", 3, version="v1", labels=["old", "old", "old"]),
            answer("m", 3, version="v2", labels=["b0", "b1", "b2"]),
            answer("m", 3, version="v1", labels=["a0", "a1", "a2"]),
            # v2's latest answer to "m" failed: its latest OK answer stands.
            answer("m", 3, version="v2", status="DEADLINE_EXCEEDED", labels=None),
            # A reused id answered with fewer rows by one version: only common rows pair.
            answer("short", 4, version="v1", labels=["s0", "s1", "s2", "s3"]),
            answer("short", 2, version="v2", labels=["t0", "t1"]),
            # Regression and classification answers side by side, one 1-row, one 5-row.
            answer("reg", 5, version="v1", labels=None, values=[0.0, 1.0, 2.0, 3.0, 4.0]),
            answer("reg", 5, version="v2", labels=None, values=[0.5, 1.5, 2.5, 3.5, 4.5]),
            answer("one", version="v1", labels="x"),
            answer("one", version="v2", labels="y"),
        ],
    )
    truth = [("m", 0, "T0"), ("m", 2, "T2"), ("short", 1, "S1"), ("short", 3, "S3")]
    truth += [("reg", 4, "4.2"), ("reg", 1, "1.2"), ("one", 0, "z")]
    ledger.add_feedback("iris", truth)
    got = [
        (p.request_id, p.row, p.truth, p.primary_label, p.primary_value, *candidate)
        for p in ledger.pairs("iris", "v1", "v2")
        for candidate in [(p.candidate_label, p.candidate_value)]
    ]
    assert got == [
        ("m", 0, "T0", "a0", None, "b0", None),
        ("m", 2, "T2", "a2", None, "b2", None),
        ("short", 1, "S1", "s1", None, "t1", None),
        ("reg", 1, "1.2", None, 1.0, None, 1.5),
        ("reg", 4, "4.2", None, 4.0, None, 4.5),
        ("one", 0, "z", "x", None, "y", None),
    ]


def test_pairs_and_rows_honour_since_and_carry_regression_values(ledger: Ledger) -> None:
    old, new = 1_000.0, 2_000.0
    record_all(
        ledger,
        [
            answer("old", version="v1", labels=None, values=[1.0], created_at=old),
            answer("old", version="v2", labels=None, values=[1.5], created_at=old),
            answer("new", version="v1", labels=None, values=[2.0], created_at=new),
            answer("new", version="v2", labels=None, values=[2.5], created_at=new),
        ],
    )
    ledger.add_feedback("iris", [("old", 0, "1.2"), ("new", 0, "2.2")])
    [pair] = ledger.pairs("iris", "v1", "v2", since=1_500.0)
    assert (pair.request_id, pair.truth, pair.primary_value, pair.candidate_value) == (
        "new",
        "2.2",
        2.0,
        2.5,
    )
    assert len(ledger.pairs("iris", "v1", "v2")) == 2
    rows = ledger.rows("iris", since=1_500.0)
    assert [(r.request_id, r.version, r.value, r.truth) for r in rows] == [
        ("new", "v1", 2.0, "2.2"),
        ("new", "v2", 2.5, "2.2"),
    ]
    assert rows[0].probabilities == (0.7, 0.2, 0.1)
    assert rows[0].classes == ("setosa", "versicolor", "virginica")


# -- any interleaving gives the same join as a reference model ----------------------------

REQUEST_IDS = ["a", "b", "c"]
KEYS = [(r, i) for r in REQUEST_IDS for i in range(4)]

# An answer: (request id, version, rows, answered OK).
record_op = st.tuples(
    st.just("record"),
    st.lists(
        st.tuples(
            st.sampled_from(REQUEST_IDS),
            st.sampled_from(["v1", "v2"]),
            st.integers(0, 3),
            st.booleans(),
        ),
        max_size=6,
    ),
)
feedback_op = st.tuples(
    st.just("feedback"),
    st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(["x", "y", "z"])), max_size=6),
)
flush_op = st.tuples(st.just("flush"), st.just(()))
operations = st.lists(st.one_of(record_op, feedback_op, flush_op), max_size=12)


class Reference:
    """What the ledger should answer, computed in plain Python. Answer number ``n`` labels
    its row ``i`` "n:i", so that pairs show which answer they came from."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str, int, bool]] = []
        self.truth: dict[tuple[str, int], str] = {}

    def record(self, model: str, request_id: str, version: str, rows: int, ok: bool) -> Answer:
        n = len(self.answers)
        self.answers.append((request_id, version, rows, ok))
        return Answer(
            request_id=request_id, model=model, version=version, role="shadow", rows=rows,
            labels=tuple(f"{n}:{i}" for i in range(rows)) if ok else None,
            values=None, probabilities=None, classes=None, latency_ms=1.0,
            status="OK" if ok else "INTERNAL", created_at=1.0,
        )  # fmt: skip

    def feedback(self, items: list[tuple[tuple[str, int], str]]) -> FeedbackResult | None:
        """None: refused whole (a row that a recorded answer to its id does not have)."""
        most: dict[str, int] = {}
        for r, _, rows, _ in self.answers:
            most[r] = max(most.get(r, 0), rows)
        if any(r in most and i >= most[r] for (r, i), _ in items):
            return None
        answered = {(r, i) for r, _, rows, _ in self.answers for i in range(rows)}
        seen = set(self.truth)
        duplicates = 0
        for key, value in items:
            duplicates += key in seen
            seen.add(key)
            self.truth[key] = value
        matched = sum(key in answered for key, _ in items)
        return FeedbackResult(len(items), matched, len(items) - matched, duplicates)

    def rows(self) -> list[tuple[str, int, str, str | None, str | None]]:
        return [
            (r, i, v, f"{n}:{i}" if ok else None, self.truth.get((r, i)))
            for n, (r, v, rows, ok) in enumerate(self.answers)
            for i in range(rows)
        ]

    def pairs(self) -> dict[tuple[str, int], tuple[str, str, str]]:
        latest: dict[tuple[str, str], tuple[int, int]] = {}  # (version, id) -> (n, rows)
        for n, (r, v, rows, ok) in enumerate(self.answers):
            if ok:
                latest[(v, r)] = (n, rows)
        paired = {}
        for (r, i), truth in self.truth.items():
            a, b = latest.get(("v1", r)), latest.get(("v2", r))
            if a and b and i < min(a[1], b[1]):
                paired[(r, i)] = (truth, f"{a[0]}:{i}", f"{b[0]}:{i}")
        return paired


@pytest.fixture(scope="module", params=BACKENDS)
def shared_ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    """One ledger per backend for all examples; each example uses its own model name."""
    ledger = Ledger(_database(str(request.param), tmp_path_factory.mktemp("db"), request))
    ledger.start()
    yield ledger
    ledger.stop()


MODELS = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_any_interleaving_joins_like_the_reference(shared_ledger: Ledger, ops: Any) -> None:
    ledger, reference, model = shared_ledger, Reference(), f"m{next(MODELS)}"
    for kind, items in ops:
        if kind == "record":
            for item in items:
                ledger.record(reference.record(model, *item))
        elif kind == "feedback":
            expected = reference.feedback(items)
            if expected is None:
                with pytest.raises(ValueError, match="is out of range"):
                    ledger.add_feedback(model, [(r, i, truth) for (r, i), truth in items])
            else:
                got = ledger.add_feedback(model, [(r, i, truth) for (r, i), truth in items])
                assert got == expected
        else:
            assert ledger.flush()
    got_rows = [(r.request_id, r.row, r.version, r.label, r.truth) for r in ledger.rows(model)]
    assert got_rows == reference.rows()
    assert ledger.count(model) == len(got_rows)
    got_pairs = {
        (p.request_id, p.row): (p.truth, p.primary_label, p.candidate_label)
        for p in ledger.pairs(model, "v1", "v2")
    }
    assert got_pairs == reference.pairs()


def test_a_deployment_saved_against_a_stale_copy_is_refused(url: str) -> None:
    """Two writers (workers, gateways) computed changes from the same stored deployment:
    the second save finds it replaced and stores nothing (both backends: PostgreSQL locks
    the table, SQLite takes its write lock first)."""
    first, second = Ledger(url), Ledger(url)
    first.start()
    second.start()
    try:
        base = {"primary": "1", "shadows": []}
        with pytest.raises(store.DeploymentConflict):  # none is stored yet
            first.save_deployment("m", base, "initial", check=True, expected=base)
        first.save_deployment("m", base, "initial", check=True, expected=None)
        first.save_deployment(
            "m", {"primary": "2", "shadows": []}, "promote", check=True, expected=base
        )
        with pytest.raises(store.DeploymentConflict) as conflict:
            second.save_deployment(
                "m", {"primary": "1", "shadows": ["3"]}, "x", check=True, expected=base
            )
        assert conflict.value.stored == {"primary": "2", "shadows": []}
        assert second.deployment("m") == {"primary": "2", "shadows": []}
        assert [h.reason for h in second.history("m")] == ["initial", "promote"]
    finally:
        first.stop()
        second.stop()
