"""Automatic promotion: model.yaml ``promotion: {auto: true}`` checks on a schedule.

Every ``interval_s`` the policy tests each shadow of the deployment against the primary
with the *sequential* test (a mixture SPRT: valid however often it looks, which a policy
that checks forever needs) over every pair since the shadow was deployed, and promotes
the first one whose outcome is ``promote``, writing the evidence into the history. If the deployment
changed during the test (another primary, or the candidate no longer shadows), nothing
is promoted: the evidence was about a deployment that is gone.
Off by default: a team that wants a human in the loop runs ``greenroom decide`` instead.
"""

from __future__ import annotations

import asyncio

import structlog

from gateway.control import ControlPlane
from gateway.decision import Policy
from gateway.periodic import Periodic, Sleep
from greenroom_client.errors import FailedPrecondition

log = structlog.get_logger(__name__)


class AutoPromoter(Periodic):
    what = "promotion check"

    def __init__(self, control: ControlPlane, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(sleep)
        self.control = control

    def start(self) -> None:
        models = self.control.router.models
        self.start_for(name for name, model in models.items() if model.config.promotion.auto)

    def interval(self, model: str) -> float:
        return self.control.router.model(model).config.promotion.interval_s

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
                try:
                    await self.control.promote(
                        model, shadow.version, reason, configured.old_primary_shadow_fraction,
                        "policy", decided_on=deployment,
                    )  # fmt: skip
                except FailedPrecondition as moot:  # the deployment changed meanwhile
                    log.info("promotion skipped", model=model, reason=moot.message)
                    return None
                return shadow.version
        return None
