"""The ``greenroom`` command: serve a repository, run the demo, and call a running gateway.

    greenroom serve --repo DIR [--host H] [--port P] [--data-dir DIR] [--workers N]
                    [--metrics-port P] [--tracing off|console|otlp] [--tracing-file F]
    greenroom demo [--repo DIR] [--port P]
    greenroom models [--target HOST:PORT] [--json]
    greenroom infer MODEL --input NAME=JSON [--version V] [--id ID] [--target HOST:PORT] [--json]
    greenroom deploy | deployment | history | promote | feedback | report | decide ...
        (see gateway/cli_control.py)
    greenroom register | versions | drift | validate | retrain | backtest ...
        (see gateway/cli_governance.py)

Client commands print a readable summary, or with ``--json`` one JSON document (for
``infer``, the V2 REST response shape). Errors print ``error: CODE: message`` on stderr
and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from gateway import cli_control, cli_governance, logs
from gateway.settings import GatewaySettings
from greenroom_client import Client
from greenroom_client.errors import GreenroomError, InvalidArgument
from greenroom_client.rest_infer import rest_response
from greenroom_client.tensors import DTYPES

DEFAULT_TARGET = "127.0.0.1:8001"
DEMO_REPO = Path(".greenroom/demo-models")


def _serve_args(parser: argparse.ArgumentParser, repo: Path | None) -> None:
    parser.add_argument("--repo", type=Path, required=repo is None, default=repo)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--log-format", choices=["json", "console"], default=None)
    parser.add_argument("--max-message-bytes", type=int, default=None)
    parser.add_argument("--database-url", default=None, help="default: SQLite in --data-dir")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="gateway processes sharing the port (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--no-record", dest="record_predictions", action="store_false", default=None,
        help="do not record answers in the ledger",
    )  # fmt: skip
    parser.add_argument(
        "--no-framed-socket", dest="framed_socket", action="store_false", default=None,
        help="send ModelInfer to the runners over gRPC, not their framed socket",
    )  # fmt: skip
    parser.add_argument(
        "--ledger-writer", choices=["process", "thread"], default=None,
        help="convert and write answers in a process of their own (default) or a thread",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="Prometheus /metrics port (default 8002; 0: any free port; -1: off)",
    )  # fmt: skip
    parser.add_argument(
        "--tracing", choices=["off", "console", "otlp"], default=None,
        help="OpenTelemetry traces (default off; otlp reads the OTEL_* variables)",
    )  # fmt: skip
    parser.add_argument(
        "--tracing-file", type=Path, default=None,
        help="where --tracing console appends spans as JSON lines (default stderr)",
    )  # fmt: skip


def _settings(args: argparse.Namespace) -> GatewaySettings:
    given = {
        key: value
        for key, value in {
            "repo": args.repo,
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "log_format": args.log_format,
            "max_message_bytes": args.max_message_bytes,
            "database_url": args.database_url,
            "record_predictions": args.record_predictions,
            "framed_socket": args.framed_socket,
            "ledger_writer": args.ledger_writer,
            "workers": args.workers,
            "metrics_port": args.metrics_port,
            "tracing": args.tracing,
            "tracing_file": args.tracing_file,
        }.items()
        if value is not None
    }
    try:
        return GatewaySettings(**given)
    except ValidationError as exc:  # flags and GREENROOM_* variables: say which, not a trace
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidArgument(f"invalid settings: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    settings = _settings(args)
    logs.configure(settings.log_format, settings.log_level)
    if settings.workers > 1:
        from gateway.workers import serve_workers

        asyncio.run(serve_workers(settings))
        return 0
    asyncio.run(serve(settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import ensure_demo_repository

    created = ensure_demo_repository(args.repo)
    for name in created:
        print(f"trained demo model {name} into {args.repo}", file=sys.stderr)
    return cmd_serve(args)


def cmd_models(args: argparse.Namespace) -> int:
    with Client(args.target) as client:
        rows: list[dict[str, Any]] = []
        for entry in client.repository_index():
            row: dict[str, Any] = {
                "name": entry.name,
                "version": entry.version,
                "state": entry.state,
                "reason": entry.reason,
            }
            if entry.state == "READY":
                meta = client.model_metadata(entry.name, entry.version)
                row["platform"] = meta.platform
                row["inputs"] = [spec.as_dict() for spec in meta.inputs]
                row["outputs"] = [spec.as_dict() for spec in meta.outputs]
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        signature = " ".join(
            f"{s['name']}:{s['datatype']}{s['shape']}" for s in row.get("inputs", [])
        )
        print(
            f"{row['name']:<20} {row['version']:<8} {row['state']:<12} {signature or row['reason']}"
        )
    return 0


def _parse_inputs(pairs: Sequence[str], declared: dict[str, str]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise InvalidArgument(f"--input {pair!r}: expected NAME=JSON")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"--input {name}: not JSON ({exc})") from None
        datatype = declared.get(name)
        if isinstance(value, dict):
            raise InvalidArgument(f"--input {name}: expected a (nested) list, got an object")
        try:
            if datatype == "BYTES":
                arrays[name] = np.array(value, dtype=object)
            else:
                arrays[name] = np.asarray(value, dtype=DTYPES[datatype] if datatype else None)
        except (ValueError, TypeError) as exc:  # ragged rows, "x" where numbers go
            kind = datatype or "a tensor"
            raise InvalidArgument(f"--input {name}: not {kind} values ({exc})") from None
    return arrays


def cmd_infer(args: argparse.Namespace) -> int:
    with Client(args.target) as client:
        meta = client.model_metadata(args.model, args.version or "")
        arrays = _parse_inputs(args.input, {spec.name: spec.datatype for spec in meta.inputs})
        result = client.infer(args.model, arrays, version=args.version, request_id=args.id)
    body = rest_response(result)
    if args.json:
        print(json.dumps(body))
        return 0
    print(f"{result.model} version {result.version} id {result.id}")
    for output in body["outputs"]:
        nested = result.outputs[output["name"]].tolist()
        print(f"  {output['name']} {output['datatype']} {output['shape']}: {nested}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greenroom", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model repository")
    _serve_args(serve, None)
    serve.set_defaults(func=cmd_serve)
    demo = sub.add_parser("demo", help="train demo models if needed, then serve them")
    _serve_args(demo, DEMO_REPO)
    demo.set_defaults(func=cmd_demo)
    models = sub.add_parser("models", help="list the models of a running gateway")
    models.add_argument("--target", default=DEFAULT_TARGET)
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    infer = sub.add_parser("infer", help="send one inference request")
    infer.add_argument("model")
    infer.add_argument("--input", action="append", required=True, metavar="NAME=JSON")
    infer.add_argument("--version", default=None)
    infer.add_argument("--id", default=None)
    infer.add_argument("--target", default=DEFAULT_TARGET)
    infer.add_argument("--json", action="store_true")
    infer.set_defaults(func=cmd_infer)
    cli_control.register(sub)
    cli_governance.register(sub)
    return parser


# What a shell reports for a command whose reader went away (128 + SIGPIPE).
BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is caught below
    except GreenroomError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `greenroom report m | head` stopped reading: end quietly, as Unix tools do. The
        # interpreter flushes stdout once more at exit, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
