"""greenroom.v1.Governance at the gateway's edge: convert, call the governor, convert back."""

from __future__ import annotations

import json
from typing import Any

from gateway.drift import FeatureDrift
from gateway.governance import DriftReport, Governor, OverTime, run_validation
from gateway.ledger.records import VersionRecord
from gateway.retraining_host import retrain_now
from gateway.servicer import edge
from gateway.validation import ValidationResult
from greenroom_client.errors import InvalidArgument
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True)


def version_to_pb(record: VersionRecord, role: str) -> cpb.VersionInfo:
    return cpb.VersionInfo(
        model=record.model, version=record.version, sha256=record.sha256,
        artifact=record.artifact, framework=record.framework or "",
        framework_version=record.framework_version or "", runner=record.runner,
        registered_at=record.registered_at, parent=record.parent or "",
        author=record.author or "", notes=record.notes or "", code_ref=record.code_ref or "",
        data_json=_json(record.data), parameters_json=_json(record.parameters),
        metrics_json=_json(record.metrics), role=role,
    )  # fmt: skip


def feature_to_pb(f: FeatureDrift) -> cpb.FeatureDrift:
    message = cpb.FeatureDrift(
        feature=f.feature, kind=f.kind, reference_rows=f.reference_rows, live_rows=f.live_rows,
        band=f.band or "", test=f.test, drifted=f.drifted, note=f.note or "",
    )  # fmt: skip
    for name in ("psi", "statistic", "p_value"):
        value = getattr(f, name)
        if value is not None:
            setattr(message, name, value)
    return message


def drift_to_pb(report: DriftReport) -> cpb.DriftReport:
    return cpb.DriftReport(
        model=report.model, version=report.version, reference_source=report.reference_source,
        features=[feature_to_pb(f) for f in report.features], drifted=report.drifted,
    )  # fmt: skip


def over_time_to_pb(over: OverTime) -> cpb.OverTime:
    message = cpb.OverTime(
        model=over.model, task=over.task, by=over.by, roles=over.roles,
        bucket_seconds=3600.0 if over.by == "hour" else 86400.0,
    )  # fmt: skip
    for p in over.points:
        point = message.points.add(
            start=p.start, version=p.version, rows=p.rows, labelled=p.labelled
        )
        if p.value is not None:
            point.value = p.value
    return message


def validation_to_pb(result: ValidationResult) -> cpb.ValidationResult:
    message = cpb.ValidationResult(
        model=result.model, version=result.version, passed=result.passed, note=result.note or ""
    )
    for c in result.checks:
        check = message.checks.add(name=c.name, passed=c.passed, detail=c.detail)
        if c.value is not None:
            check.value = c.value
        if c.threshold is not None:
            check.threshold = c.threshold
    return message


def _metadata(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"metadata is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("metadata must be a JSON object")
    return value


class GovernanceServicer(cpb_grpc.GovernanceServicer):
    def __init__(self, governor: Governor) -> None:
        self.governor = governor

    def _role(self, model: str, version: str) -> str:
        return self.governor.router.deployment(model).role_of(version) or ""

    @edge
    async def Register(self, request: cpb.RegisterRequest, _: Any) -> cpb.VersionInfo:
        record = await self.governor.register(
            request.model, version=request.version or None, filename=request.artifact_name,
            data=request.artifact, metadata=_metadata(request.metadata_json),
            reference_csv=request.reference_csv, reason=request.reason or "registered",
            actor="api",
        )  # fmt: skip
        return version_to_pb(record, self._role(record.model, record.version))

    @edge
    async def ListVersions(self, request: cpb.ListVersionsRequest, _: Any) -> cpb.VersionList:
        records = await self.governor.versions(request.model)
        return cpb.VersionList(
            model=request.model,
            versions=[version_to_pb(r, self._role(r.model, r.version)) for r in records],
        )

    @edge
    async def Drift(self, request: cpb.DriftRequest, _: Any) -> cpb.DriftReport:
        return drift_to_pb(await self.governor.drift(request.model, request.version))

    @edge
    async def FreezeReference(
        self, request: cpb.FreezeReferenceRequest, _: Any
    ) -> cpb.ReferenceInfo:
        if request.rows < 0:
            raise InvalidArgument("rows must not be negative")
        ref = await self.governor.freeze_reference(
            request.model, request.version, request.rows, "api"
        )
        return cpb.ReferenceInfo(model=ref.model, version=ref.version, rows=len(ref.rows),
                                 columns=list(ref.columns), source=ref.source)  # fmt: skip

    @edge
    async def ReportOverTime(self, request: cpb.ReportOverTimeRequest, _: Any) -> cpb.OverTime:
        if request.since_seconds < 0:
            raise InvalidArgument("since_seconds must not be negative")
        over = await self.governor.over_time(
            request.model, request.by or "day", request.since_seconds
        )
        return over_time_to_pb(over)

    @edge
    async def Validate(self, request: cpb.ValidateRequest, _: Any) -> cpb.ValidationResult:
        if not request.version:
            raise InvalidArgument("validate needs a version")
        result = await run_validation(self.governor, request.model, request.version, "api")
        return validation_to_pb(result)

    @edge
    async def Retrain(self, request: cpb.RetrainRequest, _: Any) -> cpb.RetrainResult:
        model, reason = request.model, request.reason
        self.governor.router.model(model)
        if self.governor.retrainer is None and self.governor.forward_retrain is not None:
            body = await self.governor.forward_retrain(model, reason)
        else:
            body = await retrain_now(self.governor.retrainer, model, reason)
        return cpb.RetrainResult(
            model=model, outcome=body["outcome"], reason=body["reason"],
            version=body["version"] or "", details_json=_json(body),
        )  # fmt: skip

    @edge
    async def Backtest(self, request: cpb.BacktestRequest, _: Any) -> cpb.OverTime:
        if request.since_seconds < 0:
            raise InvalidArgument("since_seconds must not be negative")
        over = await self.governor.backtest(
            request.model, list(request.versions), request.since_seconds, request.by or "day"
        )
        return over_time_to_pb(over)
