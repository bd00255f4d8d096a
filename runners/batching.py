"""Opportunistic dynamic batching: concurrent requests merged into one model call.

Per-call overhead (the estimator's input validation, an ONNX Runtime run's setup) costs
about as much for one row as for a hundred, so when requests arrive faster than the
model answers them, answering the ones that queued up meanwhile in one call is nearly
free throughput. Unlike a timed batcher this adds **no delay**: nothing ever waits for a
batch to fill.

Leader/follower. The gRPC handler thread of every request calls ``Batcher.run``:

* Fewer than ``executions`` model calls running: the thread becomes a *leader* and runs
  its own request at once, inline (at concurrency 1 there is no thread handoff at all).
* Otherwise it queues and sleeps. A leader that has its answer hands leadership to the
  oldest queued request, together with a batch: that request plus every queued one that
  can merge with it (the same input names, datatypes and non-batch dimensions, the same
  requested outputs), up to ``max_batch_size`` rows. The new leader concatenates the
  inputs along axis 0, calls the model once, splits every output back by row counts and
  wakes each follower with its own rows; then it hands leadership on in turn.

A leader stops leading as soon as its own request is answered, so no request waits for
more than the batch it is in and the one before it. A request that cannot merge (a
scalar input, inputs with different row counts, ``max_batch_size`` 0) or that alone is
bigger than ``max_batch_size`` runs in a batch of its own. Should a model answer a
merged batch with an output that is not one row per input row, that batch is run again
one request at a time (and a warning logged once): a request must only ever get answers
computed from its own rows. (Floating-point scores of merged rows may still differ from
a lone call's in the last bit: BLAS picks its kernels by matrix shape.)

Invariant (under the lock): requests are queued only while ``executions`` leaders run,
so a new leader's own request is always the head of the batch it is given.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog

from greenroom_client.errors import GreenroomError, InternalError
from runners.model import Arrays, Model

log = structlog.get_logger(__name__)

INTERNAL_MESSAGE = "internal error; see the runner log"
DEFAULT_MAX_BATCH_SIZE = 256

Predict = Callable[[Arrays, Sequence[str]], Arrays]


def default_max_batch_size(model: Model, configured: int | None) -> int:
    """model.yaml's ``runner.max_batch_size`` if set; else batch only what is row-wise by
    construction (the adapter says so) and declares -1 as the first dimension of every
    input and output, since only then is a row's answer independent of its neighbours."""
    if configured is not None:
        return configured
    specs = [*model.inputs, *model.outputs]
    if model.row_wise and all(spec.shape[:1] == (-1,) for spec in specs):
        return DEFAULT_MAX_BATCH_SIZE
    return 0


def _rows_and_key(inputs: Arrays, outputs: tuple[str, ...]) -> tuple[int, Hashable | None]:
    """A request's row count and what it must share with others to merge (None: it cannot
    merge: no inputs, a scalar, inputs that disagree on their row count, or zero rows)."""
    arrays = sorted(inputs.items())
    firsts = {array.shape[0] if array.ndim else -1 for _, array in arrays}
    if len(firsts) != 1 or (rows := firsts.pop()) <= 0:
        return 0, None
    key = (tuple((n, a.dtype.str, a.shape[1:]) for n, a in arrays), outputs)
    return rows, key


@dataclass(eq=False, slots=True)
class _Job:
    """One request in the batcher; its thread sleeps on ``wake`` unless it leads."""

    inputs: Arrays
    outputs: tuple[str, ...]
    request_id: str
    rows: int
    key: Hashable | None
    wake: threading.Event = field(default_factory=threading.Event)
    batch: list[_Job] | None = None  # set when this job's thread is made leader
    answer: Arrays | None = None
    error: Exception | None = None

    def settled(self) -> bool:
        return self.answer is not None or self.error is not None

    def result(self) -> Arrays:
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer


class Batcher:
    """Runs ``predict`` for concurrent callers, at most ``executions`` calls at a time,
    merging queued requests into batches of up to ``max_batch_size`` rows (0: never)."""

    def __init__(self, predict: Predict, executions: int, max_batch_size: int):
        self._predict = predict
        self._executions = executions
        self._max_rows = max_batch_size
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._running = 0
        self._warned_split = False

    def queued(self) -> int:
        """Requests waiting for a model call (none while fewer than ``executions`` run)."""
        with self._lock:
            return len(self._queue)

    def run(self, inputs: Arrays, outputs: Sequence[str], request_id: str = "") -> Arrays:
        """The model's answer for this request alone (its rows of a batch's answer).

        GreenroomError raised by the model comes back as is; any other failure is logged
        here once per batch and raised as InternalError with a generic message."""
        wanted = tuple(outputs)
        rows, key = _rows_and_key(inputs, wanted)
        job = _Job(inputs, wanted, request_id, rows, key)
        with self._lock:
            if self._running < self._executions:
                self._running += 1
                job.batch = [job]
            else:
                self._queue.append(job)
        if job.batch is None:
            job.wake.wait()  # for its answer, or to lead a batch it heads
        if job.batch is not None:
            self._lead(job.batch)
        return job.result()

    def _lead(self, batch: list[_Job]) -> None:
        """Answer ``batch`` (its head is the caller's own job), then pass the lead on."""
        try:
            self._execute(batch)
        finally:
            for job in batch:
                if not job.settled():  # only if something beyond Exception was raised
                    job.error = InternalError(INTERNAL_MESSAGE)
            for job in batch[1:]:
                job.wake.set()
            self._pass_on()

    def _pass_on(self) -> None:
        with self._lock:
            if not self._queue:
                self._running -= 1
                return
            head = self._queue.popleft()
            head.batch = self._take(head)
        head.wake.set()

    def _take(self, head: _Job) -> list[_Job]:
        """``head`` and the queued jobs that merge with it, within ``max_batch_size`` rows;
        the others stay queued in order. Called with the lock held."""
        batch = [head]
        if head.key is None or head.rows >= self._max_rows:
            return batch
        rows = head.rows
        kept: deque[_Job] = deque()
        for job in self._queue:
            if job.key == head.key and rows + job.rows <= self._max_rows:
                batch.append(job)
                rows += job.rows
            else:
                kept.append(job)
        self._queue = kept
        return batch

    def _execute(self, batch: list[_Job]) -> None:
        if len(batch) == 1:
            self._execute_alone(batch[0])
            return
        try:
            merged = {
                name: np.concatenate([j.inputs[name] for j in batch]) for name in batch[0].inputs
            }
            answer = self._predict(merged, batch[0].outputs)
        except Exception as exc:
            self._fail(batch, exc)
            return
        if not self._split(batch, answer):
            for job in batch:
                self._execute_alone(job)

    def _execute_alone(self, job: _Job) -> None:
        try:
            job.answer = self._predict(job.inputs, job.outputs)
        except Exception as exc:
            self._fail([job], exc)

    def _split(self, batch: list[_Job], answer: Arrays) -> bool:
        """Give each job its rows of every requested output; False (nothing given) when
        an output is not one row per input row, so that the batch must run unmerged."""
        total = sum(job.rows for job in batch)
        outputs = {name: np.asarray(answer[name]) for name in batch[0].outputs if name in answer}
        if any(array.ndim == 0 or array.shape[0] != total for array in outputs.values()):
            if not self._warned_split:
                self._warned_split = True
                shapes = {name: list(array.shape) for name, array in outputs.items()}
                log.warning(
                    "model answered a batch without one row per input row; "
                    "running its requests one by one (set runner.max_batch_size: 0)",
                    rows=total,
                    output_shapes=shapes,
                )
            return False
        start = 0
        for job in batch:
            end = start + job.rows
            job.answer = {name: array[start:end] for name, array in outputs.items()}
            start = end
        return True

    def _fail(self, batch: list[_Job], exc: Exception) -> None:
        """Every job of the batch fails alike; an unexpected error is logged just once."""
        error: Exception = exc
        if not isinstance(exc, GreenroomError):
            ids = [job.request_id for job in batch]
            which = {"request_id": ids[0]} if len(ids) == 1 else {"request_ids": ids}
            log.error("inference failed", **which, exc_info=exc)
            error = InternalError(INTERNAL_MESSAGE)
        for job in batch:
            job.error = error
