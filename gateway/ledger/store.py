"""The ledger's queries: the only module that talks SQL.

Every method is synchronous and opens its own short transaction, so it may be called from
the writer thread and from worker threads at once. Nothing here buffers: batching is the
writer's job (``writer.py``).
"""

from __future__ import annotations

import itertools
import json
import operator
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite

from gateway.ledger import migrate
from gateway.ledger.governance import append as append_journal
from gateway.ledger.records import (
    Answer,
    FeedbackResult,
    HistoryEntry,
    JournalEntry,
    LabelledRow,
    PackedAnswer,
    PairedRow,
)
from gateway.ledger.schema import answers, deployment_history, deployments, feedback, versions

# How long a SQLite writer waits for another connection's lock before the driver raises.
SQLITE_BUSY_TIMEOUT_S = 5.0
# Request ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits.
IN_CHUNK = 500
# Answers read at a time when a window is streamed (``Store.iter_rows``).
READ_CHUNK = 1000
# Feedback rows per upsert statement (all in one transaction).
UPSERT_CHUNK = 5000
# The largest row index feedback may name: ``answers.rows`` and ``feedback.row`` are
# 32-bit integers (PostgreSQL), so no answer can have a row beyond it, and storing one
# would fail there.
MAX_FEEDBACK_ROW = 2**31 - 1

# Packed float arrays: float64, little-endian, whatever the machine.
FLOAT = np.dtype("<f8")

Key = tuple[str, int]


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here: SQLAlchemy would otherwise pick psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> sa.Engine:
    """An engine tuned per database: SQLite in WAL mode, PostgreSQL with pre-ping."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre-ping: a gateway outlives database restarts; a dead pooled connection is replaced.
    return sa.create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    """WAL lets readers (report, feedback) run while the writer writes; NORMAL is durable
    across application crashes, and only an OS crash can lose the last transactions."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying (database locked, down, connection lost) as opposed to rows
    the database will never accept, which are better isolated one by one."""
    return isinstance(error, exc.OperationalError | exc.InterfaceError | exc.DisconnectionError)


class Store:
    """Queries over one database; safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        on_sqlite = self.engine.dialect.name == "sqlite"
        self._raw_answers = _raw_insert(self.engine) if on_sqlite else None

    def migrate(self) -> None:
        migrate.upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- answers ----------------------------------------------------------------------

    def insert(self, batch: Sequence[tuple[sa.Table, dict[str, Any]]]) -> None:
        """One transaction, one executemany per table: all items or none. ``batch`` holds
        (table, parameters) pairs packed by the writer (answers, sampled inputs)."""
        by_table: dict[sa.Table, list[dict[str, Any]]] = {}
        for table, params in batch:
            by_table.setdefault(table, []).append(params)
        with self.engine.begin() as connection:
            for table, rows in by_table.items():
                if table is answers and self._raw_answers is not None:
                    sql, keys = self._raw_answers
                    connection.exec_driver_sql(sql, [tuple(r[k] for k in keys) for r in rows])
                else:
                    connection.execute(table.insert(), rows)

    def count_rows(self, model: str | None = None) -> int:
        """Prediction rows (the sum of the answers' rows), of one model or all."""
        query = sa.select(sa.func.coalesce(sa.func.sum(answers.c.rows), 0))
        if model is not None:
            query = query.where(answers.c.model == model)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def rows(self, model: str, since: float | None = None) -> list[LabelledRow]:
        """Every answer of the model since ``since``, oldest first, expanded into rows."""
        return list(self.iter_rows(model, since))

    def iter_rows(self, model: str, since: float | None = None) -> Iterator[LabelledRow]:
        """``rows`` as a stream: answers are read ``READ_CHUNK`` at a time, so a window of
        millions of rows is evaluated in bounded memory.

        Truth is fetched per chunk (one query for the feedback of its request ids) and
        matched by row here: joining it in SQL would repeat each answer's packed columns
        once per labelled row.
        """
        a = answers
        selected = a.c.model == model
        if since is not None:
            selected = sa.and_(selected, a.c.created_at >= since)
        query = sa.select(*_ANSWER_COLUMNS).where(selected).order_by(a.c.id)
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=READ_CHUNK).execute(query)
            for chunk in result.partitions():
                ids = sorted({r.request_id for r in chunk})
                truth = _truths_of(connection, model, ids)
                for r in chunk:
                    yield from _expand(r, truth.get(r.request_id, {}))

    def pairs(
        self, model: str, primary: str, candidate: str, since: float | None = None
    ) -> list[PairedRow]:
        """Rows both versions answered OK and whose truth is known."""
        return list(self.iter_pairs(model, primary, candidate, since))

    def iter_pairs(
        self, model: str, primary: str, candidate: str, since: float | None = None
    ) -> Iterator[PairedRow]:
        """``pairs`` as a stream, read ``READ_CHUNK`` answer pairs at a time.

        A client may reuse a request id; the latest OK answer of each version then stands,
        so each (request id, row) is paired once. ``since`` applies to the primary's answer.
        """
        latest_a = _latest_ok(model, primary, since).subquery("la")
        latest_b = _latest_ok(model, candidate, None).subquery("lb")
        a, b = answers.alias("a"), answers.alias("b")
        query = (
            sa.select(
                a.c.request_id, a.c.rows, a.c.labels, a.c.value_data,
                b.c.rows, b.c.labels, b.c.value_data,
            )
            .select_from(
                latest_a.join(a, a.c.id == latest_a.c.id)
                .join(latest_b, latest_b.c.request_id == latest_a.c.request_id)
                .join(b, b.c.id == latest_b.c.id)
            )
            .order_by(a.c.id)
        )  # fmt: skip
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=READ_CHUNK).execute(query)
            for chunk in result.partitions():
                truth = _truths_of(connection, model, sorted({r[0] for r in chunk}))
                for found in chunk:
                    yield from _paired(found, truth.get(found[0]))

    # -- feedback ---------------------------------------------------------------------

    def add_feedback(
        self, model: str, items: Sequence[tuple[str, int, str]], now: float, first: int = 0
    ) -> FeedbackResult:
        """Upsert validated items (last wins) and say how each one landed, in one
        transaction. ValueError (nothing stored) when an item names a row that the recorded
        answer to its request id does not have: it could never join. An item whose request
        id has no answer yet is kept; it joins when an answer with that row is read
        (``iter_rows``, ``iter_pairs``: a truth joins only a row the answer has)."""
        latest: dict[Key, str] = {}
        repeated = 0
        for request_id, row, truth in items:
            repeated += (request_id, row) in latest
            latest[(request_id, row)] = truth
        with self.engine.begin() as connection:
            answered = _answered_rows(connection, model, {request_id for request_id, _ in latest})
            _check_rows(items, answered, first)
            _upsert_feedback(connection, model, latest, now)
            # Read after the upsert, in its transaction: each row is then locked (the whole
            # database, in SQLite) until the commit, so that of labels for one key sent
            # at once, exactly one finds itself the first (revisions 1).
            known = _revised_keys(connection, model, latest)
        matched = sum(row < answered.get(request_id, 0) for request_id, row, _ in items)
        return FeedbackResult(
            accepted=len(items),
            matched=matched,
            unmatched=len(items) - matched,
            duplicates=repeated + len(known),
        )

    # -- deployments ------------------------------------------------------------------

    def save_deployment(
        self,
        model: str,
        spec: dict[str, Any],
        reason: str,
        actor: str,
        *,
        now: float,
        kind: str = "deployment",
        version: str | None = None,
        check: bool = False,
        expected: dict[str, Any] | None = None,
    ) -> None:
        """Current state, its history entry and its journal entry change together or not
        at all. ``check``: only if the stored deployment is still ``expected`` (None: none
        stored), what the writer last saw; if another writer stored a different one
        meanwhile, DeploymentConflict and nothing is saved."""
        text = json.dumps(spec, sort_keys=True)
        with self.engine.begin() as connection:
            if check:
                stored = _locked_deployment(connection, model)
                if stored != expected:
                    raise DeploymentConflict(model, stored)
            insert = _dialect_insert(connection, deployments)
            connection.execute(
                insert.values(model=model, spec=text, updated_at=now).on_conflict_do_update(
                    index_elements=[deployments.c.model],
                    set_={"spec": text, "updated_at": now},
                )
            )
            connection.execute(
                deployment_history.insert().values(
                    model=model, at=now, spec=text, reason=reason, actor=actor
                )
            )
            entry = JournalEntry(now, kind, version, reason, actor, spec)
            append_journal(connection, model, entry)

    def deployment(self, model: str) -> dict[str, Any] | None:
        query = sa.select(deployments.c.spec).where(deployments.c.model == model)
        with self.engine.connect() as connection:
            text = connection.execute(query).scalar_one_or_none()
        return None if text is None else dict(json.loads(text))

    def changes(self) -> tuple[int, int]:
        """How many deployment changes and version registrations were ever saved (of
        every model): cheap counters that move with every commit. Counts, not the highest
        ids: PostgreSQL transactions may commit their sequence ids out of order."""
        count = sa.func.count
        query = sa.select(
            sa.select(count()).select_from(deployment_history).scalar_subquery(),
            sa.select(count()).select_from(versions).scalar_subquery(),
        )
        with self.engine.connect() as connection:
            deployed, registered = connection.execute(query).one()
        return int(deployed), int(registered)

    def history(self, model: str) -> list[HistoryEntry]:
        h = deployment_history
        query = (
            sa.select(h.c.at, h.c.spec, h.c.reason, h.c.actor)
            .where(h.c.model == model)
            .order_by(h.c.id)
        )
        with self.engine.connect() as connection:
            return [
                HistoryEntry(at=r.at, spec=json.loads(r.spec), reason=r.reason, actor=r.actor)
                for r in connection.execute(query)
            ]


# -- helpers --------------------------------------------------------------------------


_ANSWER_COLUMNS = (
    answers.c.request_id,
    answers.c.version,
    answers.c.role,
    answers.c.rows,
    answers.c.labels,
    answers.c.value_data,
    answers.c.probabilities,
    answers.c.classes,
    answers.c.k,
    answers.c.latency_ms,
    answers.c.status,
    answers.c.created_at,
)


def _raw_insert(engine: sa.Engine) -> tuple[str, tuple[str, ...]]:
    """The answers' INSERT as SQLite's own SQL and its parameters' order: executed as is,
    it skips SQLAlchemy's per-row parameter processing, half the cost of writing a 1-row
    answer (none of these columns' types needs a conversion that sqlite3 does not make).
    PostgreSQL keeps SQLAlchemy's path, which batches rows into multi-row INSERTs."""
    compiled = (
        answers.insert()
        .values({key: sa.bindparam(key) for key in ANSWER_KEYS})
        .compile(dialect=engine.dialect)
    )
    assert compiled.positiontup is not None  # sqlite's paramstyle is qmark
    return str(compiled), tuple(compiled.positiontup)


ANSWER_KEYS = (
    "model", "request_id", "version", "role", "rows", "labels", "value_data",
    "probabilities", "classes", "k", "latency_ms", "status", "created_at",
)  # fmt: skip


def answer_params(answer: Answer | PackedAnswer) -> tuple[tuple[sa.Table, dict[str, Any]], int]:
    """Pack an answer into one row's parameters, and say how many rows it holds.

    Runs in the writer (thread or process). Raises (TypeError, ValueError) for an answer
    that is not self-consistent, so that it is counted as failed rather than stored
    unreadable. Plain Python values only: numpy scalars would reach neither SQLite nor
    psycopg.
    """
    if isinstance(answer, PackedAnswer):
        return _packed_params(answer)
    if not isinstance(answer, Answer):
        raise TypeError(f"expected an Answer, got {type(answer).__name__}")
    rows = operator.index(answer.rows)
    if rows < 0:
        raise ValueError(f"answer rows must be >= 0, got {rows}")
    labels = value_data = probabilities = None
    k = 0
    if answer.status == "OK":
        if answer.labels is not None:
            if len(answer.labels) != rows:
                raise ValueError(f"answer labels: {len(answer.labels)} for {rows} rows")
            labels = json.dumps([str(label) for label in answer.labels])
        if answer.values is not None:
            values = np.asarray(answer.values, dtype=FLOAT)
            if values.shape != (rows,):
                raise ValueError(f"answer values: shape {values.shape}, want ({rows},)")
            value_data = values.tobytes()
        if answer.probabilities is not None:
            matrix = np.asarray(answer.probabilities, dtype=FLOAT)
            if matrix.ndim != 2 or matrix.shape[0] != rows:
                raise ValueError(f"answer probabilities: shape {matrix.shape}, want ({rows}, k)")
            k = int(matrix.shape[1])
            probabilities = matrix.tobytes()  # C order: row-major
    params = _row(
        answer, rows=rows, labels=labels, value_data=value_data,
        probabilities=probabilities, k=k, status=answer.status,
    )  # fmt: skip
    return (answers, params), rows


def _packed_params(answer: PackedAnswer) -> tuple[tuple[sa.Table, dict[str, Any]], int]:
    rows, k = answer.rows, answer.k
    if rows < 0 or k < 0:
        raise ValueError(f"answer rows and k must be >= 0, got {rows} and {k}")
    if answer.values is not None and len(answer.values) != rows * FLOAT.itemsize:
        raise ValueError(f"answer values: {len(answer.values)} bytes for {rows} rows")
    if answer.probabilities is not None and len(answer.probabilities) != rows * k * 8:
        raise ValueError(
            f"answer probabilities: {len(answer.probabilities)} bytes, want ({rows}, {k})"
        )
    params = _row(
        answer, rows=rows, labels=answer.labels, value_data=answer.values,
        probabilities=answer.probabilities, k=k, status="OK",
    )  # fmt: skip
    return (answers, params), rows


def _row(
    answer: Answer | PackedAnswer,
    *,
    rows: int,
    labels: str | None,
    value_data: bytes | None,
    probabilities: bytes | None,
    k: int,
    status: str,
) -> dict[str, Any]:
    """The one place an answer's row is laid out (its keys are ``ANSWER_KEYS``)."""
    return {
        "model": answer.model,
        "request_id": answer.request_id,
        "version": answer.version,
        "role": answer.role,
        "rows": rows,
        "labels": labels,
        "value_data": value_data,
        "probabilities": probabilities,
        "classes": None if answer.classes is None else _dump_classes(tuple(answer.classes)),
        "k": k,
        "latency_ms": float(answer.latency_ms),
        "status": status,
        "created_at": float(answer.created_at),
    }


@lru_cache(maxsize=1024)
def _dump_classes(classes: tuple[str, ...]) -> str:
    """Cached: every answer of a model repeats the same class list."""
    return json.dumps([str(c) for c in classes])


@lru_cache(maxsize=1024)
def _load_classes(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _load_labels(text: str | None) -> list[str] | None:
    return None if text is None else list(json.loads(text))


def _load_values(data: bytes | None) -> list[float] | None:
    return None if data is None else list(np.frombuffer(data, dtype=FLOAT).tolist())


def _expand(r: sa.Row[*tuple[Any, ...]], truth: dict[int, str]) -> list[LabelledRow]:
    """One answer's rows, each with its truth. Built column-wise and positionally: with
    thousands of rows per answer, this loop is what reading costs."""
    rows = r.rows
    absent = itertools.repeat(None)  # stateless: zip stops at range(rows)
    labels = _load_labels(r.labels) or absent
    values = _load_values(r.value_data) or absent
    probabilities: Iterable[tuple[float, ...] | None] = absent
    if r.probabilities is not None:
        matrix = np.frombuffer(r.probabilities, dtype=FLOAT).reshape(rows, r.k)
        probabilities = map(tuple, matrix.tolist())
    classes = None if r.classes is None else _load_classes(r.classes)
    request_id, version, role = r.request_id, r.version, r.role
    latency_ms, status, created_at = r.latency_ms, r.status, r.created_at
    get_truth = truth.get
    common = (classes, latency_ms, status, created_at)
    return [
        LabelledRow(request_id, row, version, role, label, value, p, *common, get_truth(row))
        for row, label, value, p in zip(range(rows), labels, values, probabilities, strict=False)
    ]


def _paired(found: sa.Row[*tuple[Any, ...]], known: dict[int, str] | None) -> Iterator[PairedRow]:
    """One request's rows that both answers cover and that have a truth."""
    if not known:
        return
    request_id, a_rows, a_labels, a_values, b_rows, b_labels, b_values = found
    rows = min(a_rows, b_rows)
    a_label, a_value = _load_labels(a_labels), _load_values(a_values)
    b_label, b_value = _load_labels(b_labels), _load_values(b_values)
    for row in sorted(known):
        if row < rows:
            yield PairedRow(
                request_id, row, known[row],
                None if a_label is None else a_label[row],
                None if a_value is None else a_value[row],
                None if b_label is None else b_label[row],
                None if b_value is None else b_value[row],
            )  # fmt: skip


def _latest_ok(model: str, version: str, since: float | None) -> sa.Select[Any]:
    """(request id, id of the version's latest OK answer to it)."""
    a = answers
    query = (
        sa.select(a.c.request_id, sa.func.max(a.c.id).label("id"))
        .where(a.c.model == model, a.c.version == version, a.c.status == "OK")
        .group_by(a.c.request_id)
    )
    if since is not None:
        query = query.where(a.c.created_at >= since)
    return query


def _truths_of(
    connection: sa.Connection, model: str, request_ids: Sequence[str]
) -> dict[str, dict[int, str]]:
    """Known truth by request id and row, for a list of request ids (in IN-sized slices)."""
    f = feedback
    truth: dict[str, dict[int, str]] = {}
    for start in range(0, len(request_ids), IN_CHUNK):
        chunk = request_ids[start : start + IN_CHUNK]
        query = sa.select(f.c.request_id, f.c.row, f.c.truth).where(
            f.c.model == model, f.c.request_id.in_(chunk)
        )
        for request_id, row, value in connection.execute(query):
            truth.setdefault(request_id, {})[row] = value
    return truth


def _revised_keys(connection: sa.Connection, model: str, keys: Iterable[Key]) -> set[Key]:
    """Which of ``keys`` had feedback before this transaction's upsert (which counts one
    revision per key), looked up by request id."""
    wanted = set(keys)
    request_ids = sorted({request_id for request_id, _ in wanted})
    f = feedback
    found: set[Key] = set()
    for start in range(0, len(request_ids), IN_CHUNK):
        chunk = request_ids[start : start + IN_CHUNK]
        query = sa.select(f.c.request_id, f.c.row).where(
            f.c.model == model, f.c.request_id.in_(chunk), f.c.revisions > 1
        )
        found.update((r[0], r[1]) for r in connection.execute(query))
    return found & wanted


def _answered_rows(
    connection: sa.Connection, model: str, request_ids: Iterable[str]
) -> dict[str, int]:
    """For each request id with an answer (OK or failed): the most rows any answer has."""
    ids = sorted(set(request_ids))
    a = answers
    answered: dict[str, int] = {}
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        query = (
            sa.select(a.c.request_id, sa.func.max(a.c.rows))
            .where(a.c.model == model, a.c.request_id.in_(chunk))
            .group_by(a.c.request_id)
        )
        answered.update((r[0], int(r[1])) for r in connection.execute(query))
    return answered


class DeploymentConflict(Exception):
    """The stored deployment is not the one a change was computed from."""

    def __init__(self, model: str, stored: dict[str, Any] | None) -> None:
        super().__init__(f"the deployment of '{model}' changed meanwhile: {stored}")
        self.stored = stored


def _locked_deployment(connection: sa.Connection, model: str) -> dict[str, Any] | None:
    """The stored deployment, read under a lock that no other deployment writer can share
    until this transaction ends: PostgreSQL's table lock; on SQLite a write (the first one
    begins the transaction and takes the database's write lock)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("LOCK TABLE deployments IN SHARE ROW EXCLUSIVE MODE")
    else:
        connection.execute(
            deployments.update()
            .where(deployments.c.model == model)
            .values(updated_at=deployments.c.updated_at)
        )
    query = sa.select(deployments.c.spec).where(deployments.c.model == model)
    text = connection.execute(query).scalar_one_or_none()
    return None if text is None else dict(json.loads(text))


def _check_rows(
    items: Sequence[tuple[str, int, str]], answered: dict[str, int], first: int = 0
) -> None:
    """ValueError naming the first item that can never join: its recorded answer has no
    such row, or (no answer yet) no answer can have it."""
    for index, (request_id, row, _) in enumerate(items):
        rows = answered.get(request_id)
        if rows is not None and row >= rows:
            raise ValueError(
                f"feedback item {first + index}: row {row} is out of range: the recorded answer to "
                f"request {request_id!r} has {rows} row{'' if rows == 1 else 's'} "
                f"(rows are numbered from 0)"
            )
        if row > MAX_FEEDBACK_ROW:
            raise ValueError(
                f"feedback item {first + index}: row {row} is beyond any answer "
                f"(rows are numbered up to {MAX_FEEDBACK_ROW})"
            )


def _upsert_feedback(
    connection: sa.Connection, model: str, latest: dict[Key, str], now: float
) -> None:
    insert = _dialect_insert(connection, feedback)
    statement = insert.on_conflict_do_update(
        index_elements=[feedback.c.model, feedback.c.request_id, feedback.c.row],
        set_={
            "truth": insert.excluded.truth,
            "updated_at": insert.excluded.updated_at,
            "revisions": feedback.c.revisions + 1,
        },
    )
    # In slices, within the caller's transaction: a large call never holds every item's
    # parameters at once.
    keys = iter(latest.items())
    while part := list(itertools.islice(keys, UPSERT_CHUNK)):
        params = [
            {
                "model": model,
                "request_id": request_id,
                "row": row,
                "truth": truth,
                "received_at": now,
                "updated_at": now,
                "revisions": 1,
            }
            for (request_id, row), truth in part
        ]
        connection.execute(statement, params)


def _dialect_insert(
    connection: sa.Connection, table: sa.Table
) -> postgresql.Insert | sqlite.Insert:
    """Both dialects spell upsert as ON CONFLICT, through their own Insert class."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
