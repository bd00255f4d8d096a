"""The accuracy and drift gauges: recomputed on a schedule, not per request.

For every model that samples its inputs (``monitoring.input_sample_rate`` above 0), every
``monitoring.check_interval_s``: each version's accuracy over the last hour of labelled
answers (``greenroom_accuracy``), and each deployed version's PSI per feature against its
reference sample (``greenroom_drift_psi``). A version without a reference simply has no
drift gauge; a failed check is logged and the schedule goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from gateway.governance import Governor
from gateway.metrics import Metrics
from greenroom_client.errors import FailedPrecondition

log = structlog.get_logger(__name__)

ACCURACY_WINDOW_S = 3600.0

Sleep = Callable[[float], Awaitable[None]]


class Monitor:
    def __init__(self, governor: Governor, metrics: Metrics, sleep: Sleep = asyncio.sleep) -> None:
        self.governor = governor
        self.metrics = metrics
        self.sleep = sleep
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, entry in self.governor.router.models.items():
            if entry.config.monitoring.input_sample_rate > 0:
                self._tasks.append(asyncio.create_task(self._loop(name), name=f"monitor {name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self, model: str) -> None:
        interval = self.governor.router.model(model).config.monitoring.check_interval_s
        while True:
            try:
                await self.check(model)
            except Exception:  # a failed check must not end the schedule
                log.exception("monitoring check failed", model=model)
            await self.sleep(interval)

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
