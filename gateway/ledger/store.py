"""The ledger's queries: the only module that talks SQL.

Every method is synchronous and opens its own short transaction, so it may be called from
the writer thread and from worker threads at once. Nothing here buffers: batching is the
writer's job (``writer.py``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite

from gateway.ledger import migrate
from gateway.ledger.records import (
    FeedbackResult,
    HistoryEntry,
    LabelledRow,
    PairedRow,
    Prediction,
)
from gateway.ledger.schema import deployment_history, deployments, feedback, predictions

# How long a SQLite writer waits for another connection's lock before the driver raises.
SQLITE_BUSY_TIMEOUT_S = 5.0
# Request ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits.
IN_CHUNK = 500

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

    def migrate(self) -> None:
        migrate.upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- predictions ------------------------------------------------------------------

    def insert_predictions(self, batch: Sequence[Prediction]) -> None:
        """One executemany in one transaction: all rows or none."""
        with self.engine.begin() as connection:
            connection.execute(predictions.insert(), [_prediction_params(p) for p in batch])

    def count_predictions(self, model: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(predictions)
        if model is not None:
            query = query.where(predictions.c.model == model)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def rows(self, model: str, since: float | None = None) -> list[LabelledRow]:
        p, f = predictions, feedback
        joined = p.outerjoin(f, _same_key(f, p))
        query = (
            sa.select(
                p.c.request_id,
                p.c.row,
                p.c.version,
                p.c.role,
                p.c.label,
                p.c.value,
                p.c.probabilities,
                p.c.classes,
                p.c.latency_ms,
                p.c.status,
                p.c.created_at,
                f.c.truth,
            )
            .select_from(joined)
            .where(p.c.model == model)
            .order_by(p.c.id)
        )
        if since is not None:
            query = query.where(p.c.created_at >= since)
        with self.engine.connect() as connection:
            return [_labelled(r) for r in connection.execute(query)]

    def pairs(
        self, model: str, primary: str, candidate: str, since: float | None = None
    ) -> list[PairedRow]:
        """Rows both versions answered OK and whose truth is known.

        A client may reuse a request id; the latest answer of each version then stands,
        so each (request id, row) is paired once.
        """
        a, b, f = predictions.alias("a"), predictions.alias("b"), feedback
        query = (
            sa.select(
                a.c.request_id, a.c.row, f.c.truth, a.c.label, a.c.value, b.c.label, b.c.value
            )
            .select_from(a.join(b, _same_key(b, a)).join(f, _same_key(f, a)))
            .where(a.c.model == model, a.c.version == primary, b.c.version == candidate)
            .where(a.c.status == "OK", b.c.status == "OK")
            .order_by(a.c.id, b.c.id)
        )
        if since is not None:
            query = query.where(a.c.created_at >= since)
        paired: dict[Key, PairedRow] = {}
        with self.engine.connect() as connection:
            for r in connection.execute(query):
                paired[(r[0], r[1])] = PairedRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6])
        return list(paired.values())

    # -- feedback ---------------------------------------------------------------------

    def add_feedback(
        self, model: str, items: Sequence[tuple[str, int, str]], now: float
    ) -> FeedbackResult:
        """Upsert validated items (last wins) and say how each one landed."""
        latest: dict[Key, str] = {}
        repeated = 0
        for request_id, row, truth in items:
            repeated += (request_id, row) in latest
            latest[(request_id, row)] = truth
        with self.engine.begin() as connection:
            known = _existing_keys(connection, feedback, model, latest)
            predicted = _existing_keys(connection, predictions, model, latest)
            _upsert_feedback(connection, model, latest, now)
        matched = sum((request_id, row) in predicted for request_id, row, _ in items)
        return FeedbackResult(
            accepted=len(items),
            matched=matched,
            unmatched=len(items) - matched,
            duplicates=repeated + len(known),
        )

    # -- deployments ------------------------------------------------------------------

    def save_deployment(
        self, model: str, spec: dict[str, Any], reason: str, actor: str, now: float
    ) -> None:
        """Current state and its history entry change together or not at all."""
        text = json.dumps(spec, sort_keys=True)
        with self.engine.begin() as connection:
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

    def deployment(self, model: str) -> dict[str, Any] | None:
        query = sa.select(deployments.c.spec).where(deployments.c.model == model)
        with self.engine.connect() as connection:
            text = connection.execute(query).scalar_one_or_none()
        return None if text is None else dict(json.loads(text))

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


def _same_key(table: sa.FromClause, other: sa.FromClause) -> sa.ColumnElement[bool]:
    return sa.and_(
        table.c.model == other.c.model,
        table.c.request_id == other.c.request_id,
        table.c.row == other.c.row,
    )


def _prediction_params(p: Prediction) -> dict[str, Any]:
    """Plain Python values only: numpy scalars would reach neither SQLite nor psycopg."""
    return {
        "model": p.model,
        "request_id": p.request_id,
        "row": int(p.row),
        "version": p.version,
        "role": p.role,
        "label": None if p.label is None else str(p.label),
        "value": None if p.value is None else float(p.value),
        "probabilities": _dump_floats(p.probabilities),
        "classes": None if p.classes is None else _dump_classes(tuple(p.classes)),
        "latency_ms": float(p.latency_ms),
        "status": p.status,
        "created_at": float(p.created_at),
    }


def _dump_floats(values: Iterable[float] | None) -> str | None:
    return None if values is None else json.dumps([float(v) for v in values])


@lru_cache(maxsize=1024)
def _dump_classes(classes: tuple[str, ...]) -> str:
    """Cached: every row of a model repeats the same class list."""
    return json.dumps([str(c) for c in classes])


@lru_cache(maxsize=1024)
def _load_classes(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _labelled(r: sa.Row[*tuple[Any, ...]]) -> LabelledRow:
    return LabelledRow(
        request_id=r.request_id,
        row=r.row,
        version=r.version,
        role=r.role,
        label=r.label,
        value=r.value,
        probabilities=None if r.probabilities is None else tuple(json.loads(r.probabilities)),
        classes=None if r.classes is None else _load_classes(r.classes),
        latency_ms=r.latency_ms,
        status=r.status,
        created_at=r.created_at,
        truth=r.truth,
    )


def _existing_keys(
    connection: sa.Connection, table: sa.Table, model: str, keys: Iterable[Key]
) -> set[Key]:
    """Which of ``keys`` already have a row in ``table``, looked up by indexed request id."""
    wanted = set(keys)
    request_ids = sorted({request_id for request_id, _ in wanted})
    found: set[Key] = set()
    for start in range(0, len(request_ids), IN_CHUNK):
        chunk = request_ids[start : start + IN_CHUNK]
        query = (
            sa.select(table.c.request_id, table.c.row)
            .where(table.c.model == model, table.c.request_id.in_(chunk))
            .distinct()
        )
        found.update((r[0], r[1]) for r in connection.execute(query))
    return found & wanted


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
        for (request_id, row), truth in latest.items()
    ]
    if params:
        connection.execute(statement, params)


def _dialect_insert(
    connection: sa.Connection, table: sa.Table
) -> postgresql.Insert | sqlite.Insert:
    """Both dialects spell upsert as ON CONFLICT, through their own Insert class."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
