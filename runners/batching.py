"""Dynamic batching: concurrent requests merged into one model call, Triton-style.

Per-call overhead (the estimator's input validation, an ONNX Runtime run's setup) costs
about as much for one row as for a hundred, so when requests arrive faster than the
model answers them, answering the ones that queued up meanwhile in one call is nearly
free throughput. model.yaml's ``runner`` options (runners.config) use Triton's words:
``max_batch_size`` (rows), ``max_queue_delay_us`` and ``preferred_batch_sizes``.

There are no batcher threads: the gRPC handler thread of every request calls
``Batcher.run``, and one of the requests' own threads runs each batch (at concurrency 1
there is no thread handoff at all). At most ``executions`` threads lead at a time.

**No delay** (``max_queue_delay_us`` 0, the default; opportunistic, leader/follower):

* Fewer than ``executions`` model calls running: the thread becomes a *leader* and runs
  its own request at once, inline.
* Otherwise it queues and sleeps. A leader that has its answer hands leadership to the
  oldest queued request, together with a batch: that request plus every queued one that
  can merge with it (the same input names, datatypes and non-batch dimensions, the same
  requested outputs), up to ``max_batch_size`` rows. The new leader concatenates the
  inputs along axis 0, calls the model once, splits every output back by row counts and
  wakes each follower with its own rows; then it hands leadership on in turn.

A leader stops leading as soon as its own request is answered, so no request waits for
more than the batch it is in and the one before it.

**With a delay**: every request queues. While a slot is free, the oldest queued request
becomes the *collector*: its thread waits (at most until ``max_queue_delay_us`` after
that request arrived) for requests that merge with it, and leads the batch as soon as
it is ready: at ``max_batch_size`` rows, or at a preferred size (the largest one that
what is queued can form), or with whatever is there when the delay is up. One request
collects at a time; requests that cannot merge with it wait for their own turn, their
delay counted from their own arrival, so when the model is the bottleneck batches go
without waiting.

**Preferred sizes** (either mode), as Triton: a batch that need not wait (no delay, or
before the delay is up) is cut at the largest preferred size that a run of its requests
in arrival order adds up to; if none, it is at most the largest preferred size.

A request that cannot merge (a scalar input, inputs with different row counts,
``max_batch_size`` 0) or that alone is at least ``max_batch_size`` rows runs in a batch
of its own, at once. Each caller gets only answers computed from its own rows:

* a merged call that raises (a GreenroomError such as InvalidInput, or anything else) is
  run again one request at a time, so only the request that causes the error gets it;
* a merged call whose output is not one row per input row is run again one request at
  a time too (and a warning logged once).

(Floating-point scores of merged rows may still differ from a lone call's in the last
bit: BLAS picks its kernels by matrix shape.)

Invariants (under the lock): requests are queued only while ``executions`` leaders run,
or while a collector waits; a leader's or collector's own request is the head of its
batch.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
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


# The ``wake`` of a job that leads at once: nobody ever waits on it or sets it.
_LEADS_AT_ONCE = threading.Event()


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
    collect: bool = False  # set when this job's thread is made collector (with a delay)
    arrived: float = 0.0  # time.monotonic(), with a delay
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
    merging queued requests into batches of up to ``max_batch_size`` rows (0: never),
    waiting up to ``max_queue_delay_us`` for a batch to fill (0: never), cut at
    ``preferred_batch_sizes`` where it can be."""

    def __init__(
        self,
        predict: Predict,
        executions: int,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
    ):
        preferred = sorted(set(preferred_batch_sizes))
        if any(size <= 0 or size > max_batch_size for size in preferred):
            raise ValueError(f"preferred batch sizes {preferred} not in 1..{max_batch_size}")
        if max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us {max_queue_delay_us} is negative")
        self._predict = predict
        self._executions = executions
        self._max_rows = max_batch_size
        self._preferred = preferred
        self._delay_s = max_queue_delay_us / 1e6 if max_batch_size > 0 else 0.0
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)  # a collector waits on it
        self._queue: deque[_Job] = deque()
        self._running = 0  # leaders and the collector
        self._collector: _Job | None = None
        self._warned_split = False

    def queued(self) -> int:
        """Requests waiting for a model call (none while fewer than ``executions`` run
        without a delay; with one, the collector's own request counts too)."""
        with self._lock:
            return len(self._queue)

    @property
    def max_batch_size(self) -> int:
        return self._max_rows

    def run(self, inputs: Arrays, outputs: Sequence[str], request_id: str = "") -> Arrays:
        """The model's answer for this request alone (its rows of a batch's answer).

        GreenroomError raised by the model comes back as is; any other failure is logged
        here and raised as InternalError with a generic message."""
        wanted = tuple(outputs)
        if not self._delay_s:
            with self._lock:
                at_once = self._running < self._executions
                if at_once:
                    self._running += 1
            if at_once:  # the usual case below saturation: no batch to form, no wakeup
                job = _Job(inputs, wanted, request_id, 0, None, _LEADS_AT_ONCE)
                self._lead([job])
                return job.result()
        rows, key = _rows_and_key(inputs, wanted)
        job = _Job(inputs, wanted, request_id, rows, key)
        if self._delay_s:
            self._run_delayed(job)
            return job.result()
        with self._lock:
            if self._running < self._executions:  # a slot freed meanwhile
                self._running += 1
                job.batch = [job]
            else:
                self._queue.append(job)
        if job.batch is None:
            job.wake.wait()  # for its answer, or to lead a batch it heads
        if job.batch is not None:
            self._lead(job.batch)
        return job.result()

    # --- with a delay -------------------------------------------------------------------

    def _run_delayed(self, job: _Job) -> None:
        job.arrived = time.monotonic()
        with self._lock:
            self._queue.append(job)
            collector = self._collector
            if collector is None:
                self._promote()  # this job, if a slot is free (the queue was empty then)
            elif job.key is not None and job.key == collector.key:
                self._filled.notify()
        if not job.collect:
            job.wake.wait()  # for its answer, or to collect a batch
        if job.collect:
            self._lead(self._collect(job))

    def _promote(self) -> None:
        """The oldest queued request collects, if none does and a slot is free. Called
        with the lock held."""
        if self._collector is None and self._queue and self._running < self._executions:
            head = self._queue[0]
            self._running += 1
            self._collector = head
            head.collect = True
            head.wake.set()

    def _collect(self, head: _Job) -> list[_Job]:
        """Wait until ``head``'s batch is ready or its delay is up; take it off the queue
        and let the next request collect."""
        with self._lock:
            while True:
                assert self._queue[0] is head
                left = head.arrived + self._delay_s - time.monotonic()
                others = itertools.islice(self._queue, 1, None)
                batch, ready = self._form(head, others, expired=left <= 0)
                if ready:
                    break
                self._filled.wait(left)
            members = set(batch)
            self._queue = deque(job for job in self._queue if job not in members)
            self._collector = None
            self._promote()
        return batch

    def _release(self) -> None:
        with self._lock:
            self._running -= 1
            self._promote()

    # --- both -----------------------------------------------------------------------------

    def _form(self, head: _Job, others: Iterable[_Job], expired: bool) -> tuple[list[_Job], bool]:
        """The batch ``head`` would lead now (itself first, then queued requests that merge
        with it, in order, within ``max_batch_size`` rows), and whether it should go now
        rather than wait for more. Called with the lock held."""
        if head.key is None or head.rows >= self._max_rows:
            return [head], True
        batch, total, full = [head], head.rows, False
        sums = [total]
        for job in others:
            if job.key != head.key:
                continue
            if total + job.rows > self._max_rows:
                full = True  # it waits for the next batch; smaller ones may still fit
                continue
            batch.append(job)
            total += job.rows
            sums.append(total)
        if expired:
            return batch, True
        if not self._preferred:
            return batch, full or total >= self._max_rows
        for count in range(len(batch), 0, -1):
            if sums[count - 1] in self._preferred:
                return batch[:count], True
        largest = self._preferred[-1]
        if full or total >= largest:
            return batch[: max(1, sum(s <= largest for s in sums))], True
        return batch, False

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
            if self._delay_s:
                self._release()
            else:
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
        """``head`` and the queued jobs that merge with it, within ``max_batch_size`` rows
        (cut at a preferred size); the others stay queued in order. Lock held."""
        batch, _ = self._form(head, self._queue, expired=False)
        if len(batch) > 1:
            members = set(batch)
            self._queue = deque(job for job in self._queue if job not in members)
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
        except Exception:
            # Most likely one request's rows: run them alone, so that only that one fails
            # (and is logged, if it is not a GreenroomError, by ``_execute_alone``).
            for job in batch:
                self._execute_alone(job)
            return
        if not self._split(batch, answer):
            for job in batch:
                self._execute_alone(job)

    def _execute_alone(self, job: _Job) -> None:
        try:
            job.answer = self._predict(job.inputs, job.outputs)
        except GreenroomError as exc:
            job.error = exc
        except Exception as exc:
            log.error("inference failed", request_id=job.request_id, exc_info=exc)
            job.error = InternalError(INTERNAL_MESSAGE)

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
