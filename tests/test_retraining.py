"""Retraining (gateway.retraining): schedule and triggers on a virtual clock, real commands.

The host is a fake with an in-memory journal, a real CSV export and a registry that
copies the artifact into a temporary repository and refuses garbage. Training commands
are real processes (``python -c``), so time-outs, kills and logs are the real thing;
only the clock that drives the cron schedule and the trigger checks is virtual.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import psutil
import pytest

from gateway.retraining import (
    AlreadyRunning,
    Cause,
    Export,
    NotConfigured,
    RegistrationError,
    Retrainer,
    RunOutcome,
    Stopped,
    TriggerState,
    VirtualClock,
    substitute,
    trigger_cause,
)
from runners.config import Retraining, RetrainingTriggers

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: cron times are multiples of 600 s from here
MODEL = "churn"
SERVABLE = ("model.joblib", "model.onnx", "model.py")

TRAIN_OK = (
    "import pickle, sys\n"
    "rows = open(sys.argv[1]).read().splitlines()\n"
    "pickle.dump({'rows': len(rows) - 1}, open(sys.argv[2] + '/model.joblib', 'wb'))\n"
    "print('trained on', len(rows) - 1, 'rows')\n"
)
TRAIN_FILE = (
    "import json, os, pickle, sys\n"
    "dataset, output = sys.argv[1], sys.argv[2]\n"
    "rows = open(dataset).read().splitlines()\n"
    "pickle.dump({'rows': len(rows) - 1}, open(os.path.join(output, 'model.joblib'), 'wb'))\n"
    "json.dump({'train_accuracy': 0.93}, open(os.path.join(output, 'metrics.json'), 'w'))\n"
    "seen = {'argv': sys.argv, 'cwd': os.getcwd(), 'model': os.environ['GREENROOM_MODEL']}\n"
    "json.dump(seen, open('seen.json', 'w'))\n"
    "print('trained')\n"
)
# Starts a child, ignores SIGTERM and never finishes: the whole group must be killed.
HANG = (
    "import signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('training forever', flush=True)\n"
    "time.sleep(60)\n"
)


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


@dataclass
class Entry:
    at: float
    kind: str
    version: str | None
    reason: str
    details: dict[str, Any]


@dataclass
class FakeHost:
    """The gateway's side, in memory; ``rows`` are the labelled predictions to export."""

    clock: VirtualClock
    repo: Path
    rows: list[tuple[float, float, str, float]] = field(default_factory=list)
    accuracy: float | None = None
    max_psi: float | None = None
    label_times: list[float] = field(default_factory=list)
    valid: bool = True
    failing_checks: int = 0
    promotions_during_checks: int = 0  # checks during which the deployment changes
    during_check: Callable[[], Awaitable[None]] | None = None  # awaited inside a check
    deployments: int = 0  # how many times it changed
    entries: list[Entry] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    exports: list[str] = field(default_factory=list)  # sha256 of each export
    validated: list[str] = field(default_factory=list)
    deployed: list[tuple[str, str, float, str]] = field(default_factory=list)

    async def export_dataset(self, model: str, path: Path) -> Export:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["x1", "x2", "label"])
            writer.writerows(row[:3] for row in self.rows)
        sha = _sha256(path)
        self.exports.append(sha)
        times = [row[3] for row in self.rows]
        first, last = (min(times), max(times)) if times else (None, None)
        return Export(len(self.rows), ["x1", "x2", "label"], first, last, sha)

    async def register_version(
        self, model: str, artifact_dir: Path, provenance: dict[str, Any]
    ) -> str:
        """Servable: exactly one artifact, and it loads."""
        names = _names(artifact_dir)
        artifacts = [name for name in names if name in SERVABLE]
        if len(artifacts) != 1:
            raise RegistrationError(f"expected one of {SERVABLE}, found {names}")
        try:
            joblib.load(artifact_dir / artifacts[0])
        except Exception as error:
            raise RegistrationError(f"{artifacts[0]} does not load: {error}") from error
        version = str(len(self.provenance) + 2)
        shutil.copytree(artifact_dir, self.repo / model / version)
        self.provenance[version] = provenance
        return version

    async def validate_version(self, model: str, version: str) -> tuple[bool, dict[str, Any]]:
        self.validated.append(version)
        return self.valid, {"holdout_accuracy": 0.9 if self.valid else 0.4}

    async def deploy_shadow(self, model: str, version: str, fraction: float, reason: str) -> None:
        self.deployed.append((model, version, fraction, reason))

    async def journal(
        self, model: str, kind: str, version: str | None, reason: str, details: dict[str, Any]
    ) -> None:
        json.dumps(details)  # what the ledger stores must be JSON
        self.entries.append(Entry(self.clock.now(), kind, version, reason, details))

    async def trigger_state(
        self, model: str, last_labels: int, since: float | None
    ) -> TriggerState:
        if self.failing_checks:
            self.failing_checks -= 1
            raise RuntimeError("ledger unavailable")
        if self.during_check is not None:
            await self.during_check()
        since_ = -1.0 if since is None else since
        accuracy = self.accuracy if len(self.label_times) >= last_labels else None
        labels_since = sum(t > since_ for t in self.label_times)
        read_under = self.deployments
        if self.promotions_during_checks:
            self.promotions_during_checks -= 1
            self.deployments += 1
        return TriggerState(accuracy, labels_since, self.max_psi, read_under)

    def primary(self, model: str) -> str:
        return "1"

    def deployment(self, model: str) -> object:
        return self.deployments

    def add_labels(self, n: int) -> None:
        self.label_times += [self.clock.now()] * n

    def events(self, event: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == "retraining" and e.details["event"] == event]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@dataclass
class Setup:
    clock: VirtualClock
    host: FakeHost
    model_dir: Path
    work: Path

    def retrainer(self, policy: Retraining, **options: Any) -> Retrainer:
        policies = {MODEL: (self.model_dir, policy)}
        return Retrainer(self.host, policies, self.clock, work_root=self.work, **options)

    def starts(self) -> list[float]:
        return [e.at - T0 for e in self.host.events("started")]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    clock = VirtualClock(T0 + 1)
    (tmp_path / "repo").mkdir()
    host = FakeHost(clock, tmp_path / "repo")
    host.rows = [(i / 10, i % 3, "yes" if i % 2 else "no", T0 - 1000 + i) for i in range(30)]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "work").mkdir()
    return Setup(clock, host, model_dir, tmp_path / "work")


def policy(command: list[str] | None = None, **options: Any) -> Retraining:
    return Retraining(command=command or python(TRAIN_OK, "{dataset}", "{output}"), **options)


def assert_not_deployed(s: Setup, outcome: RunOutcome, reason: str) -> None:
    assert outcome.outcome == "failed", outcome
    assert reason in outcome.reason
    assert s.host.deployed == []
    [failed] = s.host.events("failed")
    assert reason in failed.reason and failed.details["outcome"] == "failed"
    assert [e.details["event"] for e in s.host.entries] == ["started", "failed"]
    assert list(s.work.iterdir()) == []  # the work folder is cleaned


# ----------------------------------------------------------------------------- schedule


def test_cron_runs_at_its_times_on_the_virtual_clock(setup: Setup) -> None:
    async def scenario() -> None:
        retrainer = setup.retrainer(policy(schedule="*/10 * * * *"))
        retrainer.start()
        await setup.clock.advance(3600, settle=retrainer.idle)
        await retrainer.stop()

    asyncio.run(scenario())
    assert setup.starts() == [600, 1200, 1800, 2400, 3000, 3600]
    assert [d[1] for d in setup.host.deployed] == ["2", "3", "4", "5", "6", "7"]
    assert len(setup.host.events("finished")) == 6
    assert setup.host.events("started")[0].details["due_at"] == T0 + 600


def test_downtime_runs_once_then_the_schedule_resumes(setup: Setup) -> None:
    async def scenario() -> None:
        retrainer = setup.retrainer(policy(schedule="*/10 * * * *"))
        retrainer.start()
        await setup.clock.advance(600, settle=retrainer.idle)
        setup.clock.jump(86_400 + 123)  # suspended for a day: 144 times missed
        await setup.clock.advance(0, settle=retrainer.idle)
        assert len(setup.host.events("started")) == 2  # one run, not 144
        await setup.clock.advance(1200, settle=retrainer.idle)
        await retrainer.stop()

    asyncio.run(scenario())
    assert setup.starts() == [600, 87_124, 87_600, 88_200]  # 601 + a day + 123 s, then */10
    late = setup.host.events("started")[1]
    assert "missed times are not run" in late.reason
    assert late.details["due_at"] == T0 + 1200


def test_a_gateway_that_starts_waits_for_the_next_time(setup: Setup) -> None:
    """Times before the gateway started (it was down) are not run at start."""

    async def scenario() -> None:
        setup.clock.jump(86_400 + 4)  # now T0 + 1 day + 5 s
        retrainer = setup.retrainer(policy(schedule="*/10 * * * *"))
        retrainer.start()
        await setup.clock.advance(590, settle=retrainer.idle)
        assert setup.host.events("started") == []
        await setup.clock.advance(10, settle=retrainer.idle)
        await retrainer.stop()

    asyncio.run(scenario())
    assert setup.starts() == [86_400 + 600]


# ----------------------------------------------------------------------------- triggers


def low_accuracy(setup: Setup) -> tuple[RetrainingTriggers, FakeHost]:
    """Triggers at 80% over 20 labels, and a host whose primary is at 70% over 20."""
    setup.host.accuracy = 0.7
    setup.host.add_labels(20)
    return RetrainingTriggers(min_accuracy=0.8, last_labels=20), setup.host


def test_low_accuracy_triggers_once_per_batch_of_new_labels(setup: Setup) -> None:
    triggers, host = low_accuracy(setup)

    async def scenario() -> None:
        retrainer = setup.retrainer(policy(triggers=triggers, check_interval_s=60))
        retrainer.start()
        await setup.clock.advance(60, settle=retrainer.idle)
        assert setup.starts() == [61]
        await setup.clock.advance(600, settle=retrainer.idle)  # still bad, no new labels
        host.add_labels(19)
        await setup.clock.advance(120, settle=retrainer.idle)
        assert len(host.events("started")) == 1
        host.add_labels(1)
        await setup.clock.advance(60, settle=retrainer.idle)
        await retrainer.stop()

    asyncio.run(scenario())
    assert setup.starts() == [61, 841]
    first = host.events("started")[0]
    assert "accuracy 0.700 < 0.800 over the last 20 labels" in first.reason
    assert first.details["trigger"] == "trigger"
    assert first.details["accuracy"] == 0.7 and first.details["labels_since"] == 20


def test_psi_trigger_and_a_failing_check_does_not_end_the_loop(setup: Setup) -> None:
    triggers = RetrainingTriggers(max_psi=0.2, last_labels=10)
    host = setup.host
    host.accuracy, host.max_psi, host.failing_checks = 0.95, 0.35, 2
    host.add_labels(10)

    async def scenario() -> None:
        retrainer = setup.retrainer(policy(triggers=triggers, check_interval_s=60))
        retrainer.start()
        await setup.clock.advance(120, settle=retrainer.idle)  # two checks raise
        assert host.events("started") == []
        await setup.clock.advance(60, settle=retrainer.idle)
        await retrainer.stop()

    asyncio.run(scenario())
    assert setup.starts() == [181]
    started = host.events("started")[0]
    assert "PSI 0.350 > 0.200" in started.reason
    assert (started.details["psi"], started.details["max_psi"]) == (0.35, 0.2)
    assert len(host.deployed) == 1


def test_numbers_read_while_the_deployment_changed_fire_nothing(setup: Setup) -> None:
    """A promotion during a check: the accuracy read may be the old primary's, so the
    check is dropped and the next one, under the new deployment, decides."""
    triggers = RetrainingTriggers(min_accuracy=0.8, last_labels=20)
    host = setup.host
    host.accuracy, host.promotions_during_checks = 0.7, 2
    host.add_labels(20)

    async def scenario() -> None:
        retrainer = setup.retrainer(policy(triggers=triggers, check_interval_s=60))
        retrainer.start()
        await setup.clock.advance(120, settle=retrainer.idle)  # two checks, both moot
        assert host.events("started") == []
        await setup.clock.advance(60, settle=retrainer.idle)
        await retrainer.stop()

    asyncio.run(scenario())
    assert setup.starts() == [181]


def test_a_manual_run_during_a_trigger_check_resets_the_count(setup: Setup) -> None:
    """The check counted its labels from before a manual run that ended meanwhile: the
    storm rule counts from that run's end, so nothing fires until new labels arrive."""
    triggers, host = low_accuracy(setup)

    async def scenario() -> None:
        retrainer = setup.retrainer(policy(triggers=triggers, check_interval_s=60))

        async def manual_run() -> None:
            host.during_check = None
            await retrainer.run_now(MODEL, "by hand")

        host.during_check = manual_run
        retrainer.start()
        await setup.clock.advance(60, settle=retrainer.idle)
        await setup.clock.advance(600, settle=retrainer.idle)  # no label since that run
        await retrainer.stop()

    asyncio.run(scenario())
    assert [e.details["trigger"] for e in host.events("started")] == ["manual"]


def test_no_run_starts_once_stopped(setup: Setup) -> None:
    """After stop (the gateway shutting down) a manual request is refused and no
    scheduled or triggered run starts: none may outlive the ledger it writes to."""
    triggers, _ = low_accuracy(setup)

    async def scenario() -> None:
        retrainer = setup.retrainer(policy(triggers=triggers, check_interval_s=60))
        retrainer.start()
        await retrainer.stop()
        with pytest.raises(Stopped, match="shutting down"):
            await retrainer.run_now(MODEL, "too late")
        await retrainer._start_automatic(MODEL, Cause("trigger", "late check"))
        assert not retrainer.running(MODEL)

    asyncio.run(scenario())
    assert setup.host.entries == []


def test_trigger_rules() -> None:
    triggers = RetrainingTriggers(min_accuracy=0.8, last_labels=100, max_psi=0.2)
    assert trigger_cause(triggers, TriggerState(0.5, 99, 0.9)) is None  # too few new labels
    assert trigger_cause(triggers, TriggerState(None, 500, None)) is None  # nothing known
    assert trigger_cause(triggers, TriggerState(0.8, 500, 0.2)) is None  # at the thresholds
    cause = trigger_cause(triggers, TriggerState(0.7, 100, 0.3))
    assert cause is not None and "accuracy" in cause.text and "PSI" in cause.text
    assert trigger_cause(RetrainingTriggers(), TriggerState(0.1, 10**6, 9.0)) is None


def test_placeholders_replace_in_every_argument() -> None:
    values = {"dataset": Path("/w/d.csv"), "output": "/w/out", "model": "m", "primary": "3"}
    command = ["train", "--data={dataset}", "{output}/x", "{model}@{primary}", '{"k": 1}']
    assert substitute(command, values) == [
        "train",
        "--data=/w/d.csv",
        "/w/out/x",
        "m@3",
        '{"k": 1}',
    ]


# ----------------------------------------------------------------------------- one at a time


def test_one_run_per_model_and_a_scheduled_start_during_a_run_is_skipped(setup: Setup) -> None:
    slow = "import time; time.sleep(1)\n" + TRAIN_OK

    async def scenario() -> RunOutcome:
        command = python(slow, "{dataset}", "{output}")
        retrainer = setup.retrainer(policy(command, schedule="0 * * * *"))
        retrainer.start()
        first = asyncio.create_task(retrainer.run_now(MODEL, "by hand", "alice"))
        await asyncio.sleep(0)
        assert retrainer.running(MODEL)
        with pytest.raises(AlreadyRunning, match="in progress"):
            await retrainer.run_now(MODEL)
        with pytest.raises(NotConfigured):
            await retrainer.run_now("other")
        await setup.clock.advance(3600)  # the hourly time passes while the run goes on
        outcome = await first
        await retrainer.stop()
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome.outcome == "deployed" and outcome.actor == "alice"
    assert "alice" in outcome.cause and "by hand" in outcome.cause
    [skipped] = setup.host.events("skipped")
    assert skipped.details["trigger"] == "schedule" and "in progress" in skipped.reason
    assert len(setup.host.events("started")) == 1


def test_stop_kills_a_run_and_journals_it(setup: Setup) -> None:
    async def scenario() -> None:
        retrainer = setup.retrainer(policy(python("import time; time.sleep(60)")))
        run = asyncio.create_task(retrainer.run_now(MODEL))
        await asyncio.sleep(0.3)  # the command has started
        assert setup.host.events("started") and retrainer.running(MODEL)
        await retrainer.stop()
        with pytest.raises(asyncio.CancelledError):
            await run

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 10
    [failed] = setup.host.events("failed")
    assert "cancelled during train" in failed.reason
    assert setup.host.deployed == []


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (
            "import sys; print('boom: no column x3', file=sys.stderr); sys.exit(3)",
            "the command failed with exit code 3",
        ),
        (
            "import sys; open(sys.argv[2] + '/model.joblib', 'wb').write(b'garbage')",
            "not a servable artifact: model.joblib does not load",
        ),
        (
            "import sys; open(sys.argv[2] + '/weights.bin', 'wb').write(b'garbage')",
            "not a servable artifact: expected one of",
        ),
        ("print('nothing to do')", "the command wrote nothing to its output folder"),
        (
            TRAIN_OK + "open(sys.argv[2] + '/metrics.json', 'w').write('{oops')\n",
            "metrics.json is not JSON",
        ),
    ],
    ids=["exit-code", "garbage-artifact", "no-artifact", "empty-output", "garbage-metrics"],
)
def test_a_failed_command_is_recorded_and_nothing_deployed(
    setup: Setup, script: str, reason: str
) -> None:
    retrainer = setup.retrainer(policy(python(script, "{dataset}", "{output}")))
    outcome = asyncio.run(retrainer.run_now(MODEL))
    assert_not_deployed(setup, outcome, reason)
    assert setup.host.validated == []
    if "exit code" in reason:
        assert outcome.exit_code == 3 and "boom: no column x3" in outcome.log_tail
        assert "boom: no column x3" in setup.host.events("failed")[0].details["log_tail"]


def test_a_command_that_cannot_start(setup: Setup) -> None:
    retrainer = setup.retrainer(policy([str(setup.model_dir / "no-such-trainer"), "{dataset}"]))
    outcome = asyncio.run(retrainer.run_now(MODEL))
    assert_not_deployed(setup, outcome, "the command could not start")


def test_a_hanging_command_is_killed_with_its_children(setup: Setup, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    command = python(HANG, str(pid_file))
    retrainer = setup.retrainer(policy(command, timeout_s=3), kill_grace_s=0.5)
    started = time.monotonic()
    outcome = asyncio.run(retrainer.run_now(MODEL))
    assert time.monotonic() - started < 30  # killed, not waited for
    assert_not_deployed(setup, outcome, "timed out after 3 s")
    assert outcome.stage == "train" and "training forever" in outcome.log_tail
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 3
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_no_labelled_data_runs_nothing(setup: Setup, tmp_path: Path) -> None:
    setup.host.rows = []
    marker = tmp_path / "ran"
    command = python("import sys; open(sys.argv[1], 'w')", str(marker))
    outcome = asyncio.run(setup.retrainer(policy(command)).run_now(MODEL))
    assert_not_deployed(setup, outcome, "no labelled data")
    assert outcome.stage == "export" and not marker.exists()


def test_a_version_that_fails_validation_is_not_deployed(setup: Setup) -> None:
    setup.host.valid = False
    outcome = asyncio.run(setup.retrainer(policy()).run_now(MODEL))
    assert outcome.outcome == "rejected" and outcome.version == "2"
    assert outcome.validation == {"holdout_accuracy": 0.4}
    assert setup.host.deployed == []
    kinds = [(e.kind, e.details["event"], e.version) for e in setup.host.entries]
    assert kinds == [
        ("retraining", "started", None),
        ("retraining", "failed", "2"),
    ]


# ----------------------------------------------------------------------------- success


def _git_repo(directory: Path) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=directory, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout.strip()

    git("init", "-q")
    git("add", "train.py")
    git("commit", "-q", "-m", "training script")
    return git("rev-parse", "HEAD")


def test_a_run_registers_with_provenance_validates_and_shadows(
    setup: Setup, tmp_path: Path
) -> None:
    train = setup.model_dir / "train.py"
    train.write_text(TRAIN_FILE)
    commit = _git_repo(setup.model_dir)
    command = [sys.executable, "train.py", "{dataset}", "{output}", "--run={model}@{primary}"]
    retrainer = setup.retrainer(
        policy(command, timeout_s=30, shadow_fraction=0.25), log_dir=tmp_path / "logs"
    )
    outcome = asyncio.run(retrainer.run_now(MODEL, "new data", "alice"))

    assert outcome.outcome == "deployed", outcome
    assert (outcome.version, outcome.parent, outcome.exit_code) == ("2", "1", 0)
    assert outcome.metrics == {"train_accuracy": 0.93} and "trained" in outcome.log_tail
    assert outcome.log_path is not None and "trained" in Path(outcome.log_path).read_text()
    provenance = setup.host.provenance["2"]
    assert provenance["data"] == {
        "rows": 30,
        "columns": ["x1", "x2", "label"],
        "first_at": T0 - 1000,
        "last_at": T0 - 971,
        "sha256": setup.host.exports[0],
    }
    assert provenance["code_ref"] == commit
    parameters = provenance["parameters"]
    argv = parameters["command"]
    assert argv[:2] == [sys.executable, "train.py"] and argv[4] == "--run=churn@1"
    assert argv[2].endswith("/dataset.csv") and argv[3].endswith("/output")
    assert parameters["timeout_s"] == 30
    assert parameters["files"] == {"train.py": hashlib.sha256(train.read_bytes()).hexdigest()}
    assert provenance["metrics"] == {"train_accuracy": 0.93}
    assert (provenance["parent"], provenance["author"]) == ("1", "retraining")
    assert "alice" in provenance["notes"] and "new data" in provenance["notes"]

    assert _names(setup.host.repo / MODEL / "2") == ["model.joblib"]
    assert setup.host.validated == ["2"]
    [(model, version, fraction, _)] = setup.host.deployed
    assert (model, version, fraction) == (MODEL, "2", 0.25)
    [finished] = setup.host.events("finished")
    assert finished.version == "2" and finished.details["outcome"] == "deployed"
    seen = json.loads((setup.model_dir / "seen.json").read_text())
    assert seen["cwd"] == str(setup.model_dir) and seen["model"] == MODEL
    assert seen["argv"][1:] == argv[2:]
    assert list(setup.work.iterdir()) == []
