"""A bounded queue drained by one background thread, in batches that are converted and
written by that thread (``BatchWriter``) or by a process of their own (``ProcessWriter``,
in ``writer_process.py``).

Why not the event loop: a database write (an fsync, a lock held by another process, a
PostgreSQL failover) can take seconds, and the gateway must keep answering meanwhile.
So must turning a raw reply into a record: ``put`` only appends the caller's item under
a lock, and the ``BatchHandler`` ``prepare``s it (decode, pack) just before writing.
When the queue is full, by item count or by the bytes the callers say their items hold,
``put`` drops and counts, so memory stays bounded however long the database stalls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

from gateway.ledger.records import LedgerStats

P = TypeVar("P")

log = structlog.get_logger(__name__)

# Seconds to wait before each retry of a batch that hit a transient error.
RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0)

# A prepared item: what ``write`` takes, and how many rows it holds (for the stats).
Prepared = tuple[P, int]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The queue's bounds (items, and bytes the callers declare) and its batching: up to
    ``batch_items`` per write, waiting at most ``flush_interval_s`` for a batch to fill."""

    queue_items: int = 20_000
    queue_bytes: int = 256 * 2**20
    batch_items: int = 500
    flush_interval_s: float = 0.05

    def __post_init__(self) -> None:
        if min(self.queue_items, self.queue_bytes, self.batch_items) < 1:
            raise ValueError("queue_items, queue_bytes and batch_items must be >= 1")
        if self.flush_interval_s < 0:
            raise ValueError("flush_interval_s must be >= 0")


class BatchQueue:
    """Queue items from any thread; one background thread takes them in batches (``_run``:
    ``BatchWriter`` writes them itself, ``ProcessWriter`` ships them to a process).

    Accounting (in items): every accepted item is eventually *handled*, i.e. written,
    skipped or counted as failed. ``flush`` waits for the handled count to reach the
    accepted count it saw.
    """

    def __init__(self, bounds: Bounds, *, name: str = "ledger-writer") -> None:
        self._queue_items = bounds.queue_items
        self._queue_bytes = bounds.queue_bytes
        self._batch_items = bounds.batch_items
        self._flush_interval_s = bounds.flush_interval_s
        self._name = name
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits here for items
        self._done = threading.Condition(self._lock)  # flush() waits here for progress
        # (item, weight, time.monotonic() when queued)
        self._queue: deque[tuple[Any, int, float]] = deque()
        self._queued_bytes = 0  # weight of the queue and of the batches in flight
        # Batches taken but not yet settled, oldest first: (items, weight, when the oldest
        # was queued). The thread has at most one; the writer process may have several.
        self._flight: deque[tuple[int, int, float]] = deque()
        self._in_flight = 0  # items in those batches
        self._accepted = 0
        self._handled = 0
        self._written = 0
        self._written_rows = 0
        self._dropped = 0
        self._failed = 0
        self._batches = 0
        self._last_error: str | None = None
        self._flushers = 0
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- any thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart after ``stop``) the writer thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._closed = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Write everything queued, then end the thread. False if it did not finish in time
        (the thread is a daemon: it cannot keep the process alive)."""
        with self._lock:
            self._stopping = True
            self._work.notify()
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("ledger writer did not finish", queued=self.stats.queued)
            return False
        return True

    def put(self, item: Any, weight: int = 0) -> None:
        """Queue one item holding ``weight`` bytes, or drop (and count) it when either
        bound would be exceeded. O(1); never blocks on the database."""
        weight = max(int(weight), 0)
        now = time.monotonic()
        with self._lock:
            if (
                self._closed
                or len(self._queue) + self._in_flight >= self._queue_items
                or self._queued_bytes + weight > self._queue_bytes
            ):
                self._dropped += 1
                return
            self._queue.append((item, weight, now))
            self._queued_bytes += weight
            self._accepted += 1
            # Wake the writer only when it can act: items appeared, or a batch filled up.
            size = len(self._queue)
            if size in (1, self._batch_items):
                self._work.notify()

    def drop(self) -> None:
        """Count an item the caller could not even queue."""
        with self._lock:
            self._dropped += 1

    def flush(self, timeout: float) -> bool:
        """Block until every item accepted before this call is handled; False on timeout
        or when no writer thread is running to do it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._accepted
            self._flushers += 1
            self._work.notify()
            try:
                while self._handled < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                        return False
                    self._done.wait(min(remaining, 0.5))
            finally:
                self._flushers -= 1
        return True

    def lag_s(self) -> float:
        """How long the oldest item not yet handled (queued, or in the batch being
        written) has waited; 0 when none waits."""
        with self._lock:
            if self._flight:
                oldest = self._flight[0][2]
            elif self._queue:
                oldest = self._queue[0][2]
            else:
                return 0.0
        return max(time.monotonic() - oldest, 0.0)

    @property
    def stats(self) -> LedgerStats:
        with self._lock:
            return LedgerStats(
                recorded_answers=self._written,
                recorded_rows=self._written_rows,
                queued=len(self._queue) + self._in_flight,
                dropped=self._dropped,
                failed=self._failed,
                batches=self._batches,
                last_error=self._last_error,
            )

    # -- the background thread ----------------------------------------------------------

    def _run(self) -> None:
        raise NotImplementedError

    def _take(self) -> list[Any] | None:
        """The next batch: up to batch_items, waiting at most flush_interval_s for it to
        fill (not at all when someone flushes or stops). None when stopped and drained."""
        with self._lock:
            while not self._queue and not self._stopping:
                self._work.wait()
            if not self._queue:
                self._closed = True
                self._done.notify_all()
                return None
            if len(self._queue) < self._batch_items and not (self._stopping or self._flushers):
                self._work.wait(self._flush_interval_s)
            size = min(self._batch_items, len(self._queue))
            batch = []
            weight = 0
            since = self._queue[0][2]
            for _ in range(size):
                item, item_weight, _ = self._queue.popleft()
                batch.append(item)
                weight += item_weight
            self._flight.append((size, weight, since))
            self._in_flight += size
            return batch

    def _settle(self, outcome: Outcome | None, error: str | None = None) -> None:
        """The oldest batch in flight is handled (batches settle in the order taken);
        ``None``: it was lost whole, to ``error``."""
        if outcome is None:
            outcome = Outcome(0, 0, -1, error, wrote=False)
        with self._lock:
            size, weight, _ = self._flight.popleft()
            self._queued_bytes -= weight
            self._in_flight -= size
            self._handled += size
            self._written += outcome.written
            self._written_rows += outcome.rows
            self._failed += size if outcome.failed < 0 else outcome.failed
            self._batches += outcome.wrote
            if outcome.error is not None:
                self._last_error = outcome.error
            self._done.notify_all()


class BatchWriter(BatchQueue, Generic[P]):
    """The writer thread prepares and writes each batch itself, with ``handler``."""

    def __init__(
        self, handler: BatchHandler[P], bounds: Bounds, *, name: str = "ledger-writer"
    ) -> None:
        super().__init__(bounds, name=name)
        self.handler = handler

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._settle(self.handler.handle(batch))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one batch: ``written`` items holding ``rows`` rows are in the
    database, ``failed`` were lost (the rest were skipped), ``error`` the last reason."""

    written: int
    rows: int
    failed: int
    error: str | None
    wrote: bool  # a transaction was attempted


class BatchHandler(Generic[P]):
    """Prepares a batch and writes it, retrying what is worth retrying. The writer thread
    calls it, or the writer process (``gateway.ledger.writer_process``)."""

    def __init__(
        self,
        write: Callable[[Sequence[P]], None],
        prepare: Callable[[Any], Prepared[P] | None],
        *,
        is_transient: Callable[[BaseException], bool],
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self._write = write
        self._prepare = prepare
        self._is_transient = is_transient
        self.retry_delays = tuple(retry_delays)
        self._errors_logged: set[str] = set()

    def handle(self, batch: Sequence[Any]) -> Outcome:
        prepared, failed, error = self._prepare_all(batch)
        written, rows = 0, 0
        if prepared:
            try:
                written, rows, write_error = self._deliver(prepared)
            except Exception as e:  # a bug in our own code must not end the writer
                write_error = describe(e)
            error = write_error or error
            failed += len(prepared) - written
        return Outcome(written, rows, failed, error, wrote=bool(prepared))

    def _prepare_all(self, batch: Sequence[Any]) -> tuple[list[Prepared[P]], int, str | None]:
        """Prepare each item. Returns what to write, how many items
        failed to prepare and the last such error; skipped items are simply left out."""
        prepared: list[Prepared[P]] = []
        failed = 0
        error: str | None = None
        for item in batch:
            try:
                result = self._prepare(item)
            except Exception as e:
                failed += 1
                error = describe(e)
                kind = type(e).__qualname__
                if kind not in self._errors_logged:  # once per error type
                    self._errors_logged.add(kind)
                    log.warning("ledger could not convert an item", error=error)
                continue
            if result is not None:
                prepared.append(result)
        return prepared, failed, error

    def _deliver(self, batch: list[Prepared[P]]) -> tuple[int, int, str | None]:
        """Write the batch, retrying transient errors; items the database rejects outright
        are retried one by one so that one bad item does not lose its neighbours.
        Returns (items written, rows they hold, error)."""
        records = [record for record, _ in batch]
        error: BaseException | None = None
        for delay in (0.0, *self.retry_delays):
            if delay:
                time.sleep(delay)
            try:
                self._write(records)
                return len(batch), sum(rows for _, rows in batch), None
            except Exception as e:
                error = e
                if not self._is_transient(e):
                    break
        assert error is not None
        summary = describe(error)
        log.warning("ledger batch failed", items=len(batch), error=summary)
        if len(batch) > 1 and not self._is_transient(error):
            return (*self._deliver_each(batch), summary)
        return 0, 0, summary

    def _deliver_each(self, batch: list[Prepared[P]]) -> tuple[int, int]:
        written, rows = 0, 0
        for record, record_rows in batch:
            try:
                self._write([record])
            except Exception:
                continue
            written += 1
            rows += record_rows
        return written, rows


def describe(error: BaseException) -> str:
    """One short line for ``report``: database errors quote their SQL and parameters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
