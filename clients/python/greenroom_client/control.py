"""Client for Greenroom's control API (greenroom.v1): deployments, feedback, evaluation.

Answers are plain JSON-ready dicts, the same shapes the ``greenroom`` CLI prints with
``--json``; errors are the same exception tree as inference.

    with ControlClient("127.0.0.1:8001") as control:
        control.deploy("churn", primary="1", shadows={"2": 1.0}, reason="try v2")
        control.feedback("churn", [("req-1", 0, "1"), ("req-2", 0, "0")])
        print(control.decide("churn", candidate="2")["decision"])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from greenroom_client.client import DEFAULT_TARGET, SyncChannel
from greenroom_client.errors import from_status
from greenroom_proto.greenroom.v1 import control_pb2 as cpb
from greenroom_proto.greenroom.v1 import control_pb2_grpc as cpb_grpc

T = TypeVar("T")
FEEDBACK_BATCH = 1000


def deployment_dict(d: cpb.Deployment) -> dict[str, Any]:
    return {
        "model": d.model,
        "primary": d.primary,
        "canary": (
            {"version": d.canary.version, "weight": d.canary.weight}
            if d.HasField("canary")
            else None
        ),
        "shadows": [{"version": s.version, "fraction": s.fraction} for s in d.shadows],
    }


def message_dict(message: Any) -> dict[str, Any]:
    """Any control message as a JSON-ready dict: every field by its proto name, unset
    optional fields as None, ``*_json`` strings parsed (an empty one is None)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = dict(value)
        elif field.is_repeated:
            is_message = field.message_type is not None
            out[field.name] = [message_dict(v) if is_message else v for v in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        elif field.message_type is not None:
            out[field.name] = message_dict(value)
        elif field.name.endswith("_json"):
            out[field.name[: -len("_json")]] = json.loads(value) if value else None
        else:
            out[field.name] = value
    return out


def _optional(message: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(message, name) if message.HasField(name) else None for name in names}


def _version_dict(v: cpb.VersionReport) -> dict[str, Any]:
    return {
        "version": v.version,
        "role": v.role,
        "predictions": v.predictions,
        "errors": v.errors,
        "labelled": v.labelled,
        **_optional(v, "accuracy", "error_rate", "log_loss", "mae", "rmse", "p50_ms", "p99_ms"),
        "classes": {
            name: {"support": c.support, **_optional(c, "precision", "recall")}
            for name, c in sorted(v.classes.items())
        },
    }


def report_dict(r: cpb.ReportResponse) -> dict[str, Any]:
    ledger = r.ledger
    return {
        "model": r.model,
        "task": r.task,
        "versions": [_version_dict(v) for v in r.versions],
        "ledger": {
            "recorded": ledger.recorded,
            "recorded_answers": ledger.recorded_answers,
            "queued": ledger.queued,
            "dropped": ledger.dropped,
            "failed": ledger.failed,
            "shadow_drops": dict(ledger.shadow_drops),
            "last_error": ledger.last_error or None,
        },
    }


def decision_dict(d: cpb.Decision) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": d.model,
        "primary": d.primary,
        "candidate": d.candidate,
        "decision": d.decision,
        "pairs": d.pairs,
        **_optional(d, "primary_accuracy", "candidate_accuracy"),
        "discordant": {
            "primary_only": d.discordant.primary_only,
            "candidate_only": d.discordant.candidate_only,
        },
        **_optional(d, "p_value", "e_value", "primary_mae", "candidate_mae"),
        "reasons": list(d.reasons),
    }
    if d.HasField("interval_low"):
        body["interval"] = [d.interval_low, d.interval_high]
    return body


def _batches(items: Iterable[tuple[str, int, str]], model: str) -> Iterable[cpb.FeedbackBatch]:
    batch = cpb.FeedbackBatch(model=model)
    for request_id, row, label in items:
        batch.items.add(request_id=request_id, row=row, label=label)
        if len(batch.items) >= FEEDBACK_BATCH:
            yield batch
            batch = cpb.FeedbackBatch(model=model)
    if batch.items:
        yield batch


def _text(csv_file: str | Path | None) -> str:
    if csv_file is None:
        return ""
    return csv_file.read_text() if isinstance(csv_file, Path) else csv_file


class ControlClient(SyncChannel):
    """Synchronous client of the control services; ``timeout`` is every call's deadline."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = 30.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._deployments = cpb_grpc.DeploymentsStub(self._channel)
        self._feedback = cpb_grpc.FeedbackStub(self._channel)
        self._evaluation = cpb_grpc.EvaluationStub(self._channel)
        self._governance = cpb_grpc.GovernanceStub(self._channel)
        self._timeout = timeout

    def _call(self, method: Any, request: Any, timeout: float | None = 0.0) -> Any:
        """``timeout`` 0: the client's; None: no deadline (a training run)."""
        try:
            return method(request, timeout=self._timeout if timeout == 0.0 else timeout)
        except grpc.RpcError as exc:
            raise from_status(exc.code().name, exc.details() or "") from exc

    def deployment(self, model: str) -> dict[str, Any]:
        reply = self._call(self._deployments.GetDeployment, cpb.GetDeploymentRequest(model=model))
        return deployment_dict(reply)

    def deploy(
        self,
        model: str,
        primary: str,
        *,
        canary: tuple[str, float] | None = None,
        shadows: Mapping[str, float] | None = None,
        reason: str,
    ) -> dict[str, Any]:
        """Replace the model's deployment whole. ``reason`` is required (the gateway
        refuses an empty one): it is kept in the model's history beside the change."""
        message = cpb.Deployment(model=model, primary=primary)
        if canary is not None:
            message.canary.CopyFrom(cpb.Canary(version=canary[0], weight=canary[1]))
        for version, fraction in (shadows or {}).items():
            message.shadows.add(version=version, fraction=fraction)
        request = cpb.SetDeploymentRequest(deployment=message, reason=reason)
        return deployment_dict(self._call(self._deployments.SetDeployment, request))

    def history(self, model: str) -> list[dict[str, Any]]:
        """The model's journal, oldest first: registrations, deployment changes (with the
        deployment after them), promotions, validations, retraining runs."""
        reply = self._call(self._deployments.GetHistory, cpb.GetHistoryRequest(model=model))
        return [
            {
                "at": e.at,
                "kind": e.kind,
                "version": e.version or None,
                "deployment": deployment_dict(e.deployment) if e.HasField("deployment") else None,
                "reason": e.reason,
                "actor": e.actor,
                "details": json.loads(e.details_json) if e.details_json else None,
            }
            for e in reply.entries
        ]

    def promote(
        self,
        model: str,
        version: str,
        reason: str,
        old_primary_shadow_fraction: float | None = None,
    ) -> dict[str, Any]:
        request = cpb.PromoteRequest(model=model, version=version, reason=reason)
        if old_primary_shadow_fraction is not None:
            request.old_primary_shadow_fraction = old_primary_shadow_fraction
        return deployment_dict(self._call(self._deployments.Promote, request))

    def feedback(self, model: str, items: Sequence[tuple[str, int, str]]) -> dict[str, int]:
        """Ground truth for (request id, row, label) items, streamed in batches. Up to
        100,000 items are stored all or (InvalidArgument naming the first bad item by its
        index) none; more are stored in parts of 100,000 in order, and an error in a later
        part says how many items the parts before it stored (sending them again is
        harmless: a label sent twice keeps the last one)."""
        try:
            reply = self._feedback.StreamFeedback(_batches(items, model), timeout=self._timeout)
        except grpc.RpcError as exc:
            raise from_status(exc.code().name, exc.details() or "") from exc
        return {
            "accepted": reply.accepted,
            "matched": reply.matched,
            "unmatched": reply.unmatched,
            "duplicates": reply.duplicates,
        }

    def report(self, model: str, since_seconds: float = 0.0) -> dict[str, Any]:
        request = cpb.ReportRequest(model=model, since_seconds=since_seconds)
        return report_dict(self._call(self._evaluation.Report, request))

    def decide(
        self,
        model: str,
        candidate: str,
        *,
        min_pairs: int | None = None,
        alpha: float | None = None,
        sequential: bool | None = None,
        since_seconds: float = 0.0,
    ) -> dict[str, Any]:
        """The promotion test of ``candidate`` against the primary, over pairs of the last
        ``since_seconds`` (0: all time)."""
        request = cpb.DecideRequest(model=model, candidate=candidate, since_seconds=since_seconds)
        if min_pairs is not None:
            request.min_pairs = min_pairs
        if alpha is not None:
            request.alpha = alpha
        if sequential is not None:
            request.sequential = sequential
        return decision_dict(self._call(self._evaluation.Decide, request))

    # ---- governance -----------------------------------------------------------------

    def register(
        self,
        model: str,
        artifact: str | Path,
        *,
        version: str = "",
        metadata: Mapping[str, Any] | None = None,
        reference_csv: str | Path | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        """Add a version from an artifact file (.onnx, .joblib or .py) and its provenance;
        ``reference_csv``: drift's reference sample for it, a CSV file (a Path) or its text
        (a str), with a header."""
        path = Path(artifact)
        request = cpb.RegisterRequest(
            model=model, version=version, artifact_name=path.name, artifact=path.read_bytes(),
            metadata_json=json.dumps(dict(metadata or {})), reason=reason,
            reference_csv=_text(reference_csv),
        )  # fmt: skip
        return message_dict(self._call(self._governance.Register, request))

    def versions(self, model: str) -> list[dict[str, Any]]:
        reply = self._call(self._governance.ListVersions, cpb.ListVersionsRequest(model=model))
        return [message_dict(v) for v in reply.versions]

    def drift(self, model: str, version: str = "") -> dict[str, Any]:
        request = cpb.DriftRequest(model=model, version=version)
        return message_dict(self._call(self._governance.Drift, request))

    def freeze_reference(self, model: str, version: str = "", rows: int = 0) -> dict[str, Any]:
        request = cpb.FreezeReferenceRequest(model=model, version=version, rows=rows)
        return message_dict(self._call(self._governance.FreezeReference, request))

    def report_over_time(
        self, model: str, by: str = "day", since_seconds: float = 0.0
    ) -> dict[str, Any]:
        request = cpb.ReportOverTimeRequest(model=model, by=by, since_seconds=since_seconds)
        return message_dict(self._call(self._governance.ReportOverTime, request))

    def validate(self, model: str, version: str) -> dict[str, Any]:
        request = cpb.ValidateRequest(model=model, version=version)
        return message_dict(self._call(self._governance.Validate, request))

    def retrain(self, model: str, reason: str = "") -> dict[str, Any]:
        request = cpb.RetrainRequest(model=model, reason=reason)
        return message_dict(self._call(self._governance.Retrain, request, timeout=None))

    def backtest(
        self,
        model: str,
        versions: Sequence[str] = (),
        *,
        since_seconds: float = 0.0,
        by: str = "day",
    ) -> dict[str, Any]:
        request = cpb.BacktestRequest(
            model=model, versions=list(versions), since_seconds=since_seconds, by=by
        )
        return message_dict(self._call(self._governance.Backtest, request))
