"""Command line of a runner process; the gateway's supervisor starts one per model version.

    python -m runners --model-dir VERSION_DIR --name NAME --version V --address ADDRESS
                      [--framed-socket PATH] [--threads N] [--parent-pid PID]
                      [--log-format json|console]
                      [--tracing off|console|otlp] [--tracing-file FILE]

ADDRESS is ``unix:/path/to.sock`` or ``HOST:PORT`` (port 0: any free port). model.yaml is
read from VERSION_DIR's parent. Once bound, the runner prints exactly one line to stdout,
``GREENROOM_RUNNER_LISTENING <address bound>``, then loads the model while health says
NOT_SERVING. Logs go to stderr (JSON by default). Exit codes: 0 stopped by SIGTERM/SIGINT
or because the parent died, 2 bad arguments, 3 the model failed to load (the reason is
logged), 4 the address (or the framed socket) could not be bound. With
``--framed-socket PATH`` the runner also answers ModelInfer on that Unix socket without
gRPC (runners.framed): the gateway's fast path to the runners it starts.

Orphans are avoided twice over: on Linux the kernel sends SIGTERM when the parent dies
(PR_SET_PDEATHSIG), and with ``--parent-pid`` the runner also checks every 0.5 s that the
parent is alive, which covers other systems and a parent that is not the direct one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from runners.server import RunnerSettings, Wakeup, serve

PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


def parse_args(argv: list[str] | None = None) -> RunnerSettings:
    parser = argparse.ArgumentParser(prog="python -m runners", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="the version directory")
    parser.add_argument("--name", required=True, help="the model name it answers to")
    parser.add_argument("--version", required=True, help="the version it answers to")
    parser.add_argument("--address", required=True, help="unix:/path.sock or HOST:PORT")
    parser.add_argument(
        "--framed-socket",
        type=Path,
        help="also answer ModelInfer on this Unix socket (runners.framed)",
    )
    parser.add_argument("--threads", type=int, help="model calls at once (default: model.yaml)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    parser.add_argument("--log-format", choices=["json", "console"], default="json")
    parser.add_argument(
        "--tracing", choices=["off", "console", "otlp"], default="off",
        help="a span per ModelInfer call, continuing the caller's trace (runners/tracing.py)",
    )  # fmt: skip
    parser.add_argument("--tracing-file", type=Path, help="--tracing console: JSON lines here")
    args = parser.parse_args(argv)
    try:
        return RunnerSettings.model_validate(vars(args))
    except ValueError as exc:
        parser.error(str(exc))


def _add_fields(fields: Mapping[str, Any]) -> structlog.typing.Processor:
    """A processor putting ``fields`` first in every entry. Not contextvars: they are
    per thread, and a runner logs from gRPC's handler threads and its own."""

    def add(logger: Any, method: str, event: structlog.typing.EventDict) -> Any:
        return {**fields, **event}

    return add


def configure_logging(log_format: str, name: str, version: str) -> None:
    """structlog to stderr (stdout carries only the LISTENING line), model bound to all."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    fields = {"component": "runner", "model": name, "version": version, "pid": os.getpid()}
    processors: list[structlog.typing.Processor] = [
        _add_fields(fields),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def set_parent_death_signal() -> None:
    """Ask Linux to SIGTERM us when the parent dies (best effort elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _parent_alive(pid: int, was_direct_parent: bool) -> bool:
    if was_direct_parent and os.getppid() != pid:  # re-parented: the parent has exited
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def watch_parent(pid: int, wakeup: Wakeup) -> None:
    """Poll the parent until it is gone, then ask for a stop (in a daemon thread)."""
    was_direct_parent = os.getppid() == pid
    while _parent_alive(pid, was_direct_parent):
        time.sleep(PARENT_POLL_S)
    structlog.get_logger(__name__).warning("parent process is gone; stopping", parent=pid)
    wakeup.stop()


def run(settings: RunnerSettings) -> int:
    """Serve on the main thread until SIGTERM/SIGINT or the parent's death."""
    wakeup = Wakeup()
    wakeup.catch_signals(signal.SIGTERM, signal.SIGINT)
    if settings.parent_pid is not None:
        threading.Thread(
            target=watch_parent,
            args=(settings.parent_pid, wakeup),
            name="watch-parent",
            daemon=True,
        ).start()
    return serve(settings, wakeup)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    set_parent_death_signal()
    configure_logging(settings.log_format, settings.name, settings.version)
    code = run(settings)
    sys.stderr.flush()
    # os._exit, not sys.exit: a predict stuck in a handler thread cannot be interrupted,
    # and the supervisor expects the process gone once the grace period is over.
    os._exit(code)


if __name__ == "__main__":
    main()
