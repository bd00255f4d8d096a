"""One bounded ghz run against one target, parsed from ghz's JSON report."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GHZ = ROOT / "bench" / ".tools" / "bin" / "ghz"
INSTALL_SCRIPT = ROOT / "bench" / "install_ghz.sh"
PROTO = "proto/inference/grpc_service.proto"
CALL = "inference.GRPCInferenceService/ModelInfer"
# ghz gets one core: the servers under test share a small machine with it.
GHZ_CPUS = 1


class GhzError(RuntimeError):
    """ghz could not run (e.g. no connection) or wrote no readable report."""


@dataclass(frozen=True)
class Load:
    address: str
    payload: Path
    concurrency: int
    duration_s: float


@dataclass(frozen=True)
class Sample:
    """One ghz run: the latency of every OK call, how long it ran, what failed."""

    latencies_ns: list[int]
    seconds: float
    errors: int
    error_sample: str


@dataclass(frozen=True)
class RunStats:
    """Several samples of one (target, payload, concurrency) taken as one."""

    count: int
    ok: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    error_sample: str

    def to_json(self) -> dict[str, Any]:
        return {k: None if _is_nan(v) else v for k, v in asdict(self).items()}


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def ensure_ghz() -> Path:
    """Install the pinned ghz (idempotent) and return its path."""
    subprocess.run([str(INSTALL_SCRIPT)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return GHZ


def ghz_version() -> str:
    """The pinned version install_ghz.sh recorded (`go install` builds say "dev")."""
    stamp = GHZ.parent / "ghz.version"
    return stamp.read_text().strip() if stamp.exists() else "unknown"


def ghz_argv(load: Load) -> list[str]:
    return [
        str(GHZ),
        "--insecure",
        f"--proto={PROTO}",
        "--import-paths=proto",
        f"--call={CALL}",
        f"--binary-file={load.payload}",
        f"--concurrency={load.concurrency}",
        "--connections=1",
        f"--duration={load.duration_s:g}s",
        "--duration-stop=ignore",  # calls in flight at the end are neither kept nor errors
        "--timeout=10s",
        f"--cpus={GHZ_CPUS}",
        "--disable-template-functions",
        "--disable-template-data",
        "--format=json",
        load.address,
    ]


def parse_report(report: dict[str, Any]) -> Sample:
    latencies: list[int] = []
    errors: dict[str, int] = {}
    for call in report.get("details") or []:
        if call["status"] == "OK":
            latencies.append(int(call["latency"]))
        else:
            errors[call["error"]] = errors.get(call["error"], 0) + 1
    return Sample(
        latencies_ns=latencies,
        seconds=float(report.get("total", 0)) / 1e9,
        errors=sum(errors.values()),
        error_sample=next(iter(errors), ""),
    )


def combine(samples: list[Sample]) -> RunStats:
    """Percentiles over every OK call of every sample; throughput over their total time."""
    latencies = np.array([ns for s in samples for ns in s.latencies_ns], dtype=np.float64)
    p50, p90, p99 = (
        np.percentile(latencies, [50, 90, 99]) / 1e6 if latencies.size else [math.nan] * 3
    )
    seconds = sum(s.seconds for s in samples)
    errors = sum(s.errors for s in samples)
    return RunStats(
        count=int(latencies.size) + errors,
        ok=int(latencies.size),
        errors=errors,
        rps=latencies.size / seconds if seconds > 0 else 0.0,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        error_sample=next((s.error_sample for s in samples if s.error_sample), ""),
    )


def run(load: Load) -> Sample:
    """Run ghz for ``load.duration_s`` seconds; GhzError if ghz itself fails."""
    completed = subprocess.run(
        ghz_argv(load),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=load.duration_s + 60,
        check=False,
    )
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        detail = completed.stderr.strip() or completed.stdout.strip()
        raise GhzError(f"ghz failed ({completed.returncode}): {detail[:500]}") from None
    return parse_report(report)
