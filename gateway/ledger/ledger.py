"""The ledger as the gateway sees it: record answers cheaply, read them back as rows.

Writes of answers go through a ``BatchWriter`` (off the event loop, bounded, converting
and packing each answer in its own thread);
feedback, deployment and evaluation reads go straight to the ``Store`` from whatever
thread calls them (the gateway runs those in a worker thread, never on the event loop).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from gateway.evaluation import finite_number
from gateway.ledger.governance import Governance, input_params
from gateway.ledger.records import (
    Answer,
    FeedbackResult,
    HistoryEntry,
    InputSample,
    JournalEntry,
    LabelledRow,
    LedgerStats,
    PackedAnswer,
    PairedRow,
)
from gateway.ledger.schema import inputs
from gateway.ledger.store import Store, answer_params, is_transient
from gateway.ledger.writer import (
    RETRY_DELAYS,
    BatchHandler,
    BatchQueue,
    BatchWriter,
    Bounds,
)
from gateway.ledger.writer_process import ProcessWriter, WriterConfig

FEEDBACK_FLUSH_TIMEOUT_S = 5.0
# Items in one feedback call (one transaction): a stream is collected whole before it is
# stored, so that it is all-or-nothing; this bounds the memory (~100 MB) and the time the
# transaction holds SQLite's write lock (~1.5 s: well under the writer's busy timeout).
MAX_FEEDBACK_ITEMS = 100_000

Convert = Callable[[Any], Answer | PackedAnswer | InputSample | None]


class Ledger:
    """Answers, feedback and deployments in SQLite (default) or PostgreSQL.

    ``record`` takes whatever the caller has at hand (``convert`` turns it into an
    ``Answer`` in the writer; without ``convert`` it must be an ``Answer``).
    ``writer="process"`` converts and writes in a process of its own (``ProcessWriter``:
    the gateway's event loop then never waits on the writer for the GIL); ``convert``
    must then be importable by name, and ``log`` is that process's (format, level).
    The queue is bounded by ``queue_items`` and by ``queue_bytes`` of caller-declared
    weight; the writer writes up to ``batch_items`` answers per transaction, waiting at
    most ``flush_interval_s`` for a batch to fill.
    """

    def __init__(
        self,
        url: str,
        *,
        convert: Convert | None = None,
        queue_items: int = 20_000,
        queue_bytes: int = 256 * 2**20,
        batch_items: int = 500,
        flush_interval_s: float = 0.05,
        writer: Literal["thread", "process"] = "thread",
        log: tuple[str, str] = ("console", "info"),
    ) -> None:
        self.url = url
        self._store = Store(url)
        self.governance = Governance(self._store.engine)
        bounds = Bounds(queue_items, queue_bytes, batch_items, flush_interval_s)
        self._writer: BatchQueue
        prepare = functools.partial(prepare_item, convert)
        if writer == "process":
            self._writer = ProcessWriter(WriterConfig(url, prepare, RETRY_DELAYS, *log), bounds)
        else:
            handler = BatchHandler(self._store.insert, prepare, is_transient=is_transient)
            self._writer = BatchWriter(handler, bounds)

    @classmethod
    def for_data_dir(cls, data_dir: Path, **options: Any) -> Ledger:
        """The embedded default: ``<data_dir>/ledger.db``, directory created; ``options``
        as for ``Ledger``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(data_dir / 'ledger.db').resolve()}", **options)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Migrate to the newest schema, then start the writer."""
        self._store.migrate()
        self._writer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything queued (the SIGTERM path), then release connections."""
        if self._writer.stop(timeout):
            self._store.dispose()

    # -- answers ----------------------------------------------------------------------

    def record(self, item: Any, weight: int = 0) -> None:
        """Queue one item (an ``Answer``, or what ``convert`` takes) holding ``weight``
        bytes. O(1), non-blocking and never raising, because it runs on the event loop for
        every answer; an item over the queue's bounds is counted as dropped. Conversion
        happens later, in the writer."""
        try:
            self._writer.put(item, weight)
        except Exception:  # the answer to the client matters more than its record
            self.record_lost()

    def record_lost(self) -> None:
        """Count an answer whose record could not even be made, as dropped."""
        with contextlib.suppress(Exception):
            self._writer.drop()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded so far is written (or counted as failed)."""
        return self._writer.flush(timeout)

    @property
    def stats(self) -> LedgerStats:
        return self._writer.stats

    def lag_s(self) -> float:
        """Age of the oldest answer waiting for the writer, in seconds (0 when none)."""
        return self._writer.lag_s()

    def count(self, model: str | None = None) -> int:
        """Prediction rows in the database (of one model, or all): the answers' rows."""
        return self._store.count_rows(model)

    # -- feedback -----------------------------------------------------------------------

    def add_feedback(
        self,
        model: str,
        items: Sequence[tuple[str, int, str]],
        *,
        numeric: bool = False,
        first: int = 0,
    ) -> FeedbackResult:
        """Validate the whole batch first (nothing is stored if any item is bad), then
        upsert it. ``numeric``: the model is a regression, so every truth must be a finite
        number (``float()`` reads it). Recorded answers are flushed first so that truth
        sent right after an answer counts as matched (an item matches when an answer to its
        request id, OK or failed, has more rows than its row index). An item whose request
        id has a recorded answer without that row is refused (it could never join); truth
        for an id not recorded yet is kept and joins when an answer with that row comes.
        ``first``: the index of ``items[0]`` in the caller's whole call, for messages."""
        _validate_feedback(model, items, numeric=numeric, first=first)
        self.flush(FEEDBACK_FLUSH_TIMEOUT_S)
        return self._store.add_feedback(model, items, time.time(), first=first)

    # -- evaluation reads ---------------------------------------------------------------

    def rows(self, model: str, since: float | None = None) -> list[LabelledRow]:
        """Every answered row of the model since ``since``, oldest first, with its truth."""
        self.flush()
        return self._store.rows(model, since)

    def iter_rows(self, model: str, since: float | None = None) -> Iterator[LabelledRow]:
        """``rows`` as a stream, read in chunks: for windows too big to hold as a list."""
        self.flush()
        return self._store.iter_rows(model, since)

    def pairs(
        self, model: str, primary: str, candidate: str, since: float | None = None
    ) -> list[PairedRow]:
        """Rows both versions answered OK and whose truth is known (the latest OK answer of
        each version per request id)."""
        self.flush()
        return self._store.pairs(model, primary, candidate, since)

    # -- deployments --------------------------------------------------------------------

    def iter_pairs(
        self, model: str, primary: str, candidate: str, since: float | None = None
    ) -> Iterator[PairedRow]:
        """``pairs`` as a stream, read in chunks: for windows too big to hold as a list."""
        self.flush()
        return self._store.iter_pairs(model, primary, candidate, since)

    def save_deployment(
        self,
        model: str,
        spec: dict[str, Any],
        reason: str,
        actor: str = "cli",
        *,
        kind: str = "deployment",
        version: str | None = None,
        check: bool = False,
        expected: dict[str, Any] | None = None,
    ) -> None:
        """Replace the current deployment and append to its history and to the journal
        (as ``kind``, about ``version``), atomically; with ``check``, only if the stored
        one is still ``expected`` (else ``store.DeploymentConflict``)."""
        self._store.save_deployment(
            model, spec, reason, actor, now=time.time(), kind=kind, version=version,
            check=check, expected=expected,
        )  # fmt: skip

    def deployment(self, model: str) -> dict[str, Any] | None:
        return self._store.deployment(model)

    def history(self, model: str) -> list[HistoryEntry]:
        """Every saved change of the model's deployment, oldest first."""
        return self._store.history(model)

    def journal(self, model: str) -> list[JournalEntry]:
        """Everything that happened to the model, oldest first."""
        return self.governance.entries(model)

    def changes(self) -> tuple[int, int]:
        """Deployment changes and version registrations saved so far, all models
        together: when either moves, another process sharing this database changed a
        deployment or registered a version."""
        return self._store.changes()


def _validate_feedback(
    model: str, items: Sequence[tuple[str, int, str]], *, numeric: bool = False, first: int = 0
) -> None:
    """Raise ValueError naming the first bad item (by index) so a client can fix its file."""
    if not model:
        raise ValueError("feedback: model name is empty")
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise ValueError(
            f"feedback: {len(items)} items in one call, over the limit of "
            f"{MAX_FEEDBACK_ITEMS}: send them in several calls"
        )
    for index, item in enumerate(items):
        problem = _feedback_problem(item, numeric)
        if problem:
            raise ValueError(f"feedback item {first + index}: {problem}")


def _feedback_problem(item: object, numeric: bool) -> str | None:
    if not isinstance(item, tuple) or len(item) != 3:
        return "expected (request_id, row, truth)"
    request_id, row, truth = item
    if not isinstance(request_id, str) or not request_id:
        return "request_id is empty"
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        return f"row must be a non-negative integer, got {row!r}"
    if not isinstance(truth, str) or not truth:
        return "truth is empty"
    if numeric and finite_number(truth) is None:
        return f"truth {truth!r} is not a finite number, and the model is a regression"
    return None


def prepare_item(
    convert: Convert | None, item: Any
) -> tuple[tuple[sa.Table, dict[str, Any]], int] | None:
    """Writer thread or process: convert the item, then pack it into one row's
    parameters. A sampled input counts no prediction rows."""
    plain = convert is None or isinstance(item, Answer | InputSample)
    converted = item if plain else convert(item)  # type: ignore[misc]
    if converted is None:
        return None
    if isinstance(converted, InputSample):
        return (inputs, input_params(converted)), 0
    return answer_params(converted)
