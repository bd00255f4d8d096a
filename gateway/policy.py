"""Automatic promotion: model.yaml ``promotion: {auto: true}`` checks on a schedule.

Every ``interval_s`` the policy tests each shadow of the deployment against the primary
with the *sequential* test (a mixture SPRT: valid however often it looks, which a policy
that checks forever needs) over every pair since the shadow was deployed, and promotes
the first one whose outcome is ``promote``, writing the evidence into the history.
Off by default: a team that wants a human in the loop runs ``greenroom decide`` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from gateway.control import ControlPlane
from gateway.decision import Policy

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class AutoPromoter:
    def __init__(self, control: ControlPlane, sleep: Sleep = asyncio.sleep) -> None:
        self.control = control
        self.sleep = sleep
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, model in self.control.router.models.items():
            if model.config.promotion.auto:
                self._tasks.append(asyncio.create_task(self._loop(name)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self, model: str) -> None:
        interval = self.control.router.model(model).config.promotion.interval_s
        while True:
            await self.sleep(interval)
            try:
                await self.check(model)
            except Exception:  # a failed check must not end the schedule
                log.exception("promotion check failed", model=model)

    async def check(self, model: str) -> str | None:
        """One round: the version promoted, or None."""
        configured = self.control.router.model(model).config.promotion
        policy = Policy(
            min_pairs=configured.min_pairs,
            alpha=configured.alpha,
            max_error_rate=configured.max_error_rate,
            max_p99_ratio=configured.max_p99_ratio,
            sequential=True,
        )
        deployment = self.control.router.deployment(model)
        for shadow in deployment.shadows:
            decision = await self.control.decide(model, shadow.version, policy, since_s=0.0)
            log.info("promotion check", model=model, candidate=shadow.version,
                     decision=decision.decision, pairs=decision.pairs)  # fmt: skip
            if decision.decision == "promote":
                reason = "automatic promotion: " + "; ".join(decision.reasons)
                await self.control.promote(
                    model, shadow.version, reason, configured.old_primary_shadow_fraction, "policy"
                )
                return shadow.version
        return None
