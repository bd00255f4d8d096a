"""The prediction ledger and feedback store, against SQLite and a real PostgreSQL.

PostgreSQL comes from ``tests/pg.py`` (one throwaway cluster per session, one database per
test). Without its binaries the postgres cases fail with the install hint: a green run
must mean both databases were exercised.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ledger import FeedbackResult, Ledger, Prediction, Role
from gateway.ledger.migrate import current_revision
from gateway.ledger.schema import metadata
from gateway.ledger.schema import predictions as predictions_table
from tests.pg import Cluster, PostgresMissing, bin_dir, postgres_cluster

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        bin_dir()
        missing = None
    except PostgresMissing as e:
        missing = str(e)
    if missing:
        pytest.fail(missing, pytrace=False)
    with postgres_cluster() as cluster:
        yield cluster


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


def prediction(
    request_id: str,
    row: int = 0,
    *,
    model: str = "iris",
    version: str = "v1",
    role: Role = "primary",
    label: str | None = "setosa",
    value: float | None = None,
    status: str = "OK",
    created_at: float | None = None,
) -> Prediction:
    return Prediction(
        request_id=request_id,
        row=row,
        model=model,
        version=version,
        role=role,
        label=label,
        value=value,
        probabilities=(0.7, 0.2, 0.1),
        classes=("setosa", "versicolor", "virginica"),
        latency_ms=1.5,
        status=status,
        created_at=time.time() if created_at is None else created_at,
    )


def sql_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


# -- schema, migrations, restarts ---------------------------------------------------------


def test_migrations_create_the_schema_the_queries_use(url: str) -> None:
    ledger = Ledger(url)
    ledger.start()
    ledger.stop()
    engine = sql_engine(url)
    assert current_revision(engine) == "0001"
    tables = set(sa.inspect(engine).get_table_names())
    assert {"predictions", "feedback", "deployments", "deployment_history"} <= tables
    assert "alembic_version" in tables
    with engine.connect() as connection:
        drift = compare_metadata(MigrationContext.configure(connection), metadata)
    assert drift == [], "schema.py and the migrations disagree"
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("predictions")}
    assert {"ix_predictions_model_request_id_row", "ix_predictions_model_created_at"} <= indexes


def test_restart_keeps_predictions_feedback_and_deployments(url: str) -> None:
    first = Ledger(url)
    first.start()
    first.record([prediction("a"), prediction("b")])
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
    ledger = Ledger.for_data_dir(data_dir)
    ledger.start()
    ledger.record([prediction("a")])
    ledger.stop()
    with closing(sqlite3.connect(data_dir / "ledger.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT count(*) FROM predictions").fetchone()[0] == 1


def test_postgresql_urls_without_a_driver_mean_psycopg(pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database().replace("postgresql+psycopg://", "postgresql://")
    ledger = Ledger(url)
    ledger.start()
    ledger.record([prediction("a")])
    ledger.stop()
    assert Ledger(url).count() == 1


# -- the writer ---------------------------------------------------------------------------


def test_fifty_thousand_rows_from_another_thread_are_all_written(url: str) -> None:
    ledger = Ledger(url)
    ledger.start()
    rows = [prediction(f"r{i}", created_at=1.0) for i in range(50_000)]

    def produce() -> None:
        for i in range(len(rows)):
            ledger.record(rows[i : i + 1])

    began = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    ledger.stop()
    elapsed = time.perf_counter() - began
    backend = url.split(":", 1)[0]
    print(f"\nledger {backend}: {len(rows) / elapsed:,.0f} rows/s ({len(rows)} rows)")
    stats = ledger.stats
    assert (stats.recorded, stats.queued, stats.dropped, stats.failed) == (50_000, 0, 0, 0)
    assert ledger.count("iris") == 50_000


def stall(url: str) -> tuple[Any, threading.Event]:
    """Hold the predictions table locked (from another connection) until the event is set."""
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
            pg.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    return holder, release


def test_a_stalled_database_never_blocks_record_and_memory_stays_bounded(url: str) -> None:
    ledger = Ledger(url, queue_rows=5_000, batch_rows=500, flush_interval_s=0.01)
    ledger.start()
    holder, release = stall(url)
    try:
        rows = [prediction(f"r{i}") for i in range(10_000)]
        began = time.perf_counter()
        for i in range(0, len(rows), 10):
            ledger.record(rows[i : i + 10])
        elapsed = time.perf_counter() - began
        assert elapsed < 0.05, f"record() took {elapsed * 1000:.0f} ms for 10k rows"
        stats = ledger.stats
        assert stats.queued == 5_000
        assert stats.dropped == 5_000
        assert stats.recorded == 0
        assert not ledger.flush(timeout=0.2)  # the database is still stalled
    finally:
        release.set()
        holder.join()
    assert ledger.flush(timeout=30)
    stats = ledger.stats
    assert (stats.recorded, stats.queued, stats.dropped, stats.failed) == (5_000, 0, 5_000, 0)
    assert ledger.count() == 5_000
    ledger.stop()


def test_database_errors_count_rows_as_failed_and_the_writer_goes_on(ledger: Ledger) -> None:
    ledger._writer.retry_delays = (0.01, 0.01)
    engine = sql_engine(ledger.url)
    predictions_table.drop(engine)
    ledger.record([prediction(f"lost{i}") for i in range(10)])
    assert ledger.flush(timeout=30)
    stats = ledger.stats
    assert (stats.recorded, stats.failed) == (0, 10)
    assert stats.last_error is not None
    assert "predictions" in stats.last_error

    predictions_table.create(engine)
    ledger.record([prediction(f"kept{i}") for i in range(5)])
    assert ledger.flush(timeout=30)
    assert (ledger.stats.recorded, ledger.stats.failed) == (5, 10)
    assert ledger.count() == 5


def test_one_row_the_database_rejects_does_not_lose_its_batch(pg_cluster: Cluster) -> None:
    ledger = Ledger(pg_cluster.create_database(), flush_interval_s=10)
    ledger.start()
    rows = [prediction(f"r{i}", label="nul\x00" if i == 3 else "ok") for i in range(10)]
    ledger.record(rows)
    assert ledger.flush(timeout=30)
    assert (ledger.stats.recorded, ledger.stats.failed) == (9, 1)
    assert "NUL" in (ledger.stats.last_error or "")
    ledger.stop()


def test_record_never_raises_and_rows_after_stop_are_counted(ledger: Ledger) -> None:
    ledger.record(None)  # type: ignore[arg-type]
    ledger.record([])
    ledger.stop()
    ledger.record([prediction("late"), prediction("later")])
    assert ledger.stats.dropped == 2
    ledger.start()
    ledger.record([prediction("again")])
    assert ledger.flush()
    assert ledger.count() == 1


def test_stop_writes_everything_still_queued(url: str) -> None:
    ledger = Ledger(url, flush_interval_s=60)  # the writer would wait a minute for more
    ledger.start()
    ledger.record([prediction(f"r{i}") for i in range(100)])
    began = time.monotonic()
    ledger.stop()
    assert time.monotonic() - began < 10
    assert ledger.count() == 100


# -- feedback -----------------------------------------------------------------------------


def truths(ledger: Ledger, model: str = "iris") -> dict[tuple[str, int, str], str | None]:
    return {(r.request_id, r.row, r.version): r.truth for r in ledger.rows(model)}


def test_feedback_right_after_the_answer_is_matched(url: str) -> None:
    ledger = Ledger(url, flush_interval_s=60)  # nothing reaches the database by itself
    ledger.start()
    ledger.record([prediction("a")])
    assert ledger.add_feedback("iris", [("a", 0, "setosa")]) == FeedbackResult(1, 1, 0, 0)
    assert truths(ledger) == {("a", 0, "v1"): "setosa"}
    ledger.stop()


def test_feedback_after_the_flush_is_matched(ledger: Ledger) -> None:
    ledger.record([prediction("a", 0), prediction("a", 1)])
    assert ledger.flush()
    result = ledger.add_feedback("iris", [("a", 0, "setosa"), ("a", 1, "virginica")])
    assert result == FeedbackResult(accepted=2, matched=2, unmatched=0, duplicates=0)


def test_feedback_for_an_unknown_id_is_kept_and_joined_later(ledger: Ledger) -> None:
    result = ledger.add_feedback("iris", [("early", 0, "setosa")])
    assert result == FeedbackResult(accepted=1, matched=0, unmatched=1, duplicates=0)
    assert ledger.rows("iris") == []
    ledger.record([prediction("early", version="v1"), prediction("early", version="v2")])
    assert truths(ledger) == {("early", 0, "v1"): "setosa", ("early", 0, "v2"): "setosa"}
    assert [p.truth for p in ledger.pairs("iris", "v1", "v2")] == ["setosa"]


def test_duplicate_feedback_last_wins_and_is_counted(ledger: Ledger) -> None:
    ledger.record([prediction("a"), prediction("b")])
    assert ledger.add_feedback("iris", [("a", 0, "setosa")]).duplicates == 0
    batch = [("a", 0, "virginica"), ("b", 0, "setosa"), ("b", 0, "versicolor")]
    assert ledger.add_feedback("iris", batch) == FeedbackResult(3, 3, 0, 2)
    assert truths(ledger) == {("a", 0, "v1"): "virginica", ("b", 0, "v1"): "versicolor"}


def test_feedback_is_per_model(ledger: Ledger) -> None:
    ledger.record([prediction("a", model="iris"), prediction("a", model="wine")])
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
    ledger.record([prediction("a"), prediction("b")])
    with pytest.raises(ValueError, match=message):
        ledger.add_feedback("iris", [("a", 0, "setosa"), bad])
    assert truths(ledger) == {("a", 0, "v1"): None, ("b", 0, "v1"): None}


# -- pairs --------------------------------------------------------------------------------


def test_pairs_are_rows_both_versions_answered_ok_with_known_truth(ledger: Ledger) -> None:
    both = [prediction("both", version=v) for v in ("v1", "v2")]
    ledger.record(
        [
            *both,
            prediction("failed", version="v1"),
            prediction("failed", version="v2", status="UNAVAILABLE", label=None),
            prediction("alone", version="v1"),
            prediction("unlabelled", version="v1"),
            prediction("unlabelled", version="v2"),
            prediction("multi", 0, version="v1", label="setosa"),
            prediction("multi", 0, version="v2", label="virginica"),
            prediction("multi", 1, version="v1", label="versicolor"),
            prediction("multi", 1, version="v2", label="versicolor"),
            prediction("both", model="wine", version="v1"),
            prediction("both", model="wine", version="v2"),
        ]
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


def test_pairs_and_rows_honour_since_and_carry_regression_values(ledger: Ledger) -> None:
    old, new = 1_000.0, 2_000.0
    ledger.record(
        [
            prediction("old", version="v1", label=None, value=1.0, created_at=old),
            prediction("old", version="v2", label=None, value=1.5, created_at=old),
            prediction("new", version="v1", label=None, value=2.0, created_at=new),
            prediction("new", version="v2", label=None, value=2.5, created_at=new),
        ]
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
    assert [(r.request_id, r.version, r.value) for r in rows] == [
        ("new", "v1", 2.0),
        ("new", "v2", 2.5),
    ]
    assert rows[0].probabilities == (0.7, 0.2, 0.1)
    assert rows[0].classes == ("setosa", "versicolor", "virginica")


# -- any interleaving gives the same join as a reference model ----------------------------

KEYS = [(r, i) for r in ("a", "b", "c") for i in (0, 1)]

record_op = st.tuples(
    st.just("record"),
    st.lists(
        st.tuples(st.sampled_from(KEYS), st.sampled_from(["v1", "v2"]), st.booleans()),
        max_size=8,
    ),
)
feedback_op = st.tuples(
    st.just("feedback"),
    st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(["x", "y", "z"])), max_size=6),
)
flush_op = st.tuples(st.just("flush"), st.just(()))
operations = st.lists(st.one_of(record_op, feedback_op, flush_op), max_size=12)


class Reference:
    """What the ledger should answer, computed in plain Python."""

    def __init__(self) -> None:
        self.predictions: list[tuple[str, int, str, bool]] = []
        self.truth: dict[tuple[str, int], str] = {}

    def feedback(self, items: list[tuple[tuple[str, int], str]]) -> FeedbackResult:
        predicted = {(r, i) for r, i, _, _ in self.predictions}
        seen = set(self.truth)
        duplicates = 0
        for key, value in items:
            duplicates += key in seen
            seen.add(key)
            self.truth[key] = value
        matched = sum(key in predicted for key, _ in items)
        return FeedbackResult(len(items), matched, len(items) - matched, duplicates)

    def rows(self) -> list[tuple[str, int, str, str | None]]:
        return [(r, i, v, self.truth.get((r, i))) for r, i, v, _ in self.predictions]

    def pairs(self) -> dict[tuple[str, int], str]:
        answered_ok = {(v, r, i) for r, i, v, ok in self.predictions if ok}
        return {
            (r, i): truth
            for (r, i), truth in self.truth.items()
            if ("v1", r, i) in answered_ok and ("v2", r, i) in answered_ok
        }


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
            reference.predictions += [(r, i, v, ok) for (r, i), v, ok in items]
            ledger.record([_reference_prediction(model, *item) for item in items])
        elif kind == "feedback":
            expected = reference.feedback(items)
            got = ledger.add_feedback(model, [(r, i, truth) for (r, i), truth in items])
            assert got == expected
        else:
            assert ledger.flush()
    got_rows = [(r.request_id, r.row, r.version, r.truth) for r in ledger.rows(model)]
    assert got_rows == reference.rows()
    got_pairs = {(p.request_id, p.row): p.truth for p in ledger.pairs(model, "v1", "v2")}
    assert got_pairs == reference.pairs()


def _reference_prediction(model: str, key: tuple[str, int], version: str, ok: bool) -> Prediction:
    return prediction(
        key[0], key[1], model=model, version=version, status="OK" if ok else "INTERNAL"
    )
