"""Control commands of the ``greenroom`` CLI: deployments, feedback, reports, decisions.

    greenroom deploy MODEL --primary V [--canary V:WEIGHT] [--shadow V:FRACTION ...] --reason TEXT
    greenroom deployment MODEL [--json]
    greenroom history MODEL [--json]
    greenroom promote MODEL V --reason TEXT [--old-primary-shadow FRACTION]
    greenroom feedback MODEL --file labels.csv|labels.jsonl [--json]
    greenroom report MODEL [--since 1h] [--by hour|day] [--html out.html] [--json]
    greenroom decide MODEL --candidate V [--min-pairs N] [--alpha A] [--sequential] [--json]

Every command takes ``--target HOST:PORT`` (default 127.0.0.1:8001).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from greenroom_client.control import ControlClient
from greenroom_client.errors import GreenroomError, InvalidArgument

DEFAULT_TARGET = "127.0.0.1:8001"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` as seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def version_share(text: str) -> tuple[str, float]:
    """``V:FRACTION`` as (version, fraction)."""
    version, sep, share = text.rpartition(":")
    try:
        if not sep or not version:
            raise ValueError
        return version, float(share)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VERSION:FRACTION, got {text!r}") from None


def read_feedback(path: Path) -> list[tuple[str, int, str]]:
    """All items of a csv (header request_id,row,label) or jsonl file, checked before any is
    sent, so a malformed file changes nothing.

    jsonl: ``request_id`` a string; ``row`` an integer (absent or null: 0; a string of
    digits is read as in csv; 1.7, 1.0 and true are refused); ``label`` a string, or a
    number kept as the text it is written with (1 is "1", 1.0 is "1.0", as the same
    value in a csv would be: a classifier's labels are compared as text, and a model
    trained on float classes answers "1.0"; a regression reads either as a number).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror}") from None
    items = _read_jsonl(path, text) if path.suffix == ".jsonl" else _read_csv(path, text)
    if not items:
        raise InvalidArgument(f"{path}: no feedback items")
    return items


class _JsonNumber(str):
    """A JSON number as the text it was written with (``1.0`` stays "1.0")."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _shown(value: Any) -> str:
    """A value as the file wrote it, for messages."""
    if isinstance(value, _JsonNumber):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_shown, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_shown(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _item(path: Path, line: int, request_id: Any, row: Any, label: Any) -> tuple[str, int, str]:
    where = f"{path}:{line}"
    if request_id is None or request_id == "":
        raise InvalidArgument(f"{where}: request_id is missing")
    if not isinstance(request_id, str) or isinstance(request_id, _JsonNumber):
        raise InvalidArgument(f"{where}: request_id must be a string, got {_shown(request_id)}")
    index = 0
    if row is not None and row != "":
        try:
            if not isinstance(row, str):  # a bool or a container: no row number
                raise TypeError
            index = int(row)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{where}: row must be an integer, got {_shown(row)}") from None
    if index < 0:
        raise InvalidArgument(f"{where}: row must not be negative")
    if label is None or label == "":
        raise InvalidArgument(f"{where}: label is missing")
    if not isinstance(label, str):  # a bool or a container
        raise InvalidArgument(f"{where}: label must be a string or a number, got {_shown(label)}")
    return request_id, index, str(label)


def _read_csv(path: Path, text: str) -> list[tuple[str, int, str]]:
    reader = csv.DictReader(text.splitlines())
    missing = {"request_id", "label"} - set(reader.fieldnames or [])
    if missing:
        raise InvalidArgument(
            f"{path}: csv header needs request_id,row,label (missing {sorted(missing)})"
        )
    return [
        _item(path, n, rec.get("request_id"), rec.get("row"), rec.get("label"))
        for n, rec in enumerate(reader, start=2)
    ]


def _read_jsonl(path: Path, text: str) -> list[tuple[str, int, str]]:
    """Numbers are kept as their text (``_JsonNumber``), checked by ``_item``."""
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(
                line, parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_JsonNumber
            )
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise InvalidArgument(f"{path}:{n}: expected an object")
        items.append(_item(path, n, rec.get("request_id"), rec.get("row"), rec.get("label")))
    return items


def _print(body: Any, as_json: bool, human: Callable[[Any], str]) -> int:
    print(json.dumps(body, indent=2) if as_json else human(body))
    return 0


def _deployment_text(d: dict[str, Any]) -> str:
    canary = (
        f"  canary {d['canary']['version']} at {d['canary']['weight']:g}" if d["canary"] else ""
    )
    shadows = "".join(f"  shadow {s['version']} at {s['fraction']:g}" for s in d["shadows"])
    return f"{d['model']}: primary {d['primary']}{canary}{shadows}"


def _report_text(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} ({r['task']})"]
    for v in r["versions"]:
        acc = "-" if v["accuracy"] is None else f"{v['accuracy']:.4f}"
        p99 = "-" if v["p99_ms"] is None else f"{v['p99_ms']:.2f} ms"
        lines.append(
            f"  v{v['version']:<6} {v['role'] or '-':<8} predictions {v['predictions']:<7} "
            f"labelled {v['labelled']:<7} accuracy {acc:<8} p99 {p99}"
        )
    ledger = r["ledger"]
    lines.append(f"  ledger: {ledger['recorded']} recorded, {ledger['dropped']} dropped")
    return "\n".join(lines)


def _decision_text(d: dict[str, Any]) -> str:
    head = (
        f"{d['decision'].upper()}: {d['candidate']} vs primary {d['primary']}, {d['pairs']} pairs"
    )
    return "\n".join([head, *(f"  - {reason}" for reason in d["reasons"])])


def cmd_deploy(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        body = control.deploy(
            args.model, args.primary, canary=args.canary, shadows=dict(args.shadow or []),
            reason=args.reason,
        )  # fmt: skip
    return _print(body, args.json, _deployment_text)


def cmd_deployment(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        return _print(control.deployment(args.model), args.json, _deployment_text)


def _entry_text(e: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
    what = _deployment_text(e["deployment"]) if e["deployment"] else f"v{e['version'] or '-'}"
    return f"{when} {e['kind']:<12} [{e['actor']}] {what}  ({e['reason'] or 'no reason given'})"


def cmd_history(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        entries = control.history(args.model)
    return _print(entries, args.json, lambda rows: "\n".join(_entry_text(e) for e in rows))


def cmd_promote(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        body = control.promote(args.model, args.version, args.reason, args.old_primary_shadow)
    return _print(body, args.json, _deployment_text)


def cmd_feedback(args: argparse.Namespace) -> int:
    items = read_feedback(args.file)
    with ControlClient(args.target) as control:
        body = control.feedback(args.model, items)
    return _print(body, args.json, lambda b: ", ".join(f"{k} {v}" for k, v in b.items()))


def cmd_report(args: argparse.Namespace) -> int:
    from gateway import cli_governance  # noqa: PLC0415 (it imports this module)

    with ControlClient(args.target) as control:
        if args.html is not None:
            return write_html(control, args.model, args.by or "day", args.since, args.html)
        if args.by:
            body = control.report_over_time(args.model, args.by, args.since)
            return _print(body, args.json, cli_governance.over_time_text)
        return _print(control.report(args.model, args.since), args.json, _report_text)


def write_html(
    control: ControlClient, model: str, by: Literal["hour", "day"], since: float, out: Path
) -> int:
    """The picture: accuracy per version over time and, when there is a reference, drift."""
    from gateway import report_html  # noqa: PLC0415 (only for --html)
    from gateway.drift import FeatureDrift  # noqa: PLC0415

    over = control.report_over_time(model, by, since)
    features: list[FeatureDrift] = []
    drift_version: str | None = None
    # The primary's drift, or else that of the first deployed version with a reference.
    order = ("primary", "canary", "shadow")
    ranked = sorted(
        over["roles"], key=lambda v: order.index(r) if (r := over["roles"][v]) in order else 3
    )
    for version in ranked:
        try:
            drift = control.drift(model, version)
        except GreenroomError:  # no reference or no sampled inputs: the page says so
            continue
        features = [
            FeatureDrift(**{**f, "band": f["band"] or None, "note": f["note"] or None})
            for f in drift["features"]
        ]
        drift_version = drift["version"]
        break
    points = [
        report_html.Point(p["start"], p["version"], p["labelled"], p["value"])
        for p in over["points"]
    ]
    picture = report_html.Picture(
        model=model, task=over["task"], bucket=by, bucket_s=over["bucket_seconds"],
        roles=over["roles"], points=points, drift=features, drift_version=drift_version,
        generated_at=time.time(),
    )  # fmt: skip
    out.write_text(report_html.render(picture))
    print(f"wrote {out}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    with ControlClient(args.target) as control:
        body = control.decide(
            args.model, args.candidate, min_pairs=args.min_pairs, alpha=args.alpha,
            sequential=args.sequential or None,
        )  # fmt: skip
    return _print(body, args.json, _decision_text)


def _command(
    sub: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("model")
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=func)
    return parser


def register(sub: Any) -> None:
    deploy = _command(sub, "deploy", "set a model's primary, canary and shadows", cmd_deploy)
    deploy.add_argument("--primary", required=True)
    deploy.add_argument("--canary", type=version_share, metavar="V:WEIGHT")
    deploy.add_argument("--shadow", type=version_share, action="append", metavar="V:FRACTION")
    deploy.add_argument("--reason", required=True, help="why: kept in the model's history")
    _command(sub, "deployment", "show a model's deployment", cmd_deployment)
    _command(sub, "history", "the model's journal: every change, with reasons", cmd_history)
    promote = _command(sub, "promote", "make a version the primary", cmd_promote)
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why: kept in the model's history")
    promote.add_argument("--old-primary-shadow", type=float, default=None, metavar="FRACTION")
    feedback = _command(sub, "feedback", "send ground truth from a csv or jsonl file", cmd_feedback)
    feedback.add_argument("--file", type=Path, required=True)
    report = _command(sub, "report", "accuracy and latency per version", cmd_report)
    report.add_argument("--since", type=duration, default=0.0, metavar="DURATION")
    report.add_argument("--by", choices=["hour", "day"], default=None, help="accuracy over time")
    report.add_argument("--html", type=Path, default=None, metavar="OUT.html", help="the picture")
    decide = _command(sub, "decide", "the promotion test for a candidate", cmd_decide)
    decide.add_argument("--candidate", required=True)
    decide.add_argument("--min-pairs", type=int, default=None)
    decide.add_argument("--alpha", type=float, default=None)
    decide.add_argument("--sequential", action="store_true")
