"""One settings object per gateway process, built once in the CLI and passed down.

Every field may also come from the environment as ``GREENROOM_<FIELD>`` (e.g.
``GREENROOM_PORT=9000``); command-line flags win. Nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
# What the Python runners accept and send (runners.server.MAX_MESSAGE_BYTES).
RUNNER_MESSAGE_LIMIT = 256 * MiB


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GREENROOM_", extra="forbid")

    repo: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    data_dir: Path = Path(".greenroom")
    # Requests (and answers) above this are refused with INVALID_ARGUMENT naming the
    # largest input; the transport itself accepts up to transport_limit so that the
    # refusal can be explained. At most RUNNER_MESSAGE_LIMIT - 16 MiB: a forwarded request
    # must fit the runners' own limit.
    max_message_bytes: int = Field(default=64 * MiB, gt=0, le=RUNNER_MESSAGE_LIMIT - 16 * MiB)
    runner_start_timeout_s: float = Field(default=60.0, gt=0)
    health_interval_s: float = Field(default=1.0, gt=0)
    restart_backoff_initial_s: float = Field(default=0.2, gt=0)
    restart_backoff_max_s: float = Field(default=5.0, gt=0)
    # A runner that has stayed up this long is healthy again: its backoff resets.
    restart_backoff_reset_s: float = Field(default=30.0, gt=0)
    # Deadline for one forwarded call when the client set none.
    default_deadline_s: float = Field(default=30.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Gateway processes sharing the port (SO_REUSEPORT) under one supervisor that owns the
    # runners; 1 is a single process (see gateway/workers.py).
    workers: int = Field(default=1, ge=1, le=64)
    # The ledger: SQLite in data_dir unless a URL is given (postgresql://... for several
    # gateways sharing one ledger).
    database_url: str | None = None
    # Off: answers are not recorded (deployments and feedback still use the database).
    record_predictions: bool = True
    # Answers waiting for the ledger's writer; beyond this they are dropped and counted.
    ledger_queue_answers: int = Field(default=20_000, gt=0)
    # How long the writer lets answers gather before a write: fewer, larger transactions.
    ledger_flush_interval_s: float = Field(default=0.2, gt=0)
    # process: answers are converted and written in a process of the ledger's own, off the
    # gateway's GIL; thread: in a thread of the gateway (one process fewer, slower under load).
    ledger_writer: Literal["process", "thread"] = "process"
    # Shadow copies: at most this many in flight per shadow version (more are dropped and
    # counted), each under its own deadline.
    shadow_limit: int = Field(default=64, gt=0)
    shadow_deadline_s: float = Field(default=5.0, gt=0)
    # Shadow copies that can be merged wait up to this long for others to the same version
    # and go as one request of at most shadow_batch_rows rows (gateway.shadow); 0: never.
    shadow_batch_window_ms: float = Field(default=5.0, ge=0)
    shadow_batch_rows: int = Field(default=256, gt=0)
    # ModelInfer to the runners the gateway starts goes over their framed socket
    # (runners.framed), a plain Unix socket without gRPC; off: over gRPC. Tracing uses gRPC.
    framed_socket: bool = True
    log_format: Literal["json", "console"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Prometheus metrics on http://host:metrics_port/metrics (gateway.metrics); 0: any
    # free port, -1: not served (and not counted).
    metrics_port: int = Field(default=8002, ge=-1, le=65535)
    # OpenTelemetry traces of inference requests, gateway and runners (gateway.tracing):
    # "console" writes spans as JSON lines to tracing_file (stderr without one), "otlp"
    # exports them with the OTLP exporter configured by the standard OTEL_* variables.
    tracing: Literal["off", "console", "otlp"] = "off"
    tracing_file: Path | None = None

    @property
    def transport_limit(self) -> int:
        return self.max_message_bytes + 16 * MiB
