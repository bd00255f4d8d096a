"""Governance commands of the ``greenroom`` CLI: registry, drift, validation, retraining.

    greenroom register MODEL --artifact PATH [--version V] [--metadata FILE.json]
                             [--data TRAIN.csv [--time-column C]] [--reference FILE.csv]
                             [--reason TEXT]
    greenroom versions MODEL [--json]
    greenroom drift MODEL [--version V] [--freeze [--rows N]] [--json]
    greenroom validate MODEL VERSION [--json]
    greenroom retrain MODEL [--reason TEXT] [--json]
    greenroom backtest MODEL [--versions 1,2,3] [--since 7d] [--by hour|day] [--json]

``greenroom report MODEL --by hour|day`` and ``--html out.html`` live with ``report`` in
gateway/cli_control.py. Every command takes ``--target HOST:PORT``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from gateway import provenance
from gateway.cli_control import _command, _print, duration
from greenroom_client.control import ControlClient
from greenroom_client.errors import InvalidArgument


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _version_text(v: dict[str, Any]) -> str:
    data = v.get("data") or {}
    rows = f", trained on {data['rows']} rows" if "rows" in data else ""
    parent = f", parent {v['parent']}" if v.get("parent") else ""
    return (
        f"  {v['version']:<6} {v['role'] or '-':<8} {v['artifact']:<13} sha256 {v['sha256'][:12]}"
        f"  {v['framework'] or '?'} {v['framework_version'] or ''}  by {v['author'] or '?'}"
        f"  {_when(v['registered_at'])}{rows}{parent}"
    )


def _metadata(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path}: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{path}: expected a JSON object")
    return value


def cmd_register(args: argparse.Namespace) -> int:
    if not args.artifact.is_file():
        raise InvalidArgument(f"{args.artifact}: no such file")
    metadata = _metadata(args.metadata)
    reference: Path | str | None = args.reference
    if args.data is not None:
        metadata.setdefault("data", provenance.data_fingerprint(args.data, args.time_column))
        if reference is None:  # drift's reference: the training data itself
            reference = provenance.without_column(args.data, args.time_column)
    if "code_ref" not in metadata:
        metadata["code_ref"] = provenance.code_ref(args.artifact.resolve().parent)
    with ControlClient(args.target, timeout=300.0) as control:
        body = control.register(
            args.model, args.artifact, version=args.version or "",
            metadata=metadata, reference_csv=reference, reason=args.reason,
        )  # fmt: skip
    return _print(body, args.json, lambda v: f"registered {args.model}\n{_version_text(v)}")


def cmd_versions(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        body = control.versions(args.model)
    return _print(body, args.json, lambda vs: "\n".join(_version_text(v) for v in vs))


def _drift_text(d: dict[str, Any]) -> str:
    lines = [f"{d['model']} v{d['version']} against its reference ({d['reference_source']}):"]
    for f in d["features"]:
        psi = "-" if f["psi"] is None else f"{f['psi']:.3f}"
        p = "-" if f["p_value"] is None else f"{f['p_value']:.2g}"
        mark = "DRIFTED" if f["drifted"] else ""
        note = f"  ({f['note']})" if f["note"] else ""
        lines.append(
            f"  {f['feature']:<20} {f['kind']:<11} PSI {psi:<7} {f['band'] or '-':<8} "
            f"{f['test']} p {p:<8} {mark}{note}"
        )
    lines.append("drift: yes" if d["drifted"] else "drift: no")
    return "\n".join(lines)


def cmd_drift(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        if args.freeze:
            body = control.freeze_reference(args.model, args.version, args.rows)
            return _print(body, args.json, _reference_text)
        return _print(control.drift(args.model, args.version), args.json, _drift_text)


def _reference_text(r: dict[str, Any]) -> str:
    return f"reference of {r['model']} v{r['version']}: {r['rows']} rows ({r['source']})"


def _validation_text(r: dict[str, Any]) -> str:
    head = f"{r['model']} v{r['version']}: {'PASSED' if r['passed'] else 'FAILED'}"
    lines = [head + (f" ({r['note']})" if r["note"] else "")]
    lines += [
        f"  [{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in r["checks"]
    ]
    return "\n".join(lines)


def cmd_validate(args: argparse.Namespace) -> int:
    with ControlClient(args.target, timeout=900.0) as control:
        body = control.validate(args.model, args.version)
    _print(body, args.json, _validation_text)
    return 0 if body["passed"] else 1


def cmd_retrain(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        body = control.retrain(args.model, args.reason)

    def text(r: dict[str, Any]) -> str:
        version = f", version {r['version']}" if r["version"] else ""
        return f"retraining of {r['model']}: {r['outcome']}{version} ({r['reason']})"

    _print(body, args.json, text)
    return 0 if body["outcome"] == "deployed" else 1


def over_time_text(body: dict[str, Any]) -> str:
    metric = "accuracy" if body["task"] == "classification" else "MAE"
    fmt = "%Y-%m-%d %H:00" if body["by"] == "hour" else "%Y-%m-%d"
    lines = [f"{body['model']} {metric} per {body['by']}"]
    for p in body["points"]:
        value = "-" if p["value"] is None else f"{p['value']:.4f}"
        role = body["roles"].get(p["version"]) or "-"
        lines.append(
            f"  {time.strftime(fmt, time.gmtime(p['start']))}  v{p['version']:<6} {role:<8} "
            f"{metric} {value:<8} labelled {p['labelled']:<7} rows {p['rows']}"
        )
    return "\n".join(lines)


def cmd_backtest(args: argparse.Namespace) -> int:
    versions = [v for v in (args.versions or "").split(",") if v]
    with ControlClient(args.target, timeout=900.0) as control:
        body = control.backtest(args.model, versions, since_seconds=args.since, by=args.by)
    return _print(body, args.json, over_time_text)


def register(sub: Any) -> None:
    reg = _command(sub, "register", "add a version from a training script", cmd_register)
    reg.add_argument("--artifact", type=Path, required=True)
    reg.add_argument("--version", default=None)
    reg.add_argument("--metadata", type=Path, default=None, metavar="FILE.json")
    reg.add_argument("--reference", type=Path, default=None, metavar="FILE.csv")
    reg.add_argument(
        "--data", type=Path, default=None, metavar="TRAIN.csv",
        help="the training data: its fingerprint is recorded, and it is the drift reference",
    )  # fmt: skip
    reg.add_argument("--time-column", default=None, help="with --data: the column of times")
    reg.add_argument("--reason", default="")
    _command(sub, "versions", "the registry: every version and its provenance", cmd_versions)
    drift = _command(sub, "drift", "per-feature drift of live inputs", cmd_drift)
    drift.add_argument("--version", default="")
    drift.add_argument("--freeze", action="store_true", help="make recent inputs the reference")
    drift.add_argument("--rows", type=int, default=0)
    validate = _command(sub, "validate", "run a version's validation checks", cmd_validate)
    validate.add_argument("version")
    retrain = _command(sub, "retrain", "run the model's retraining now", cmd_retrain)
    retrain.add_argument("--reason", default="manual")
    backtest = _command(sub, "backtest", "replay labelled inputs through versions", cmd_backtest)
    backtest.add_argument("--versions", default="", metavar="1,2,3")
    backtest.add_argument("--since", type=duration, default=0.0, metavar="DURATION")
    backtest.add_argument("--by", choices=["hour", "day"], default="day")
