"""Retraining: model.yaml ``retraining:`` runs a training command and shadows its result.

A run exports the labelled data from the ledger (inputs with their ground truth) to a CSV,
runs the model's training command on it with a time limit, registers what the command
wrote with its provenance, runs the model's validation and deploys the new version as a
*shadow*: never as primary, because only the promotion test on live traffic may say
that it is better. Any failure is journaled with its reason and the log's tail, and
nothing is deployed.

When a run starts:

* **Schedule** (cron, UTC, on the injected clock). After any wake, one or more passed
  times cause *one* run and the next time is computed from now: a gateway that was down
  or suspended for a day does not catch up with a burst of runs. A gateway that starts
  waits for the next future time (times before it started are not run).
* **Triggers**, checked every ``check_interval_s``: the primary's accuracy over its last
  ``last_labels`` labels below ``min_accuracy``, or its largest feature PSI above
  ``max_psi``. Storm rule: a trigger fires only when at least ``last_labels`` labels have
  arrived since the previous run of the model *ended* (whatever its outcome), so that a
  model that stays bad, or a command that keeps failing, is retried once per batch of new
  evidence rather than every check. The previous end comes from ``last_runs`` (the host
  seeds it from the journal) or from runs in this process; a model never retrained
  counts all its labels. Triggers are not evaluated while a run of the model is going
  on: its end resets the count anyway. Numbers read while the deployment changed (a
  promotion during the check) may be the old primary's: they are dropped, and the next
  check reads the new primary's.
* **Manually**: :meth:`Retrainer.run_now` (``greenroom retrain MODEL``).

One run per model at a time: a second manual request raises :class:`AlreadyRunning`; a
scheduled or triggered start during a run is skipped and journaled as skipped.

The training command is an argv list run in the model directory, in its own process
group, with ``{dataset}``, ``{output}``, ``{model}`` and ``{primary}`` replaced in every
argument (also in the environment as ``GREENROOM_DATASET`` etc.). Its stdout and stderr
go to a log file. On time-out the whole group gets SIGTERM, then SIGKILL after a grace;
whatever of the group outlives the command is killed as well. ``output/metrics.json``, if
written, is the run's training metrics: it is moved out of the artifact folder before
registration. Journal entries are of kind ``retraining`` (``details.event``: started,
skipped, finished, failed); the host journals the validation it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from croniter import croniter

from gateway.process_group import signal_group
from runners.config import Retraining, RetrainingTriggers

log = structlog.get_logger(__name__)

LOG_TAIL_BYTES = 4096
METRICS_FILE = "metrics.json"
AUTHOR = "retraining"
# Longest real sleep of a policy loop: a wall clock that jumps (suspend, NTP) is seen soon.
MAX_SLEEP_S = 60.0
GIT_TIMEOUT_S = 10.0

Trigger = Literal["schedule", "trigger", "manual"]
Outcome = Literal["deployed", "failed", "rejected"]  # rejected: the validation failed


# ----------------------------------------------------------------------------- the host


@dataclass(frozen=True, slots=True)
class Export:
    """What ``export_dataset`` wrote: one CSV, features then ``label``."""

    rows: int
    columns: list[str]
    first_at: float | None  # time range of the exported predictions (unix s)
    last_at: float | None
    sha256: str  # of the CSV file


@dataclass(frozen=True, slots=True)
class TriggerState:
    """The primary's numbers that the triggers compare with their thresholds."""

    accuracy: float | None  # over its last ``last_labels`` labels (None: fewer labels)
    labels_since: int  # labels received since the given time
    max_psi: float | None  # largest feature PSI of its drift check (None: too little data)
    deployment: object = None  # what the numbers were read under, compared by equality


class RegistrationError(Exception):
    """The host refused the command's output: it is not a servable artifact."""


class RetrainingError(Exception):
    """A run that cannot start."""


class AlreadyRunning(RetrainingError):
    """The model already has a run in progress: one run per model at a time."""


class NotConfigured(RetrainingError):
    """The model has no ``retraining`` policy."""


class Stopped(RetrainingError):
    """The retrainer was stopped (the gateway is shutting down): no new run starts."""


class RetrainingHost(Protocol):
    """What the gateway provides: the ledger, the registry, validation, deployments."""

    async def export_dataset(self, model: str, path: Path) -> Export: ...

    async def register_version(
        self, model: str, artifact_dir: Path, provenance: dict[str, Any]
    ) -> str: ...

    async def validate_version(self, model: str, version: str) -> tuple[bool, dict[str, Any]]: ...

    async def deploy_shadow(
        self, model: str, version: str, fraction: float, reason: str
    ) -> None: ...

    async def journal(
        self, model: str, kind: str, version: str | None, reason: str, details: dict[str, Any]
    ) -> None: ...

    async def trigger_state(
        self, model: str, last_labels: int, since: float | None
    ) -> TriggerState: ...

    def primary(self, model: str) -> str: ...

    def deployment(self, model: str) -> object:
        """The model's deployment now, as ``TriggerState.deployment`` holds it."""
        ...


# ----------------------------------------------------------------------------- clocks


class Clock(Protocol):
    """Wall-clock time (unix seconds, for cron) and sleeping, injectable for tests."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class VirtualClock:
    """Virtual time for tests: sleeping costs no real time.

    ``advance`` moves time forward and wakes the sleepers in time order; after each wake
    it lets the woken task run until it sleeps again, then awaits ``settle`` (for example
    :meth:`Retrainer.idle`), so that work started at a virtual instant ends at that
    instant even when it takes real time (a subprocess). ``jump`` moves time without
    waking anyone: the process was down or suspended.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wake = self._now + max(seconds, 0.0)
        heapq.heappush(self._sleepers, (wake, next(self._order), future))
        await future

    @property
    def sleeping(self) -> int:
        return sum(not future.done() for _, _, future in self._sleepers)

    def jump(self, seconds: float) -> None:
        self._now += seconds

    async def advance(
        self, seconds: float, settle: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        target = self._now + seconds
        await self._settle(settle)
        while (wake := self._next_wake()) is not None and wake <= target:
            asleep = self.sleeping
            _, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            future.set_result(None)
            await self._until_asleep(asleep)
            await self._settle(settle)
        self._now = max(self._now, target)

    def _next_wake(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def _until_asleep(self, count: int, limit_s: float = 5.0) -> None:
        """Run the loop until ``count`` tasks sleep again (or, bounded, they never do)."""
        deadline = time.monotonic() + limit_s
        for step in itertools.count():
            if self.sleeping >= count or time.monotonic() > deadline:
                return
            await asyncio.sleep(0 if step < 100 else 0.001)

    async def _settle(self, settle: Callable[[], Awaitable[None]] | None) -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        if settle is not None:
            await settle()


# ----------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a run starts: ``text`` for people, ``details`` (the numbers) for the journal."""

    trigger: Trigger
    text: str
    actor: str = AUTHOR
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One run, as journaled and answered to ``greenroom retrain``."""

    model: str
    run_id: str
    trigger: Trigger
    cause: str  # why it ran
    actor: str
    outcome: Outcome
    reason: str  # why it ended so
    stage: str  # where it ended: export, train, register, validate, deploy
    version: str | None  # registered (even when not deployed)
    parent: str  # the primary when it started
    exit_code: int | None
    started_at: float  # clock time
    ended_at: float
    duration_s: float  # real time
    log_tail: str
    log_path: str | None
    metrics: dict[str, Any] | None
    validation: dict[str, Any] | None

    @property
    def deployed(self) -> bool:
        return self.outcome == "deployed"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Failed(Exception):
    """A run's step failed: recorded with its reason, nothing deployed."""

    def __init__(self, reason: str, outcome: Outcome = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


@dataclass(slots=True)
class _Run:
    """What a run learns as it goes: the outcome and the provenance are built from it."""

    model: str
    model_dir: Path
    policy: Retraining
    cause: Cause
    parent: str
    started_at: float
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    t0: float = field(default_factory=time.monotonic)
    stage: str = "export"
    data: dict[str, Any] | None = None
    command: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    code_ref: str | None = None
    exit_code: int | None = None
    metrics: dict[str, Any] | None = None
    version: str | None = None
    validation: dict[str, Any] | None = None

    def provenance(self) -> dict[str, Any]:
        parameters = {
            "command": self.command,
            "timeout_s": self.policy.timeout_s,
            "files": self.files,
            "run_id": self.run_id,
        }
        return {
            "data": self.data,
            "code_ref": self.code_ref,
            "parameters": parameters,
            "metrics": self.metrics,
            "parent": self.parent,
            "author": AUTHOR,
            "notes": self.cause.text,
        }

    def outcome(
        self, outcome: Outcome, reason: str, ended_at: float, tail: str, log_path: Path | None
    ) -> RunOutcome:
        return RunOutcome(
            model=self.model,
            run_id=self.run_id,
            trigger=self.cause.trigger,
            cause=self.cause.text,
            actor=self.cause.actor,
            outcome=outcome,
            reason=reason,
            stage=self.stage,
            version=self.version,
            parent=self.parent,
            exit_code=self.exit_code,
            started_at=self.started_at,
            ended_at=ended_at,
            duration_s=round(time.monotonic() - self.t0, 3),
            log_tail=tail,
            log_path=None if log_path is None else str(log_path),
            metrics=self.metrics,
            validation=self.validation,
        )


# ----------------------------------------------------------------------------- policy


def next_time(schedule: str, now: float) -> float:
    """The first time of ``schedule`` (UTC) strictly after ``now``."""
    return croniter(schedule, now).get_next(float)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def schedule_cause(schedule: str, due: float, now: float) -> Cause:
    """The cause of a scheduled run; a late one says that missed times are not caught up."""
    late = now - due
    text = f"schedule {schedule!r}: due {_iso(due)}"
    if late >= MAX_SLEEP_S:
        text += f", {late:.0f} s late (the gateway was down or busy; missed times are not run)"
    details = {"schedule": schedule, "due_at": due, "late_s": round(late, 3)}
    return Cause("schedule", text, details=details)


def trigger_cause(triggers: RetrainingTriggers, state: TriggerState) -> Cause | None:
    """The cause of a triggered run, or None. Fires only once ``last_labels`` labels have
    arrived since the previous run ended (the storm rule, see the module's docstring)."""
    if state.labels_since < triggers.last_labels:
        return None
    fired: list[str] = []
    if _below(state.accuracy, triggers.min_accuracy):
        fired.append(
            f"accuracy {state.accuracy:.3f} < {triggers.min_accuracy:.3f} "
            f"over the last {triggers.last_labels} labels"
        )
    if _above(state.max_psi, triggers.max_psi):
        fired.append(f"PSI {state.max_psi:.3f} > {triggers.max_psi:.3f}")
    if not fired:
        return None
    details = {
        "accuracy": state.accuracy,
        "psi": state.max_psi,
        "labels_since": state.labels_since,
        **triggers.model_dump(),  # min_accuracy, last_labels, max_psi: the thresholds
    }
    text = "; ".join(fired) + f" ({state.labels_since} labels since the last run)"
    return Cause("trigger", text, details=details)


def _below(value: float | None, threshold: float | None) -> bool:
    return value is not None and threshold is not None and value < threshold


def _above(value: float | None, threshold: float | None) -> bool:
    return value is not None and threshold is not None and value > threshold


def triggers_enabled(triggers: RetrainingTriggers) -> bool:
    return triggers.min_accuracy is not None or triggers.max_psi is not None


@dataclass(slots=True)
class _Plan:
    """When a model's loop next has something to do: a cron time, a trigger check."""

    schedule: str | None
    next_due: float | None
    interval: float | None
    next_check: float | None

    @classmethod
    def start(cls, policy: Retraining, now: float) -> _Plan:
        schedule = policy.schedule
        interval = policy.check_interval_s if triggers_enabled(policy.triggers) else None
        return cls(
            schedule=schedule,
            next_due=None if schedule is None else next_time(schedule, now),
            interval=interval,
            next_check=None if interval is None else now + interval,
        )

    def sleep_for(self, now: float) -> float:
        wakes = [t for t in (self.next_due, self.next_check) if t is not None]
        return min(max(min(wakes) - now, 0.0), MAX_SLEEP_S)

    def take_due(self, now: float) -> float | None:
        """The passed cron time (the earliest not run), once; the next is after ``now``."""
        if self.schedule is None or self.next_due is None or now < self.next_due:
            return None
        due, self.next_due = self.next_due, next_time(self.schedule, now)
        return due

    def take_check(self, now: float) -> bool:
        if self.interval is None or self.next_check is None or now < self.next_check:
            return False
        self.next_check = now + self.interval
        return True


# ----------------------------------------------------------------------------- retrainer


class Retrainer:
    """Runs each model's retraining policy, and manual runs; one run per model at a time.

    ``policies`` maps a model to its directory (the command's working directory) and its
    policy. ``last_runs`` maps a model to the end of its last run (from the journal) for
    the trigger storm rule. ``log_dir``, if given, keeps every run's full log as
    ``<log_dir>/<model>/<run_id>.log``; the journal always has the tail.
    """

    def __init__(
        self,
        host: RetrainingHost,
        policies: Mapping[str, tuple[Path, Retraining]],
        clock: Clock | None = None,
        *,
        last_runs: Mapping[str, float] | None = None,
        log_dir: Path | None = None,
        work_root: Path | None = None,
        kill_grace_s: float = 5.0,
    ) -> None:
        self.host = host
        self.policies = dict(policies)
        self.clock: Clock = clock or SystemClock()
        self.log_dir = log_dir
        self.work_root = work_root
        self.kill_grace_s = kill_grace_s
        self._last_end: dict[str, float] = dict(last_runs or {})
        self._runs: dict[str, tuple[asyncio.Task[RunOutcome], Cause]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """One loop per model with a schedule or a trigger."""
        for model, (_, policy) in self.policies.items():
            if policy.schedule is not None or triggers_enabled(policy.triggers):
                self._loops.append(asyncio.create_task(self._loop(model), name=f"retrain {model}"))

    async def stop(self) -> None:
        """End the loops and kill the runs in progress (journaled as failed: cancelled);
        from now on no run starts, so that none outlives the ledger and runners it needs."""
        self._stopped = True
        tasks: list[asyncio.Task[Any]] = [*self._loops, *(t for t, _ in self._runs.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()

    def running(self, model: str) -> bool:
        return model in self._runs

    async def idle(self) -> None:
        """Wait until no run is in progress."""
        while self._runs:
            await asyncio.wait([task for task, _ in self._runs.values()])

    async def run_now(self, model: str, reason: str = "", actor: str = "cli") -> RunOutcome:
        """Run now and answer when the run ends. A caller that goes away (cancelled)
        does not stop the run. Raises NotConfigured, AlreadyRunning, Stopped."""
        text = f"manual run by {actor}" + (f": {reason}" if reason else "")
        task = self._spawn(model, Cause("manual", text, actor=actor))
        return await asyncio.shield(task)

    # -- the loop -------------------------------------------------------------------

    async def _loop(self, model: str) -> None:
        plan = _Plan.start(self.policies[model][1], self.clock.now())
        while True:
            await self.clock.sleep(plan.sleep_for(self.clock.now()))
            try:
                await self._tick(model, plan)
            except Exception:  # a failed check must not end the schedule
                log.exception("retraining check failed", model=model)

    async def _tick(self, model: str, plan: _Plan) -> None:
        now = self.clock.now()
        due = plan.take_due(now)
        check = plan.take_check(now)
        if due is not None:
            assert plan.schedule is not None
            await self._start_automatic(model, schedule_cause(plan.schedule, due, now))
        elif check and not self.running(model):
            cause = await self._check_triggers(model)
            if cause is not None:
                await self._start_automatic(model, cause)

    async def _check_triggers(self, model: str) -> Cause | None:
        triggers = self.policies[model][1].triggers
        since = self._last_end.get(model)
        state = await self.host.trigger_state(model, triggers.last_labels, since)
        log.debug("retraining triggers", model=model, **asdict(state))
        if state.deployment != self.host.deployment(model):
            log.info("retraining triggers: the deployment changed during the check", model=model)
            return None
        if self.running(model) or self._last_end.get(model) != since:
            # A run (a manual one) started or ended meanwhile: the labels were counted
            # from the end before it, and the storm rule counts from its end.
            log.info("retraining triggers: a run started during the check", model=model)
            return None
        return trigger_cause(triggers, state)

    async def _start_automatic(self, model: str, cause: Cause) -> None:
        try:
            task = self._spawn(model, cause)
        except Stopped:
            return
        except AlreadyRunning as busy:
            log.info("retraining skipped", model=model, cause=cause.text, reason=str(busy))
            details = {"event": "skipped", "trigger": cause.trigger, **cause.details}
            reason = f"retraining skipped ({cause.text}): {busy}"
            await self.host.journal(model, "retraining", None, reason, details)
            return
        task.add_done_callback(_log_crash)

    def _spawn(self, model: str, cause: Cause) -> asyncio.Task[RunOutcome]:
        """Start a run, refusing a second one of the same model (no await: atomic)."""
        if self._stopped:
            raise Stopped("retraining has stopped: the gateway is shutting down")
        if model not in self.policies:
            raise NotConfigured(f"{model}: no retraining policy in model.yaml")
        if model in self._runs:
            _, current = self._runs[model]
            raise AlreadyRunning(f"{model}: a retraining run is in progress ({current.text})")
        task = asyncio.create_task(self._run(model, cause), name=f"retraining run {model}")
        self._runs[model] = (task, cause)
        task.add_done_callback(lambda _: self._runs.pop(model, None))
        return task

    # -- a run ----------------------------------------------------------------------

    async def _run(self, model: str, cause: Cause) -> RunOutcome:
        model_dir, policy = self.policies[model]
        run = _Run(model, model_dir, policy, cause, self.host.primary(model), self.clock.now())
        await self._journal_start(run)
        work = Path(tempfile.mkdtemp(prefix="greenroom-retrain-", dir=self.work_root))
        try:
            outcome, reason = await self._attempt(run, work)
        except asyncio.CancelledError:
            await self._finish(run, work, "failed", f"cancelled during {run.stage}")
            raise
        return await self._finish(run, work, outcome, reason)

    async def _journal_start(self, run: _Run) -> None:
        log.info("retraining started", model=run.model, run_id=run.run_id, cause=run.cause.text)
        details = {
            "event": "started",
            "run_id": run.run_id,
            "trigger": run.cause.trigger,
            "actor": run.cause.actor,
            "parent": run.parent,
            **run.cause.details,
        }
        reason = f"retraining started: {run.cause.text}"
        await self.host.journal(run.model, "retraining", None, reason, details)

    async def _attempt(self, run: _Run, work: Path) -> tuple[Outcome, str]:
        """The run's steps; any failure becomes an outcome (and nothing is deployed)."""
        try:
            output = await self._train(run, work)
            await self._register(run, output)
            return await self._validate_and_deploy(run)
        except _Failed as failure:
            return failure.outcome, failure.reason
        except Exception as error:  # the host's own errors are recorded the same way
            log.exception("retraining step failed", model=run.model, stage=run.stage)
            return "failed", f"{run.stage}: {type(error).__name__}: {error}"

    async def _train(self, run: _Run, work: Path) -> Path:
        """Export, run the command; the folder holding the artifact."""
        dataset, output = work / "dataset.csv", work / "output"
        output.mkdir()
        export = await self.host.export_dataset(run.model, dataset)
        run.data = asdict(export)
        if export.rows == 0:
            raise _Failed("no labelled data: the ledger has no predictions with ground truth")
        run.stage = "train"
        values = {"dataset": dataset, "output": output, "model": run.model, "primary": run.parent}
        run.command = substitute(run.policy.command, values)
        run.files = await asyncio.to_thread(command_files, run.policy.command, run.model_dir)
        run.code_ref = await git_commit(run.model_dir)
        env = {**os.environ, **{f"GREENROOM_{k.upper()}": str(v) for k, v in values.items()}}
        run.exit_code = await run_command(
            run.command, cwd=run.model_dir, log_path=work / "train.log",
            timeout_s=run.policy.timeout_s, grace_s=self.kill_grace_s, env=env,
        )  # fmt: skip
        if run.exit_code != 0:
            raise _Failed(exit_reason(run.exit_code))
        run.metrics = await asyncio.to_thread(take_metrics, output, work / METRICS_FILE)
        if await asyncio.to_thread(_is_empty, output):
            raise _Failed("the command wrote nothing to its output folder")
        return output

    async def _register(self, run: _Run, output: Path) -> None:
        run.stage = "register"
        try:
            run.version = await self.host.register_version(run.model, output, run.provenance())
        except RegistrationError as error:
            raise _Failed(f"the output is not a servable artifact: {error}") from error

    async def _validate_and_deploy(self, run: _Run) -> tuple[Outcome, str]:
        assert run.version is not None
        run.stage = "validate"
        passed, run.validation = await self.host.validate_version(run.model, run.version)
        if not passed:  # the host journals the validation itself, pass or fail
            raise _Failed(f"version {run.version} failed its validation", "rejected")
        run.stage = "deploy"
        fraction = run.policy.shadow_fraction
        reason = f"retraining ({run.cause.text})"
        await self.host.deploy_shadow(run.model, run.version, fraction, reason)
        return "deployed", (
            f"version {run.version} shadows {run.parent} on {fraction:.0%} of the traffic"
        )

    async def _finish(self, run: _Run, work: Path, outcome: Outcome, reason: str) -> RunOutcome:
        """Keep the log, clean the work folder, remember the end, journal the outcome."""
        tail, kept = await asyncio.to_thread(self._clean_up, run, work)
        ended = self.clock.now()
        self._last_end[run.model] = ended
        result = run.outcome(outcome, reason, ended, tail, kept)
        event = "finished" if result.deployed else "failed"
        log.info(f"retraining {event}", model=run.model, run_id=run.run_id, reason=reason)
        details = {"event": event, **result.as_dict()}
        try:
            await self.host.journal(
                run.model, "retraining", result.version, f"retraining {event}: {reason}", details
            )
        except Exception:  # the caller still learns the outcome; the log has the failure
            log.exception("retraining outcome not journaled", model=run.model, run_id=run.run_id)
        return result

    def _clean_up(self, run: _Run, work: Path) -> tuple[str, Path | None]:
        """The log's tail and where it is kept; the work folder removed (in a thread: an
        artifact can be large, and the event loop serves requests)."""
        log_file = work / "train.log"
        tail = read_tail(log_file, LOG_TAIL_BYTES)
        kept = self._keep_log(run, log_file)
        shutil.rmtree(work, ignore_errors=True)
        return tail, kept

    def _keep_log(self, run: _Run, log_file: Path) -> Path | None:
        if self.log_dir is None or not log_file.exists():
            return None
        target = self.log_dir / run.model / f"{run.run_id}.log"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_file, target)
        except OSError:
            log.exception("retraining log not kept", model=run.model, path=str(target))
            return None
        return target


def _log_crash(task: asyncio.Task[RunOutcome]) -> None:
    """An automatic run has no caller to raise to (e.g. the journal was down)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("retraining run crashed", task=task.get_name(), exc_info=error)


# ----------------------------------------------------------------------------- the command


def substitute(command: list[str], values: Mapping[str, object]) -> list[str]:
    """Replace ``{name}`` in every argument (plain replacement: other braces stay)."""
    argv = []
    for argument in command:
        replaced = argument
        for name, value in values.items():
            replaced = replaced.replace("{" + name + "}", str(value))
        argv.append(replaced)
    return argv


def command_files(command: list[str], model_dir: Path) -> dict[str, str]:
    """sha256 of the command's arguments that are files of the model directory (the
    training script): the code reference when the directory is not in git."""
    root = model_dir.resolve()
    hashes: dict[str, str] = {}
    for argument in command:
        if "{" in argument or "\n" in argument:  # a placeholder, an inline script
            continue
        path = (model_dir / argument).resolve()
        try:
            if path.is_file() and path.is_relative_to(root):
                with path.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                hashes[str(path.relative_to(root))] = digest
        except OSError:  # not a file name (too long, unreadable): not code we can pin
            continue
    return hashes


async def git_commit(directory: Path) -> str | None:
    """HEAD of the git repository holding ``directory``, or None."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", "-C", str(directory), "rev-parse", "HEAD",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    commit = out.decode(errors="replace").strip()
    return commit if proc.returncode == 0 and commit else None


async def run_command(
    argv: list[str],
    *,
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    grace_s: float,
    env: Mapping[str, str],
) -> int:
    """Run ``argv`` in its own process group, output to ``log_path``; the exit code.
    Raises _Failed when it cannot start or runs out of time (the group is then killed)."""
    with log_path.open("wb") as log_file:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        except OSError as error:
            raise _Failed(f"the command could not start: {error}") from error
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            await _terminate(proc, grace_s)
            raise _Failed(f"timed out after {timeout_s:g} s") from None
        finally:  # nothing the command started outlives the run
            signal_group(proc.pid, signal.SIGKILL)


async def _terminate(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM to the group, SIGKILL if the command has not exited after the grace."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the command was killed by signal {name}"
    return f"the command failed with exit code {code}"


def take_metrics(output: Path, aside: Path) -> dict[str, Any] | None:
    """``output/metrics.json`` moved to ``aside`` (it is not the artifact), parsed."""
    source = output / METRICS_FILE
    if not source.is_file():
        return None
    source.replace(aside)
    try:
        metrics = json.loads(aside.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise _Failed(f"{METRICS_FILE} is not JSON: {error}") from error
    if not isinstance(metrics, dict):
        raise _Failed(f"{METRICS_FILE} is not a JSON object")
    return metrics


def _is_empty(folder: Path) -> bool:
    return not any(folder.iterdir())


def read_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a log, as text."""
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - limit, 0))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
