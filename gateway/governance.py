"""Governance over the control plane: registry, drift, accuracy over time, validation,
backtests, and the host side of retraining.

Domain code like ``gateway.control`` (which it builds on): database work runs in worker
threads, runner calls go through ``gateway.direct`` so that nothing here is recorded as
traffic. Everything that changes a model (a registration, a validation, a reference
sample, a retraining run) is written to the model's journal.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import functools
import io
import shutil
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from gateway import registry
from gateway.completion import to_completion
from gateway.control import ControlPlane
from gateway.direct import predictor
from gateway.drift import FeatureDrift, Kind, feature_drift
from gateway.evaluation import Task
from gateway.launch import Launcher
from gateway.ledger.records import JournalEntry, Reference, VersionRecord
from gateway.prediction import Predict
from gateway.replicas import Backend
from gateway.repository import ARTIFACTS, ModelEntry, VersionEntry, version_key
from gateway.router import require_model_name
from gateway.settings import GatewaySettings
from gateway.validation import ValidationResult, load_checks, validate
from greenroom_client.errors import Aborted, FailedPrecondition, InvalidArgument
from runners.config import ConfigError

if TYPE_CHECKING:
    from gateway.retraining import Retrainer

log = structlog.get_logger(__name__)

Bucket = Literal["hour", "day"]
BUCKET_S: dict[str, float] = {"hour": 3600.0, "day": 86400.0}
# Rows kept as a version's reference sample when it comes from a big file.
REFERENCE_ROWS = 5000
# The validation result a deployment change looks for is the version's latest.
VALIDATION = "validation"


@dataclass(frozen=True, slots=True)
class TimePoint:
    start: float
    version: str
    rows: int
    labelled: int
    value: float | None  # accuracy, or MAE for regression


@dataclass(frozen=True, slots=True)
class OverTime:
    model: str
    task: Task
    by: Bucket
    points: list[TimePoint]
    roles: dict[str, str]


@dataclass(frozen=True, slots=True)
class DriftReport:
    model: str
    version: str
    reference_source: str
    features: list[FeatureDrift]

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.features)

    @property
    def max_psi(self) -> float | None:
        values = [f.psi for f in self.features if f.psi is not None]
        return max(values) if values else None


def bucket_of(by: str) -> float:
    if by not in BUCKET_S:
        raise InvalidArgument(f"--by must be hour or day, got '{by}'")
    return BUCKET_S[by]


def parse_csv(text: str) -> tuple[tuple[str, ...], list[list[Any]]]:
    """A CSV with a header; numbers become floats, a ``label`` column is left out."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise InvalidArgument("reference CSV is empty")
    keep = [i for i, name in enumerate(header) if name != "label"]
    rows: list[list[Any]] = []
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise InvalidArgument(
                f"reference CSV line {number}: {len(row)} values, want {len(header)}"
            )
        rows.append([_value(row[i]) for i in keep])
    return tuple(header[i] for i in keep), rows


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _sample(rows: list[list[Any]], limit: int) -> list[list[Any]]:
    if len(rows) <= limit:
        return rows
    picked = np.random.default_rng(0).choice(len(rows), size=limit, replace=False)
    return [rows[i] for i in sorted(picked)]


def _column(rows: Sequence[Sequence[Any]], index: int, categorical: bool) -> npt.NDArray[Any]:
    values = [row[index] for row in rows]
    if categorical:
        return np.asarray([str(v) for v in values], dtype=object)
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray([str(v) for v in values], dtype=object)


def _table(rows: Sequence[Sequence[Any]]) -> npt.NDArray[Any]:
    try:
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(rows, dtype=object)


def _score(task: Task, predicted: Any, truth: str) -> float | None:
    """1/0 for a classification row, the absolute error for a regression row."""
    if task == "classification":
        return float(str(predicted) == truth)
    try:
        return abs(float(predicted) - float(truth))
    except (TypeError, ValueError):
        return None


def _points(
    scored: Iterable[tuple[str, float, float | None, bool]], bucket: float
) -> list[TimePoint]:
    """(version, at, score or None, labelled) rows into one point per version per window."""
    acc: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for version, at, score, labelled in scored:
        cell = acc[(version, (at // bucket) * bucket)]
        cell[0] += 1
        if labelled and score is not None:
            cell[1] += 1
            cell[2] += score
    return [
        TimePoint(start, version, int(n), int(k), (total / k) if k else None)
        for (version, start), (n, k, total) in sorted(
            acc.items(), key=lambda item: (item[0][1], version_key(item[0][0]))
        )
    ]


class Governor:
    def __init__(
        self, control: ControlPlane, launcher: Launcher | None, settings: GatewaySettings
    ) -> None:
        self.control = control
        self.router = control.router
        self.ledger = control.ledger
        self.launcher = launcher  # starts the runners of versions registered while serving
        # Tells the other workers of --workers N about a registered version (they attach).
        self.announce: Callable[[], Awaitable[None]] | None = None
        # Attaches the versions the other workers registered (called under the change lock).
        self.adopt: Callable[[], Awaitable[None]] | None = None
        # A worker without the retrainer sends `retrain` to the one that has it.
        self.forward_retrain: Callable[[str, str], Awaitable[dict[str, Any]]] | None = None
        self.settings = settings
        self.target: str | None = None  # the gateway's address, for model test programs
        self.retrainer: Retrainer | None = None  # when a model has a retraining policy
        control.gate = functools.partial(require_validation, self)

    # ---- journal ----------------------------------------------------------------------

    async def journal(
        self, model: str, kind: str, *, version: str | None, reason: str,
        details: dict[str, Any], actor: str = "gateway",
    ) -> None:  # fmt: skip
        entry = JournalEntry(time.time(), kind, version, reason, actor, details)
        await asyncio.to_thread(self.ledger.governance.append, model, entry)

    async def history(self, model: str) -> list[JournalEntry]:
        self.router.model(model)
        return await asyncio.to_thread(self.ledger.journal, model)

    # ---- registry ---------------------------------------------------------------------

    async def register(
        self, model: str, *, version: str | None, filename: str, data: bytes,
        metadata: dict[str, Any], reference_csv: str, reason: str, actor: str,
    ) -> VersionRecord:  # fmt: skip
        """Stage the artifact, prove it loads in a runner, record it, then serve it. A
        model the gateway does not serve yet is created (its directory, no model.yaml).
        A caller that goes away (a client's deadline) does not stop it half done."""
        require_model_name(model)  # a new model is not looked up, so not checked there
        if self.launcher is None:
            raise FailedPrecondition("this gateway cannot start runners for new versions")
        registry.check_metadata(metadata)
        reference = parse_csv(reference_csv) if reference_csv else None
        record, new = await to_completion(
            self._register(
                model, version, filename, data, metadata=metadata, reason=reason, actor=actor,
                reference=reference,
            )
        )  # fmt: skip
        log.info("version registered", model=model, version=record.version, new_model=new)
        return record

    async def _register(
        self, model: str, version: str | None, filename: str, data: bytes, *,
        metadata: dict[str, Any], reason: str, actor: str,
        reference: tuple[tuple[str, ...], list[list[Any]]] | None,
    ) -> tuple[VersionRecord, bool]:  # fmt: skip
        """Run to completion whatever happens to the caller, its drift reference included:
        a registration cancelled between its steps would leave a record without its
        directory, or a directory without its record, and every later registration of
        the model would collide with it. Returns the record and whether the model is new."""
        async with self.control.changes:
            new = model not in self.router.models
            entry = await self._new_model(model) if new else self.router.model(model)
            new = model not in self.router.models
            try:
                record, version_entry, backend = await self._load(
                    entry, version, filename, data, metadata=metadata, reason=reason, actor=actor
                )
            except Exception:
                if new:
                    await asyncio.to_thread(shutil.rmtree, entry.path, True)
                raise
            self._serve(entry, version_entry, backend, new=new)
        # Outside the lock: another worker registering at the same time holds its own
        # while it announces to this one, whose reload takes this lock.
        if self.announce is not None:
            await self.announce()
        if reference is not None:
            await self._save_reference(
                model, record.version, *reference, source="registration", actor=actor
            )
        return record, new

    async def _new_model(self, model: str) -> ModelEntry:
        """A model's directory for its first version; with --workers N, the model another
        worker has just registered (adopted), or ABORTED while that registration is still
        under way (the directory is there, the model not yet served)."""
        try:
            return await asyncio.to_thread(registry.new_model, self.settings.repo, model)
        except FailedPrecondition as exc:
            if self.adopt is None:
                raise
            await self.adopt()
            if model in self.router.models:
                return self.router.model(model)
            raise Aborted(
                f"{exc.message}; or another worker is registering its first version: if so, "
                "try again once that registration has answered"
            ) from None

    async def _load(
        self, entry: ModelEntry, version: str | None, filename: str, data: bytes, *,
        metadata: dict[str, Any], reason: str, actor: str,
    ) -> tuple[VersionRecord, VersionEntry, Backend]:  # fmt: skip
        """Stage, start and record one version; on any failure, nothing of it is left."""
        assert self.launcher is not None
        recorded = (
            [] if version else await asyncio.to_thread(self.ledger.governance.versions, entry.name)
        )
        staged = await asyncio.to_thread(
            registry.stage, entry, version, filename, data, [r.version for r in recorded]
        )
        version_entry = VersionEntry(
            entry.name, staged.version, staged.directory, ARTIFACTS[staged.artifact.name],
            staged.sha256,
        )  # fmt: skip
        try:
            backend = await self.launcher.launch(entry, version_entry)
        except BaseException:
            await asyncio.to_thread(registry.unstage, staged)
            raise
        try:
            record = registry.record_for(
                entry.name, staged.version, staged.artifact, staged.sha256,
                runner=registry.runner_name(entry, version_entry), metadata=metadata,
            )  # fmt: skip
            await asyncio.to_thread(registry.save, self.ledger, record, reason, actor)
        except BaseException:
            await self.launcher.discard(entry, version_entry, backend)
            await asyncio.to_thread(registry.unstage, staged)
            raise
        return record, version_entry, backend

    def _serve(
        self, entry: ModelEntry, version_entry: VersionEntry, backend: Backend, *, new: bool
    ) -> None:
        """From the next request on, the version answers when asked (a new model's first
        version is its primary)."""
        entry.versions[version_entry.version] = version_entry
        ordered = sorted(entry.versions.items(), key=lambda item: version_key(item[0]))
        entry.versions.clear()
        entry.versions.update(ordered)
        self.router.runners[(entry.name, version_entry.version)] = backend
        if new:
            self.router.add_model(dataclasses.replace(entry, primary=version_entry.version))

    async def versions(self, model: str) -> list[VersionRecord]:
        self.router.model(model)
        return await asyncio.to_thread(self.ledger.governance.versions, model)

    # ---- drift --------------------------------------------------------------------------

    async def _save_reference(
        self, model: str, version: str, columns: tuple[str, ...], rows: list[list[Any]],
        *, source: str, actor: str,
    ) -> Reference:  # fmt: skip
        reference = Reference(
            model, version, columns, _sample(rows, REFERENCE_ROWS), source, time.time()
        )
        entry = JournalEntry(
            reference.created_at, "reference", version,
            f"drift reference: {len(reference.rows)} rows from {source}", actor,
            {"columns": list(columns), "rows": len(reference.rows), "source": source},
        )  # fmt: skip
        await asyncio.to_thread(self.ledger.governance.save_reference, reference, entry)
        return reference

    async def freeze_reference(self, model: str, version: str, rows: int, actor: str) -> Reference:
        entry = self.router.model(model)
        version = version or self.router.deployment(model).primary
        self.router.resolve(model, version)
        limit = rows or entry.config.monitoring.drift_window
        await asyncio.to_thread(self.ledger.flush)
        columns, live = await asyncio.to_thread(self.ledger.governance.recent_inputs, model, limit)
        if not live:
            raise FailedPrecondition(
                f"no sampled inputs for '{model}': set monitoring.input_sample_rate in model.yaml"
            )
        return await self._save_reference(
            model, version, columns, live, source="frozen live window", actor=actor
        )

    async def drift(self, model: str, version: str = "") -> DriftReport:
        entry = self.router.model(model)
        version = version or self.router.deployment(model).primary
        self.router.resolve(model, version)
        reference = await asyncio.to_thread(self.ledger.governance.reference, model, version)
        if reference is None:
            raise FailedPrecondition(
                f"version {version} of '{model}' has no reference sample: register it with "
                "--reference, or freeze one with 'greenroom drift --freeze'"
            )
        window = entry.config.monitoring.drift_window
        await asyncio.to_thread(self.ledger.flush)
        columns, live = await asyncio.to_thread(self.ledger.governance.recent_inputs, model, window)
        features = self._features(reference, columns, live, entry.config.categorical)
        return DriftReport(model, version, reference.source, features)

    @staticmethod
    def _features(
        reference: Reference, columns: tuple[str, ...], live: list[list[Any]],
        categorical: Sequence[str],
    ) -> list[FeatureDrift]:  # fmt: skip
        if live and set(reference.columns) - set(columns):
            missing = sorted(set(reference.columns) - set(columns))
            raise FailedPrecondition(f"sampled inputs lack the reference's features {missing}")
        position = {name: i for i, name in enumerate(columns)}
        results = []
        for i, name in enumerate(reference.columns):
            cat = name in categorical
            ref = _column(reference.rows, i, cat)
            now = _column(live, position[name], cat) if live else ref[:0]
            kind: Kind | None = "categorical" if cat or ref.dtype == object else None
            results.append(
                feature_drift(name, ref, now, features=len(reference.columns), kind=kind)
            )
        return results

    # ---- accuracy over time ---------------------------------------------------------------

    async def over_time(self, model: str, by: str, since_s: float) -> OverTime:
        bucket = bucket_of(by)
        task = self.control.task(model)
        since = time.time() - since_s if since_s > 0 else None
        points = await asyncio.to_thread(self._over_time, model, task, since, bucket)
        return OverTime(model, task, by, points, self._roles(model))  # type: ignore[arg-type]

    def _over_time(
        self, model: str, task: Task, since: float | None, bucket: float
    ) -> list[TimePoint]:
        """Worker thread: the window streamed from the ledger into per-bucket sums."""
        scored = (
            (r.version, r.created_at,
             _score(task, r.label if task == "classification" else r.value, r.truth)
             if r.truth is not None and r.status == "OK" else None,
             r.truth is not None)
            for r in self.ledger.iter_rows(model, since)
        )  # fmt: skip
        return _points(scored, bucket)

    def _roles(self, model: str) -> dict[str, str]:
        deployment = self.router.deployment(model)
        return {v: deployment.role_of(v) or "" for v in self.router.versions(model)}

    # ---- direct calls: validation and backtests ----------------------------------------

    def predictor(self, model: str, version: str) -> Predict:
        backend = self.router.resolve(model, version)
        return predictor(
            backend, self.router.output_roles(model, version), self.settings.default_deadline_s
        )

    async def backtest(
        self, model: str, versions: Sequence[str], since_s: float, by: str
    ) -> OverTime:
        """Replay labelled sampled inputs through each version, scored per window."""
        bucket = bucket_of(by)
        task = self.control.task(model)
        names = list(versions) or self.router.versions(model)
        for version in names:
            self.router.resolve(model, version)
        since = time.time() - since_s if since_s > 0 else None
        await asyncio.to_thread(self.ledger.flush)
        _, labelled = await asyncio.to_thread(self.ledger.governance.labelled_inputs, model, since)
        if not labelled:
            raise FailedPrecondition(
                f"no labelled sampled inputs for '{model}': sample inputs "
                "(monitoring.input_sample_rate) and send feedback first"
            )
        table = _table([row.values for row in labelled])
        points: list[TimePoint] = []
        for version in names:
            prediction = await self.predictor(model, version)(table)
            answers = prediction.labels if task == "classification" else prediction.values
            if answers is None:
                raise FailedPrecondition(f"version {version} gives no {task} answer")
            scored = (
                (version, row.created_at, _score(task, answer, row.truth), True)
                for row, answer in zip(labelled, answers, strict=True)
            )
            points.extend(_points(scored, bucket))
        points.sort(key=lambda p: (p.start, version_key(p.version)))
        return OverTime(model, task, by, points, self._roles(model))  # type: ignore[arg-type]

    # ---- deployments that need validation ----------------------------------------------

    async def passed_validation(self, model: str, version: str) -> bool:
        entries = await asyncio.to_thread(self.ledger.governance.entries, model, [VALIDATION])
        latest = [e for e in entries if e.version == version]
        return bool(latest and latest[-1].details.get("passed"))


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


# ---- validation ----------------------------------------------------------------------------


async def run_validation(
    governor: Governor, model: str, version: str, actor: str
) -> ValidationResult:
    """Run the model's checks against one version and journal the outcome, pass or fail."""
    entry = governor.router.model(model)
    governor.router.resolve(model, version)
    result = await validate(
        model, version, entry.path, entry.config, governor.predictor(model, version),
        target=governor.target,
    )  # fmt: skip
    verdict = "passed" if result.passed else "failed"
    failed = [c.name for c in result.checks if not c.passed]
    reason = f"validation {verdict}" + (f": {'; '.join(failed)}" if failed else "")
    await governor.journal(
        model, VALIDATION, version=version, reason=reason, details=result.as_dict(), actor=actor
    )
    return result


async def require_validation(governor: Governor, model: str, versions: list[str]) -> None:
    """The deployment gate: a model that declares checks only lets versions that passed
    them (their latest validation) become primary or shadow."""
    entry = governor.router.model(model)
    try:
        declared = load_checks(entry.path, entry.config)
    except ConfigError as exc:
        raise FailedPrecondition(f"validation checks cannot be read: {exc}") from None
    if not declared:
        return
    for version in versions:
        if not await governor.passed_validation(model, version):
            raise FailedPrecondition(
                f"version {version} of '{model}' has not passed validation: run "
                f"'greenroom validate {model} {version}' first"
            )
