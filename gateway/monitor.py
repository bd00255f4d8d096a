"""The accuracy and drift gauges: recomputed on a schedule, not per request.

For every model that samples its inputs (``monitoring.input_sample_rate`` above 0), every
``monitoring.check_interval_s``: each version's accuracy over the last hour of labelled
answers (``greenroom_accuracy``), and each deployed version's PSI per feature against its
reference sample (``greenroom_drift_psi``). A version without a reference simply has no
drift gauge; a failed check is logged and the schedule goes on.
"""

from __future__ import annotations

import asyncio

import structlog

from gateway.governance import Governor
from gateway.metrics import Metrics
from gateway.periodic import Periodic, Sleep
from greenroom_client.errors import FailedPrecondition

log = structlog.get_logger(__name__)

ACCURACY_WINDOW_S = 3600.0


class Monitor(Periodic):
    what = "monitoring check"
    wait_first = False

    def __init__(self, governor: Governor, metrics: Metrics, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(sleep)
        self.governor = governor
        self.metrics = metrics

    def start(self) -> None:
        models = self.governor.router.models
        self.start_for(
            name for name, entry in models.items() if entry.config.monitoring.input_sample_rate > 0
        )

    def interval(self, model: str) -> float:
        return self.governor.router.model(model).config.monitoring.check_interval_s

    async def check(self, model: str) -> None:
        report = await self.governor.control.report(model, ACCURACY_WINDOW_S)
        for scored in report.versions:
            accuracy = scored.metrics.accuracy
            if accuracy is not None:
                self.metrics.set_accuracy(model, scored.version, accuracy)
        deployment = self.governor.router.deployment(model)
        deployed = [deployment.primary, *(s.version for s in deployment.shadows)]
        if deployment.canary is not None:
            deployed.append(deployment.canary.version)
        for version in deployed:
            try:
                drift = await self.governor.drift(model, version)
            except FailedPrecondition:
                continue  # no reference sample for it (yet)
            for feature in drift.features:
                if feature.psi is not None:
                    self.metrics.set_drift(model, version, feature.feature, feature.psi)
