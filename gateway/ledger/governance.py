"""The ledger's governance tables: sampled inputs, the registry, references, the journal.

Kept apart from ``store.py`` (answers, feedback, deployments) because nothing here is on
the answer path except ``input_params``, which the writer calls. Every write is
one transaction; the journal and the registry are append-only (a version's record is
inserted once and a second registration of it is refused by the primary key).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from gateway.ledger.records import (
    InputSample,
    JournalEntry,
    LabelledInput,
    Reference,
    VersionRecord,
)
from gateway.ledger.schema import feedback, inputs, journal, reference_samples, versions


class AlreadyRegistered(ValueError):
    """The registry already has this version: provenance is never rewritten."""


def input_params(sample: InputSample) -> dict[str, Any]:
    """The writer: one sampled request as one row's parameters."""
    if any(len(row) != len(sample.columns) for row in sample.rows):
        raise ValueError(f"input sample: rows do not have {len(sample.columns)} values")
    return {
        "model": sample.model,
        "request_id": sample.request_id,
        "rows": len(sample.rows),
        "columns": _dump_columns(sample.columns),
        "data": json.dumps(sample.rows),
        "created_at": float(sample.created_at),
    }


@lru_cache(maxsize=256)
def _dump_columns(columns: tuple[str, ...]) -> str:
    return json.dumps(list(columns))


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Governance:
    """Queries over the governance tables of one database; safe to share between threads."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # -- sampled inputs ---------------------------------------------------------------

    def recent_inputs(
        self, model: str, limit: int, since: float | None = None
    ) -> tuple[tuple[str, ...], list[list[Any]]]:
        """The newest ``limit`` sampled rows (oldest first) and their columns. Rows whose
        columns differ from the newest sample's (a changed signature) are left out."""
        query = sa.select(inputs.c.columns, inputs.c.data).where(inputs.c.model == model)
        if since is not None:
            query = query.where(inputs.c.created_at >= since)
        query = query.order_by(inputs.c.id.desc())
        columns: tuple[str, ...] = ()
        chunks: list[list[list[Any]]] = []  # newest first
        count = 0
        with self.engine.connect() as connection:
            for r in connection.execution_options(yield_per=500).execute(query):
                if not columns:
                    columns = tuple(json.loads(r.columns))
                elif tuple(json.loads(r.columns)) != columns:
                    continue
                chunks.append(json.loads(r.data))
                count += len(chunks[-1])
                if limit and count >= limit:
                    break
        rows = [row for chunk in reversed(chunks) for row in chunk]
        return columns, rows[-limit:] if limit else rows

    def labelled_inputs(
        self, model: str, since: float | None = None, until: float | None = None
    ) -> tuple[tuple[str, ...], list[LabelledInput]]:
        """Sampled input rows that have a truth, oldest first, in the newest columns."""
        query = sa.select(
            inputs.c.request_id, inputs.c.columns, inputs.c.data, inputs.c.created_at
        ).where(inputs.c.model == model)
        if since is not None:
            query = query.where(inputs.c.created_at >= since)
        if until is not None:
            query = query.where(inputs.c.created_at < until)
        truth_query = sa.select(feedback.c.request_id, feedback.c.row, feedback.c.truth).where(
            feedback.c.model == model,
            feedback.c.request_id.in_(query.with_only_columns(inputs.c.request_id)),
        )
        with self.engine.connect() as connection:
            found = connection.execute(query.order_by(inputs.c.id)).all()
            truths = {(r.request_id, r.row): r.truth for r in connection.execute(truth_query)}
        if not found:
            return (), []
        columns = tuple(json.loads(found[-1].columns))
        labelled: list[LabelledInput] = []
        for r in found:
            if tuple(json.loads(r.columns)) != columns:
                continue
            for index, values in enumerate(json.loads(r.data)):
                truth = truths.get((r.request_id, index))
                if truth is not None:
                    labelled.append(LabelledInput(r.request_id, index, values, truth, r.created_at))
        return columns, labelled

    # -- registry ---------------------------------------------------------------------

    def register(self, record: VersionRecord, entry: JournalEntry) -> None:
        """The version's record and its journal entry, together or not at all."""
        params = record.as_dict()
        for key in ("data", "parameters", "metrics"):
            params[key] = _json(params[key])
        with self.engine.begin() as connection:
            exists = connection.execute(
                sa.select(versions.c.sha256).where(
                    versions.c.model == record.model, versions.c.version == record.version
                )
            ).first()
            if exists is not None:
                raise AlreadyRegistered(
                    f"version {record.version} of '{record.model}' is already registered"
                )
            connection.execute(versions.insert().values(**params))
            append(connection, record.model, entry)

    def version(self, model: str, version: str) -> VersionRecord | None:
        query = sa.select(versions).where(versions.c.model == model, versions.c.version == version)
        with self.engine.connect() as connection:
            r = connection.execute(query).first()
        return None if r is None else _record(r)

    def versions(self, model: str) -> list[VersionRecord]:
        query = (
            sa.select(versions)
            .where(versions.c.model == model)
            .order_by(versions.c.registered_at, versions.c.version)
        )
        with self.engine.connect() as connection:
            return [_record(r) for r in connection.execute(query)]

    # -- references -------------------------------------------------------------------

    def save_reference(self, reference: Reference, entry: JournalEntry) -> None:
        """Replace the version's reference sample (journaled: drift changes meaning)."""
        r = reference_samples
        with self.engine.begin() as connection:
            connection.execute(
                r.delete().where(r.c.model == reference.model, r.c.version == reference.version)
            )
            connection.execute(
                r.insert().values(
                    model=reference.model,
                    version=reference.version,
                    columns=json.dumps(list(reference.columns)),
                    data=json.dumps(reference.rows),
                    source=reference.source,
                    created_at=reference.created_at,
                )
            )
            append(connection, reference.model, entry)

    def reference(self, model: str, version: str) -> Reference | None:
        r = reference_samples
        query = sa.select(r).where(r.c.model == model, r.c.version == version)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return Reference(
            model, version, tuple(json.loads(row.columns)), json.loads(row.data),
            row.source, row.created_at,
        )  # fmt: skip

    # -- journal ----------------------------------------------------------------------

    def append(self, model: str, entry: JournalEntry) -> None:
        with self.engine.begin() as connection:
            append(connection, model, entry)

    def entries(self, model: str, kinds: Sequence[str] = ()) -> list[JournalEntry]:
        j = journal
        query = sa.select(j).where(j.c.model == model).order_by(j.c.id)
        if kinds:
            query = query.where(j.c.kind.in_(list(kinds)))
        with self.engine.connect() as connection:
            return [
                JournalEntry(r.at, r.kind, r.version, r.reason, r.actor, json.loads(r.details))
                for r in connection.execute(query)
            ]


def append(connection: sa.Connection, model: str, entry: JournalEntry) -> None:
    """One journal entry, inside the caller's transaction (a deployment change, a
    registration): the change and its entry are written together or not at all."""
    connection.execute(
        journal.insert().values(
            model=model,
            at=entry.at,
            kind=entry.kind,
            version=entry.version,
            reason=entry.reason,
            actor=entry.actor,
            details=json.dumps(entry.details, sort_keys=True, default=str),
        )
    )


def _record(r: sa.Row[Any]) -> VersionRecord:
    return VersionRecord(
        model=r.model, version=r.version, sha256=r.sha256, artifact=r.artifact, runner=r.runner,
        registered_at=r.registered_at, framework=r.framework,
        framework_version=r.framework_version, data=_load(r.data), code_ref=r.code_ref,
        parameters=_load(r.parameters), metrics=_load(r.metrics), parent=r.parent,
        author=r.author, notes=r.notes,
    )  # fmt: skip


def count_feedback(engine: sa.Engine, model: str, since: float | None) -> int:
    """Truths received for the model since ``since`` (all of them when None)."""
    query = sa.select(sa.func.count()).select_from(feedback).where(feedback.c.model == model)
    if since is not None:
        query = query.where(feedback.c.received_at >= since)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())
