"""greenroom.v1 control services at the gateway's edge: convert, call the control plane,
convert back. Errors leave through the same ``edge`` translation as inference."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from gateway.control import ControlPlane, Report
from gateway.decision import Decision, Policy
from gateway.deployments import Canary, Deployment, Shadow
from gateway.ledger import FeedbackResult
from gateway.ledger.ledger import MAX_FEEDBACK_ITEMS
from gateway.ledger.records import JournalEntry
from gateway.servicer import edge
from greenroom_client.errors import GreenroomError, InvalidArgument
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc

if TYPE_CHECKING:
    from gateway.governance import Governor

CONTROL_SERVICES = tuple(
    cpb.DESCRIPTOR.services_by_name[name].full_name
    for name in ("Deployments", "Feedback", "Evaluation", "Governance")
)
# Journal entries that carry a deployment (its spec) in their details.
DEPLOYMENT_KINDS = ("deployment", "promotion")


def deployment_to_pb(d: Deployment) -> cpb.Deployment:
    message = cpb.Deployment(model=d.model, primary=d.primary)
    if d.canary is not None:
        message.canary.CopyFrom(cpb.Canary(version=d.canary.version, weight=d.canary.weight))
    message.shadows.extend(cpb.Shadow(version=s.version, fraction=s.fraction) for s in d.shadows)
    return message


def deployment_from_pb(m: cpb.Deployment) -> Deployment:
    canary = Canary(m.canary.version, m.canary.weight) if m.HasField("canary") else None
    shadows = tuple(Shadow(s.version, s.fraction) for s in m.shadows)
    return Deployment(m.model, m.primary, canary, shadows)


def _optional(message: Any, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def report_to_pb(report: Report) -> cpb.ReportResponse:
    versions = []
    for v in report.versions:
        m = v.metrics
        message = cpb.VersionReport(
            version=v.version,
            role=v.role,
            predictions=m.predictions,
            errors=m.errors,
            labelled=m.labelled,
        )
        _optional(
            message, error_rate=m.error_rate, accuracy=m.accuracy, log_loss=m.log_loss,
            mae=m.mae, rmse=m.rmse, p50_ms=m.latency_p50_ms, p99_ms=m.latency_p99_ms,
        )  # fmt: skip
        for name, c in (m.per_class or {}).items():
            entry = message.classes[name]
            entry.support = c.support
            _optional(entry, precision=c.precision, recall=c.recall)
        versions.append(message)
    s = report.ledger
    ledger = cpb.LedgerStats(
        recorded=s.recorded_rows, recorded_answers=s.recorded_answers, queued=s.queued,
        dropped=s.dropped, failed=s.failed, shadow_drops=report.shadow_drops,
        last_error=s.last_error or "",
    )  # fmt: skip
    return cpb.ReportResponse(
        model=report.model, task=report.task, versions=versions, ledger=ledger
    )


def decision_to_pb(model: str, primary: str, candidate: str, d: Decision) -> cpb.Decision:
    message = cpb.Decision(
        model=model,
        primary=primary,
        candidate=candidate,
        decision=d.decision,
        pairs=d.pairs,
        discordant=cpb.Discordant(
            primary_only=d.discordant["primary_only"], candidate_only=d.discordant["candidate_only"]
        ),
        reasons=list(d.reasons),
    )
    _optional(
        message, primary_accuracy=d.primary_accuracy, candidate_accuracy=d.candidate_accuracy,
        p_value=d.p_value, primary_mae=d.primary_mae, candidate_mae=d.candidate_mae,
        e_value=d.e_value,
    )  # fmt: skip
    if d.interval is not None:
        message.interval_low, message.interval_high = d.interval
    return message


class DeploymentsServicer(cpb_grpc.DeploymentsServicer):
    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    @edge
    async def GetDeployment(self, request: cpb.GetDeploymentRequest, _: Any) -> cpb.Deployment:
        return deployment_to_pb(self.control.router.deployment(request.model))

    @edge
    async def SetDeployment(self, request: cpb.SetDeploymentRequest, _: Any) -> cpb.Deployment:
        deployment = deployment_from_pb(request.deployment)
        changed = await self.control.set_deployment(deployment, request.reason, "api")
        return deployment_to_pb(changed)

    @edge
    async def GetHistory(self, request: cpb.GetHistoryRequest, _: Any) -> cpb.History:
        entries = await self.control.history(request.model)
        return cpb.History(model=request.model, entries=[_entry_to_pb(e) for e in entries])

    @edge
    async def Promote(self, request: cpb.PromoteRequest, _: Any) -> cpb.Deployment:
        fraction = (
            request.old_primary_shadow_fraction
            if request.HasField("old_primary_shadow_fraction")
            else self.control.router.model(
                request.model
            ).config.promotion.old_primary_shadow_fraction
        )
        changed = await self.control.promote(
            request.model, request.version, request.reason, fraction, "api"
        )
        return deployment_to_pb(changed)


def _entry_to_pb(e: JournalEntry) -> cpb.HistoryEntry:
    message = cpb.HistoryEntry(
        at=e.at, reason=e.reason, actor=e.actor, kind=e.kind, version=e.version or "",
        details_json=json.dumps(e.details, sort_keys=True),
    )  # fmt: skip
    if e.kind in DEPLOYMENT_KINDS:
        message.deployment.CopyFrom(deployment_to_pb(Deployment.from_dict(e.details)))
    return message


def _items(batch: cpb.FeedbackBatch) -> list[tuple[str, int, str]]:
    return [(item.request_id, item.row, item.label) for item in batch.items]


def _result_to_pb(result: FeedbackResult) -> cpb.FeedbackResult:
    return cpb.FeedbackResult(
        accepted=result.accepted, matched=result.matched,
        unmatched=result.unmatched, duplicates=result.duplicates,
    )  # fmt: skip


def _check_since(since_seconds: float) -> None:
    """0 is all time; a window is a positive, finite number of seconds."""
    if not (math.isfinite(since_seconds) and since_seconds >= 0):
        raise InvalidArgument(
            f"since_seconds must be 0 (all time) or a positive number, got {since_seconds}"
        )


class FeedbackServicer(cpb_grpc.FeedbackServicer):
    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    @edge
    async def SendFeedback(self, request: cpb.FeedbackBatch, _: Any) -> cpb.FeedbackResult:
        return _result_to_pb(await self.control.feedback(request.model, _items(request)))

    @edge
    async def StreamFeedback(
        self, requests: AsyncIterator[cpb.FeedbackBatch], _: Any
    ) -> cpb.FeedbackResult:
        """Up to ``MAX_FEEDBACK_ITEMS`` items, the stream is one call: collected and stored
        in one transaction, all or none. A longer one is stored in parts of that many, in
        order, each all or none (one transaction may not hold SQLite's write lock for
        long); an error then says how many items the parts before it stored. Errors name
        items by their index in the whole stream."""
        model: str | None = None
        items: list[tuple[str, int, str]] = []
        stored = 0
        total = FeedbackResult(0, 0, 0, 0)
        number = -1
        async for batch in requests:
            number += 1
            if model is None:
                model = batch.model
                self.control.router.model(model)  # NOT_FOUND now, not after the stream
            elif batch.model != model:
                raise _after(stored, InvalidArgument(
                    f"feedback batch {number} is for model {batch.model!r} but the stream's "
                    f"first batch is for {model!r}: one stream carries one model's feedback"
                ))  # fmt: skip
            items.extend(_items(batch))
            while len(items) >= MAX_FEEDBACK_ITEMS:
                part, items = items[:MAX_FEEDBACK_ITEMS], items[MAX_FEEDBACK_ITEMS:]
                total = _plus(total, await self._part(model, part, stored))
                stored += len(part)
        if model is not None and items:
            total = _plus(total, await self._part(model, items, stored))
        return _result_to_pb(total)

    async def _part(
        self, model: str, items: list[tuple[str, int, str]], stored: int
    ) -> FeedbackResult:
        try:
            return await self.control.feedback(model, items, first=stored)
        except GreenroomError as exc:
            raise _after(stored, exc) from None


def _after(stored: int, exc: GreenroomError) -> GreenroomError:
    """``exc``, saying what the stream's earlier parts stored, if any."""
    if stored:
        exc.message += f" (the first {stored} items of this stream were stored; nothing after)"
        exc.args = (exc.message,)
    return exc


def _plus(a: FeedbackResult, b: FeedbackResult) -> FeedbackResult:
    return FeedbackResult(
        a.accepted + b.accepted, a.matched + b.matched,
        a.unmatched + b.unmatched, a.duplicates + b.duplicates,
    )  # fmt: skip


class EvaluationServicer(cpb_grpc.EvaluationServicer):
    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    @edge
    async def Report(self, request: cpb.ReportRequest, _: Any) -> cpb.ReportResponse:
        _check_since(request.since_seconds)
        return report_to_pb(await self.control.report(request.model, request.since_seconds))

    @edge
    async def Decide(self, request: cpb.DecideRequest, _: Any) -> cpb.Decision:
        configured = self.control.router.model(request.model).config.promotion
        if not request.candidate:
            raise InvalidArgument("candidate is empty: name the version to test")
        _check_since(request.since_seconds)
        try:
            policy = Policy(
                min_pairs=request.min_pairs
                if request.HasField("min_pairs")
                else configured.min_pairs,
                alpha=request.alpha if request.HasField("alpha") else configured.alpha,
                max_error_rate=configured.max_error_rate,
                max_p99_ratio=configured.max_p99_ratio,
                sequential=request.sequential if request.HasField("sequential") else False,
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        primary = self.control.router.deployment(request.model).primary
        decision = await self.control.decide(
            request.model, request.candidate, policy, request.since_seconds
        )
        return decision_to_pb(request.model, primary, request.candidate, decision)


def add_control_servicers(
    server: grpc.aio.Server, control: ControlPlane, governor: Governor
) -> None:
    from gateway.governance_servicer import GovernanceServicer  # noqa: PLC0415 (it imports edge)

    cpb_grpc.add_GovernanceServicer_to_server(GovernanceServicer(governor), server)
    cpb_grpc.add_DeploymentsServicer_to_server(DeploymentsServicer(control), server)
    cpb_grpc.add_FeedbackServicer_to_server(FeedbackServicer(control), server)
    cpb_grpc.add_EvaluationServicer_to_server(EvaluationServicer(control), server)
