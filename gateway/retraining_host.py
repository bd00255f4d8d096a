"""The gateway's side of retraining (``gateway.retraining.RetrainingHost``): the ledger's
labelled inputs as the dataset, the registry, validation, shadow deployment, the journal.

A retrained version's drift reference is the data it was trained on (the exported
dataset, without its labels), so drift afterwards says how far live traffic moved from
what the model has seen. While a retrained version shadows, the triggers wait (they see
no new labels): the promotion test is collecting evidence, and another run would only
train a rival to it on the same data.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from pathlib import Path
from typing import Any

from gateway.deployments import Deployment
from gateway.governance import Governor, run_validation, write_csv
from gateway.ledger.governance import count_feedback
from gateway.registry import METADATA_FIELDS
from gateway.repository import ARTIFACTS, sha256_file
from gateway.retraining import (
    AlreadyRunning,
    Export,
    RegistrationError,
    Retrainer,
    Stopped,
    TriggerState,
)
from greenroom_client.errors import FailedPrecondition, GreenroomError, Unavailable


class GatewayRetrainingHost:
    def __init__(self, governor: Governor) -> None:
        self.governor = governor
        self._exports: dict[str, Path] = {}  # model -> its latest exported dataset

    async def export_dataset(self, model: str, path: Path) -> Export:
        ledger = self.governor.ledger
        await asyncio.to_thread(ledger.flush)
        columns, rows = await asyncio.to_thread(ledger.governance.labelled_inputs, model)
        header = [*columns, "label"]
        await asyncio.to_thread(write_csv, path, header, ([*r.values, r.truth] for r in rows))
        digest = await asyncio.to_thread(sha256_file, path)
        self._exports[model] = path
        times = [r.created_at for r in rows]
        return Export(len(rows), header, min(times, default=None), max(times, default=None), digest)

    async def register_version(
        self, model: str, artifact_dir: Path, provenance: dict[str, Any]
    ) -> str:
        names = sorted(await asyncio.to_thread(os.listdir, artifact_dir))
        if len(names) != 1 or names[0] not in ARTIFACTS:
            raise RegistrationError(
                f"the output folder must hold exactly one of {sorted(ARTIFACTS)}, found {names}"
            )
        artifact = artifact_dir / names[0]
        dataset = self._exports.get(model)
        reference = await asyncio.to_thread(dataset.read_text) if dataset else ""
        metadata = {k: v for k, v in provenance.items() if k in METADATA_FIELDS}
        try:
            record = await self.governor.register(
                model, version=None, filename=artifact.name,
                data=await asyncio.to_thread(artifact.read_bytes), metadata=metadata,
                reference_csv=reference, reason="retraining", actor="retraining",
            )  # fmt: skip
        except GreenroomError as exc:
            raise RegistrationError(str(exc)) from None
        return record.version

    async def validate_version(self, model: str, version: str) -> tuple[bool, dict[str, Any]]:
        result = await run_validation(self.governor, model, version, "retraining")
        return result.passed, result.as_dict()

    async def deploy_shadow(self, model: str, version: str, fraction: float, reason: str) -> None:
        await self.governor.control.change_deployment(
            model, lambda current: current.with_shadow(version, fraction), reason, "retraining"
        )

    async def journal(
        self, model: str, kind: str, version: str | None, reason: str, details: dict[str, Any]
    ) -> None:
        await self.governor.journal(
            model, kind, version=version, reason=reason, details=details, actor="retraining"
        )

    async def trigger_state(
        self, model: str, last_labels: int, since: float | None
    ) -> TriggerState:
        """Read against one snapshot of the deployment: the retrainer drops the numbers if
        it changed meanwhile (a promotion makes the old primary's accuracy moot)."""
        governor = self.governor
        deployment = governor.router.deployment(model)
        primary = deployment.primary
        accuracy = await asyncio.to_thread(self._recent_accuracy, model, primary, last_labels)
        count = await asyncio.to_thread(
            count_feedback, governor.ledger.governance.engine, model, since
        )
        if await self._retrained_shadow(model, deployment):
            count = 0  # its evidence is being collected: let the promotion test speak first
        try:
            max_psi = (await governor.drift(model)).max_psi
        except FailedPrecondition:
            max_psi = None
        return TriggerState(accuracy, count, max_psi, deployment)

    def _recent_accuracy(self, model: str, version: str, last: int) -> float | None:
        """Worker thread: accuracy over the version's ``last`` labelled rows (None: fewer),
        streamed so that only those rows are held."""
        recent: deque[bool] = deque(maxlen=last)
        for r in self.governor.ledger.iter_rows(model):
            if r.version == version and r.truth is not None and r.status == "OK":
                recent.append(r.label == r.truth)
        return sum(recent) / last if len(recent) == last else None

    async def _retrained_shadow(self, model: str, deployment: Deployment) -> bool:
        """Whether a version from an earlier retraining run shadows in ``deployment``."""
        for shadow in deployment.shadows:
            record = await asyncio.to_thread(
                self.governor.ledger.governance.version, model, shadow.version
            )
            if record is not None and record.author == "retraining":
                return True
        return False

    def primary(self, model: str) -> str:
        return self.governor.router.deployment(model).primary

    def deployment(self, model: str) -> Deployment:
        return self.governor.router.deployment(model)


def last_runs(governor: Governor, models: list[str]) -> dict[str, float]:
    """When each model's last retraining run ended, from the journal (the storm rule)."""
    ends: dict[str, float] = {}
    for model in models:
        for entry in governor.ledger.governance.entries(model, ["retraining"]):
            if entry.details.get("event") in ("finished", "failed"):
                ends[model] = entry.at
    return ends


def start_retrainer(governor: Governor) -> Retrainer | None:
    """The retrainer of every model with a ``retraining:`` policy, started; or None."""
    policies = {
        name: (entry.path, entry.config.retraining)
        for name, entry in governor.router.models.items()
        if entry.config.retraining is not None
    }
    if not policies:
        return None
    data_dir = Path(governor.settings.data_dir)
    retrainer = Retrainer(
        GatewayRetrainingHost(governor), policies,
        last_runs=last_runs(governor, list(policies)),
        log_dir=data_dir / "retraining", work_root=data_dir,
    )  # fmt: skip
    retrainer.start()
    governor.retrainer = retrainer
    return retrainer


async def retrain_now(retrainer: Retrainer | None, model: str, reason: str) -> dict[str, Any]:
    """``greenroom retrain``: the run's outcome, or FAILED_PRECONDITION when the model has
    no policy or a run of it is going on, UNAVAILABLE once the gateway is stopping."""
    if retrainer is None or model not in retrainer.policies:
        raise FailedPrecondition(f"'{model}' has no retraining policy in model.yaml")
    try:
        return (await retrainer.run_now(model, reason, "api")).as_dict()
    except AlreadyRunning as exc:
        raise FailedPrecondition(f"'{model}': {exc}") from None
    except Stopped as exc:
        raise Unavailable(f"'{model}': {exc}") from None
