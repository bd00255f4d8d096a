"""A bounded queue drained by one background thread that writes in batches.

Why a thread and not the event loop: a database write (an fsync, a lock held by another
process, a PostgreSQL failover) can take seconds, and the gateway must keep answering
meanwhile. ``put`` only appends under a lock; when the queue is full it drops and counts,
so memory stays bounded however long the database stalls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import structlog

from gateway.ledger.records import LedgerStats

T = TypeVar("T")

log = structlog.get_logger(__name__)

# Seconds to wait before each retry of a batch that hit a transient error.
RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0)


class BatchWriter(Generic[T]):
    """Queue rows from any thread; one writer thread hands them to ``write`` in batches.

    Accounting: every accepted row is eventually *handled*, i.e. written or counted as
    failed. ``flush`` waits for the handled count to reach the accepted count it saw.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], None],
        *,
        is_transient: Callable[[BaseException], bool],
        queue_rows: int,
        batch_rows: int,
        flush_interval_s: float,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        name: str = "ledger-writer",
    ) -> None:
        if queue_rows < 1 or batch_rows < 1 or flush_interval_s < 0:
            raise ValueError("queue_rows and batch_rows must be >= 1, flush_interval_s >= 0")
        self._write = write
        self._is_transient = is_transient
        self._queue_rows = queue_rows
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self.retry_delays = tuple(retry_delays)
        self._name = name
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits here for rows
        self._done = threading.Condition(self._lock)  # flush() waits here for progress
        self._queue: deque[T] = deque()
        self._in_flight = 0
        self._accepted = 0
        self._handled = 0
        self._written = 0
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

    def put(self, rows: Sequence[T]) -> None:
        """Queue what fits and drop (and count) the rest. Never blocks on the database."""
        count = len(rows)
        if count == 0:
            return
        with self._lock:
            if self._closed:
                self._dropped += count
                return
            room = self._queue_rows - len(self._queue) - self._in_flight
            taken = min(count, max(room, 0))
            if taken:
                before = len(self._queue)
                self._queue.extend(rows if taken == count else rows[:taken])
                self._accepted += taken
                # Wake the writer only when it can act: rows appeared, or a batch filled up.
                if before == 0 or before < self._batch_rows <= before + taken:
                    self._work.notify()
            self._dropped += count - taken

    def flush(self, timeout: float) -> bool:
        """Block until every row accepted before this call is handled; False on timeout or
        when no writer thread is running to do it."""
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

    @property
    def stats(self) -> LedgerStats:
        with self._lock:
            return LedgerStats(
                recorded=self._written,
                queued=len(self._queue) + self._in_flight,
                dropped=self._dropped,
                failed=self._failed,
                batches=self._batches,
                last_error=self._last_error,
            )

    # -- writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                written, error = self._deliver(batch)
            except Exception as e:  # a bug in our own code must not end the thread
                written, error = 0, describe(e)
            self._settle(len(batch), written, error)

    def _take(self) -> list[T] | None:
        """The next batch: up to batch_rows, waiting at most flush_interval_s for it to fill
        (not at all when someone flushes or stops). None when stopped and drained."""
        with self._lock:
            while not self._queue and not self._stopping:
                self._work.wait()
            if not self._queue:
                self._closed = True
                self._done.notify_all()
                return None
            if len(self._queue) < self._batch_rows and not (self._stopping or self._flushers):
                self._work.wait(self._flush_interval_s)
            size = min(self._batch_rows, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            self._in_flight = size
            return batch

    def _deliver(self, batch: list[T]) -> tuple[int, str | None]:
        """Write the batch, retrying transient errors; rows the database rejects outright
        are retried one by one so that one bad row does not lose its neighbours."""
        error: BaseException | None = None
        for delay in (0.0, *self.retry_delays):
            if delay:
                time.sleep(delay)
            try:
                self._write(batch)
                return len(batch), None
            except Exception as e:
                error = e
                if not self._is_transient(e):
                    break
        assert error is not None
        summary = describe(error)
        log.warning("ledger batch failed", rows=len(batch), error=summary)
        if len(batch) > 1 and not self._is_transient(error):
            return self._deliver_each(batch), summary
        return 0, summary

    def _deliver_each(self, batch: list[T]) -> int:
        written = 0
        for item in batch:
            try:
                self._write([item])
                written += 1
            except Exception:
                continue
        return written

    def _settle(self, size: int, written: int, error: str | None) -> None:
        with self._lock:
            self._in_flight = 0
            self._handled += size
            self._written += written
            self._failed += size - written
            self._batches += 1
            if error is not None:
                self._last_error = error
            self._done.notify_all()


def describe(error: BaseException) -> str:
    """One short line for ``report``: database errors quote their SQL and parameters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
