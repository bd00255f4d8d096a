"""The control plane: deployments, feedback, reports and promotion decisions.

Plain domain code over the router, the ledger and the statistics; the gRPC servicer and
the CLI are thin layers on top. Database work is blocking, so every call that touches the
ledger runs in a worker thread, never on the event loop that answers inference.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.completion import to_completion
from gateway.decision import Decision, ErrorPair, Guardrails, Pair, PairCounts, Policy, decide
from gateway.deployments import Deployment
from gateway.evaluation import (
    Accumulator,
    Scored,
    Task,
    VersionMetrics,
    evaluate,
    finite_number,
)
from gateway.ledger import FeedbackResult, LabelledRow, Ledger, LedgerStats, PairedRow
from gateway.ledger.records import JournalEntry
from gateway.ledger.store import DeploymentConflict
from gateway.recording import CANCELLED
from gateway.router import Router
from greenroom_client.errors import Aborted, FailedPrecondition, InvalidArgument

log = structlog.get_logger(__name__)

# A deployment change that keeps losing to changes saved elsewhere gives up (ABORTED).
CHANGE_ATTEMPTS = 5
# What a journal kind is called in the message that refuses it without a reason.
CHANGE_NAMES = {"deployment": "a deployment change", "promotion": "a promotion"}


@dataclass(frozen=True, slots=True)
class VersionReport:
    version: str
    role: str
    metrics: VersionMetrics


@dataclass(frozen=True, slots=True)
class Report:
    model: str
    task: Task
    versions: list[VersionReport]
    ledger: LedgerStats
    shadow_drops: dict[str, int]


def _scored(row: LabelledRow, task: Task) -> Scored:
    predicted: str | float | None = row.label if task == "classification" else row.value
    truth: str | float | None = row.truth
    if task == "regression" and row.truth is not None:
        truth = finite_number(row.truth)
    # Probabilities without class names cannot be scored (no log loss then).
    known = row.classes is not None and row.probabilities is not None
    return Scored(
        predicted=predicted,
        truth=truth,
        probabilities=row.probabilities if known else None,
        classes=row.classes if known else None,
        latency_ms=row.latency_ms,
        ok=row.status == "OK",
    )


def _pair(row: PairedRow, task: Task) -> Pair | ErrorPair | None:
    if task == "classification":
        return Pair(row.primary_label == row.truth, row.candidate_label == row.truth)
    truth = finite_number(row.truth)
    if truth is None or row.primary_value is None or row.candidate_value is None:
        return None
    return ErrorPair(abs(row.primary_value - truth), abs(row.candidate_value - truth))


def _require_reason(reason: str, kind: str) -> None:
    """Every change of what serves is journaled with why: the history is how a team
    finds out later what happened and who decided it, so a change without a reason (or
    with only blanks) is refused before anything is saved."""
    if not reason.strip():
        what = CHANGE_NAMES.get(kind, f"a {kind}")
        raise InvalidArgument(f"{what} needs a reason: say why (it is kept in the history)")


def _still_decided(current: Deployment, decided_on: Deployment, version: str) -> None:
    model = current.model
    if current.primary != decided_on.primary:
        raise FailedPrecondition(
            f"the primary of model '{model}' changed from {decided_on.primary} to "
            f"{current.primary} since version {version} was tested: not promoted"
        )
    if current.role_of(version) != "shadow":
        raise FailedPrecondition(
            f"version {version} of model '{model}' no longer shadows "
            f"(its role is {current.role_of(version) or 'none'}): not promoted"
        )


class ControlPlane:
    def __init__(self, router: Router, ledger: Ledger, shadow_drops: Any = None) -> None:
        self.router = router
        self.ledger = ledger
        self._shadow_drops = shadow_drops
        self.changes = asyncio.Lock()  # one deployment change (or registration) at a time
        # Raises when a version may not start watching traffic (gateway.governance sets it:
        # a model with validation checks needs a passing validation first).
        self.gate: Callable[[str, list[str]], Awaitable[None]] | None = None
        # Each model's deployment as this process last saw it in the database (None: none
        # stored): a save expects to find it still there.
        self._stored: dict[str, dict[str, Any] | None] = {}

    # ---- deployments -------------------------------------------------------------------

    async def restore(self) -> None:
        """Stored deployments win over model.yaml defaults, if their versions still exist."""
        for name in self.router.models:
            stored = await asyncio.to_thread(self.ledger.deployment, name)
            self._adopt_stored(name, stored)

    def _adopt_stored(self, model: str, stored: dict[str, Any] | None) -> None:
        """What the database holds for ``model``: remembered (the next save expects it)
        and put in force unless it names versions that are gone."""
        self._stored[model] = stored
        if stored is None:
            return
        try:
            deployment = Deployment.from_dict(stored)
            deployment.validate(self.router.versions(model))
        except Exception as exc:
            log.error("stored deployment ignored", model=model, error=str(exc))
            return
        self.router.set_deployment(deployment)

    async def set_deployment(
        self, deployment: Deployment, reason: str, actor: str, kind: str = "deployment"
    ) -> Deployment:
        """Replace the model's deployment whole (the API's SetDeployment: a PUT)."""
        return await self.change_deployment(
            deployment.model, lambda _: deployment, reason, actor, kind
        )

    async def change_deployment(
        self,
        model: str,
        change: Callable[[Deployment], Deployment],
        reason: str,
        actor: str,
        kind: str = "deployment",
    ) -> Deployment:
        """Apply ``change`` to the deployment as it is once this change's turn comes.

        Changes are computed under the lock, not before it: a promotion and a retraining
        run's new shadow that arrive together both land, whichever waits for the other
        (computed from a copy read earlier, the second would silently undo the first).
        The save checks that the database still holds what this process last saw there:
        if another gateway (or worker) on the same database changed it meanwhile, that
        deployment is taken up and the change applied to it instead (ABORTED after
        ``CHANGE_ATTEMPTS`` such races). Once its save has begun, a change finishes even
        if its caller is cancelled. Refused (INVALID_ARGUMENT, nothing changed) without a
        reason, whoever asks: the API, the CLI, the policy or a retraining run."""
        self.router.model(model)  # an unknown or empty name says so before the reason
        _require_reason(reason, kind)
        async with self.changes:
            for _ in range(CHANGE_ATTEMPTS):
                current = self.router.deployment(model)
                deployment = change(current)
                deployment.validate(self.router.versions(model))
                before = {current.primary, *(s.version for s in current.shadows)}
                after = [deployment.primary, *(s.version for s in deployment.shadows)]
                new = [v for v in after if v not in before]
                if new and self.gate is not None:
                    await self.gate(model, new)
                try:
                    await to_completion(self._commit(deployment, reason, actor, kind, new))
                    break
                except DeploymentConflict as conflict:
                    log.info("deployment changed elsewhere meanwhile", model=model)
                    await self._take_up(model, conflict.stored)
            else:
                raise Aborted(
                    f"the deployment of '{model}' kept changing elsewhere while this change "
                    "was applied; nothing was changed: retry"
                )
        log.info("deployment changed", model=model, reason=reason, actor=actor)
        return deployment

    async def _take_up(self, model: str, stored: dict[str, Any] | None) -> None:
        """A save found ``stored`` in the database, written by another gateway: adopt it
        (``WorkerControlPlane`` first attaches the versions other workers registered)."""
        self._adopt_stored(model, stored)

    async def _commit(
        self, deployment: Deployment, reason: str, actor: str, kind: str, new: list[str]
    ) -> None:
        """Saved, then in force: both or (if the save fails) neither."""
        spec = deployment.as_dict()
        await asyncio.to_thread(
            self.ledger.save_deployment, deployment.model, spec, reason, actor,
            kind=kind, version=new[0] if new else deployment.primary,
            check=True, expected=self._stored.get(deployment.model),
        )  # fmt: skip
        self._stored[deployment.model] = spec
        self.router.set_deployment(deployment)

    async def promote(
        self,
        model: str,
        version: str,
        reason: str,
        old_primary_fraction: float,
        actor: str,
        *,
        decided_on: Deployment | None = None,
    ) -> Deployment:
        """``version`` becomes primary. ``decided_on``: the deployment a promotion test
        compared ``version`` under; the promotion applies only if, when its turn comes,
        the primary is the same and ``version`` still shadows (the evidence is moot
        otherwise: it was gathered against another primary, or the shadow was removed)."""

        def promoted(current: Deployment) -> Deployment:
            if decided_on is not None:
                _still_decided(current, decided_on, version)
            if version == current.primary:  # a no-op would still be journaled as a promotion
                raise InvalidArgument(f"version {version} is already the primary of '{model}'")
            return current.promoted(version, old_primary_fraction)

        return await self.change_deployment(model, promoted, reason, actor, kind="promotion")

    async def history(self, model: str) -> list[JournalEntry]:
        """The model's journal: registrations, deployments, validations, retraining..."""
        self.router.model(model)
        return await asyncio.to_thread(self.ledger.journal, model)

    # ---- feedback ----------------------------------------------------------------------

    async def feedback(
        self, model: str, items: list[tuple[str, int, str]], first: int = 0
    ) -> FeedbackResult:
        """Store the items in one transaction, all or none (INVALID_ARGUMENT naming the
        first bad item by its index in ``items``). A regression's truths must be finite
        numbers; a classifier's labels are free text (its classes are not always known)."""
        numeric = self.task(model) == "regression"  # NOT_FOUND for an unknown model
        try:
            return await asyncio.to_thread(
                functools.partial(
                    self.ledger.add_feedback, model, items, numeric=numeric, first=first
                )
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None

    # ---- evaluation --------------------------------------------------------------------

    def task(self, model: str) -> Task:
        configured = self.router.model(model).config.task
        if configured == "classification" or configured == "regression":  # noqa: PLR1714 (narrows)
            return configured
        return "regression" if self.router.output_roles(model).value else "classification"

    async def report(self, model: str, since_s: float) -> Report:
        task = self.task(model)
        since = time.time() - since_s if since_s > 0 else None
        metrics = await asyncio.to_thread(self._evaluate, model, task, since)
        deployment = self.router.deployment(model)
        versions = [
            VersionReport(v, deployment.role_of(v) or "", metrics.get(v) or evaluate([], task))
            for v in self.router.versions(model)
        ]
        drops = self._shadow_drops(model) if self._shadow_drops else {}
        return Report(model, task, versions, self.ledger.stats, drops)

    def _evaluate(self, model: str, task: Task, since: float | None) -> dict[str, VersionMetrics]:
        """Worker thread: every version's metrics over the window, streamed from the ledger
        (never the whole window in memory)."""
        accumulators: dict[str, Accumulator] = {}
        for row in self.ledger.iter_rows(model, since):
            if row.status == CANCELLED:
                continue
            accumulator = accumulators.get(row.version)
            if accumulator is None:
                accumulator = accumulators[row.version] = Accumulator(task)
            accumulator.add(_scored(row, task))
        return {version: a.result() for version, a in accumulators.items()}

    def _pairs(
        self, model: str, primary: str, candidate: str, task: Task, since: float | None
    ) -> PairCounts | list[ErrorPair]:
        """Worker thread: the window's pairs, streamed. A classifier's are only counted (all
        McNemar and the mSPRT need); a regressor's keep their two errors each."""
        paired = (
            _pair(row, task) for row in self.ledger.iter_pairs(model, primary, candidate, since)
        )
        if task == "classification":
            return PairCounts.of(p for p in paired if isinstance(p, Pair))
        return [p for p in paired if isinstance(p, ErrorPair)]

    async def decide(self, model: str, candidate: str, policy: Policy, since_s: float) -> Decision:
        task = self.task(model)
        primary = self.router.deployment(model).primary
        if candidate == primary:
            raise InvalidArgument(f"version {candidate} is already the primary of '{model}'")
        self.router.resolve(model, candidate)  # NOT_FOUND for an unknown version
        since = time.time() - since_s if since_s > 0 else None
        pairs = await asyncio.to_thread(self._pairs, model, primary, candidate, task, since)
        report = await self.report(model, since_s)
        metrics = {v.version: v.metrics for v in report.versions}
        guardrails = Guardrails.from_metrics(metrics[primary], metrics[candidate])
        return await asyncio.to_thread(decide, task, pairs, guardrails, policy)
