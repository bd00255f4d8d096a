"""Prometheus metrics of the gateway, served over HTTP on ``metrics_port`` (``/metrics``).

Every answer is counted once, where every answer passes (``Recorder.answered`` and
``Recorder.failed``, whether or not answers are recorded): ``greenroom_requests_total``
by model, version, role and code, and its latency in
``greenroom_request_duration_seconds``. A request refused before it reached a model (not
a ``ModelInferRequest``, an unknown model or version, a bad tensor) is counted by the
servicer's edge with version and role ``""`` (and model ``""`` when the name is not a
model of the repository, so that clients cannot grow the label set without bound). Per
request this costs a lookup, a bisect and a few additions on plain Python objects that
are read at scrape time (``_Tallies``, about 0.4 us); in ``--workers N``,
prometheus_client's own counter and histogram (children made once and kept).

Values that live elsewhere (the ledger's queue and counters, the shadow lanes' drops)
are copied in by ``refresh``: at scrape time in a single gateway, and every
``REFRESH_S`` (and once more on the way out) in each worker of ``--workers N``.

``--workers N``: prometheus_client's multiprocess mode. The supervisor makes a fresh
directory, starts every worker with ``PROMETHEUS_MULTIPROC_DIR`` pointing at it (each
worker's values then live in memory-mapped files there) and serves the sum over the
workers (``multiprocess_registry``); counters of a worker that exited stay in the sum,
gauges of the live ones only (``process_gone``).

The accuracy and drift gauges are set by whoever computes them (``set_accuracy``,
``set_drift``); in ``--workers N`` the most recent value set by any worker is served.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.ledger.records import LedgerStats
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from gateway.ledger import Ledger
    from gateway.shadow import ShadowFanout

log = structlog.get_logger(__name__)

METRICS = "GREENROOM_GATEWAY_METRICS"
# How often a worker of --workers N copies its ledger and shadow counters into the
# shared files (a single gateway reads them at scrape time instead).
REFRESH_S = 0.5
# From a fraction of a millisecond (an in-process model) to the default deadline.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_BOUNDS = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]

# Whether the request handled in this task reached a model (its answer or failure was
# counted by ``answered``): the edge then does not count it again as refused.
_dispatched: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "greenroom_dispatched", default=False
)


class _Refresh(Collector):
    """Registered first: copies the live values in before the others are collected."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        self.metrics.refresh()
        return []


@dataclass
class _Seen:
    """What ``refresh`` last copied, so that counters move by the difference."""

    ledger: LedgerStats
    drops: dict[tuple[str, str], int]


_NO_LEDGER = LedgerStats(0, 0, 0, 0, 0, 0, None)

# (name, help) of the request counter and histogram, and their labels (plus "code").
LABELS = ("model", "version", "role")
REQUESTS = (
    "greenroom_requests",
    "Inference answers by model, version, role (primary, canary, shadow; '' for a request "
    "refused before it reached a model) and gRPC code",
)
DURATION = (
    "greenroom_request_duration_seconds",
    "Time from dispatch to a model to its answer or failure",
)


@dataclass(slots=True)
class _Tally:
    """One (model, version, role): answers by code, and their latency histogram (counts
    per bucket, not cumulated; the last one is +Inf)."""

    codes: dict[str, int]
    buckets: list[int]
    total_s: float = 0.0


class _Tallies(Collector):
    """Requests counted in plain Python objects, collected at scrape time: a single
    gateway's answer path costs a lookup, a bisect and three additions (about a quarter
    of prometheus_client's locked counter and histogram). Only the event loop writes;
    the scrape thread reads copies, each taken whole under the GIL."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tallies: dict[tuple[str, str, str], _Tally] = {}
        registry.register(self)

    def add(self, model: str, version: str, role: str, code: str, seconds: float | None) -> None:
        key = (model, version, role)
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = _Tally({}, [0] * (len(LATENCY_BUCKETS) + 1))
        codes = tally.codes
        codes[code] = codes.get(code, 0) + 1
        if seconds is not None:
            tally.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            tally.total_s += seconds

    def collect(self) -> list[Metric]:
        requests, duration = _families()
        for key, tally in list(self.tallies.items()):
            for code, count in dict(tally.codes).items():
                requests.add_metric([*key, code], count)
            counts, total_s = list(tally.buckets), tally.total_s
            if not any(counts):  # refused requests only: no latency
                continue
            cumulative = list(itertools.accumulate(counts))
            buckets = list(zip(_BOUNDS, cumulative, strict=True))
            duration.add_metric(list(key), buckets, total_s)
        return [requests, duration]

    def describe(self) -> list[Metric]:
        return list(_families())


def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
    requests = CounterMetricFamily(*REQUESTS, labels=[*LABELS, "code"])
    return requests, HistogramMetricFamily(*DURATION, labels=LABELS)


class _SharedRequests:
    """Requests in prometheus_client's counter and histogram: for --workers N, where they
    live in the shared files (the labelled children are made once and kept)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(*REQUESTS, [*LABELS, "code"], registry=registry)
        self.duration = Histogram(*DURATION, LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.counters: dict[tuple[str, str, str, str], Any] = {}
        self.histograms: dict[tuple[str, str, str], Any] = {}

    def add(self, model: str, version: str, role: str, code: str, seconds: float | None) -> None:
        key = (model, version, role, code)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = self.requests.labels(*key)
        counter.inc()
        if seconds is not None:
            where = (model, version, role)
            histogram = self.histograms.get(where)
            if histogram is None:
                histogram = self.histograms[where] = self.duration.labels(*where)
            histogram.observe(seconds)


class Metrics:
    """The gateway's metrics, in a registry of their own (never the global one).

    ``multiprocess``: this is a worker of ``--workers N`` (PROMETHEUS_MULTIPROC_DIR must
    have been set before prometheus_client was imported); the supervisor serves the sum.
    """

    def __init__(self, *, multiprocess: bool = False) -> None:
        if multiprocess and values.ValueClass is values.MutexValue:
            raise RuntimeError("multiprocess metrics need PROMETHEUS_MULTIPROC_DIR at start")
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        if not multiprocess:
            self.registry.register(_Refresh(self))
        registry = self.registry
        self._requests: _Tallies | _SharedRequests = (
            _SharedRequests(registry) if multiprocess else _Tallies(registry)
        )
        self.shadow_drops = Counter(
            "greenroom_shadow_drops",
            "Shadow copies dropped because the shadow version had shadow_limit in flight",
            ["model", "version"],
            registry=registry,
        )
        self.ledger_queue_depth = Gauge(
            "greenroom_ledger_queue_depth",
            "Answers waiting for the ledger's writer (including the batch being written)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ledger_lag = Gauge(
            "greenroom_ledger_lag_seconds",
            "Age of the oldest answer waiting for the ledger's writer (0 when none waits)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ledger_recorded = Counter(
            "greenroom_ledger_recorded",
            "Answers written to the ledger",
            registry=registry,
        )
        self.ledger_recorded_rows = Counter(
            "greenroom_ledger_recorded_rows",
            "Prediction rows written to the ledger (the answers' rows)",
            registry=registry,
        )
        self.ledger_dropped = Counter(
            "greenroom_ledger_dropped",
            "Answers not recorded because the ledger's queue was full",
            registry=registry,
        )
        self.ledger_failed = Counter(
            "greenroom_ledger_failed",
            "Answers lost to a conversion or database error after retries",
            registry=registry,
        )
        self.accuracy = Gauge(
            "greenroom_accuracy",
            "Accuracy of a version on its labelled answers, as last computed",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.drift = Gauge(
            "greenroom_drift_psi",
            "Population stability index of one input feature against its reference",
            ["model", "version", "feature"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._ledger: Ledger | None = None
        self._shadows: ShadowFanout | None = None
        self._seen = _Seen(_NO_LEDGER, {})
        self._refresh_lock = threading.Lock()

    # ---- the answer path (event loop) -------------------------------------------------

    def answered(self, model: str, version: str, role: str, code: str, latency_ms: float) -> None:
        """One answer (``code`` "OK") or failure of a call to a model."""
        self._requests.add(model, version, role, code, latency_ms / 1e3)
        if role != "shadow":
            _dispatched.set(True)

    def begin(self) -> None:
        """A request arrives (the edge): nothing of it is counted yet."""
        _dispatched.set(False)

    def refused(self, model: str, code: str) -> None:
        """A request that failed: counted here unless it reached a model (``answered``
        counted it then). ``model``: '' unless it is a model of the repository."""
        if not _dispatched.get():
            self._requests.add(model, "", "", code, None)

    # ---- gauges set by the evaluation -------------------------------------------------

    def set_accuracy(self, model: str, version: str, value: float) -> None:
        self.accuracy.labels(model, version).set(value)

    def set_drift(self, model: str, version: str, feature: str, psi: float) -> None:
        self.drift.labels(model, version, feature).set(psi)

    # ---- values read from elsewhere ----------------------------------------------------

    def watch(self, ledger: Ledger | None = None, shadows: ShadowFanout | None = None) -> None:
        """Where ``refresh`` reads the ledger's and the shadow lanes' counters."""
        self._ledger = ledger
        self._shadows = shadows

    def refresh(self) -> None:
        """Copy the ledger's and the shadow lanes' current values in (any thread)."""
        with self._refresh_lock:
            if self._ledger is not None:
                self._copy_ledger(self._ledger)
            if self._shadows is not None:
                self._copy_drops(self._shadows)

    def _copy_ledger(self, ledger: Ledger) -> None:
        stats, before = ledger.stats, self._seen.ledger
        self.ledger_queue_depth.set(stats.queued)
        self.ledger_lag.set(ledger.lag_s())
        for counter, now, then in (
            (self.ledger_recorded, stats.recorded_answers, before.recorded_answers),
            (self.ledger_recorded_rows, stats.recorded_rows, before.recorded_rows),
            (self.ledger_dropped, stats.dropped, before.dropped),
            (self.ledger_failed, stats.failed, before.failed),
        ):
            if now > then:
                counter.inc(now - then)
        self._seen.ledger = stats

    def _copy_drops(self, shadows: ShadowFanout) -> None:
        seen = self._seen.drops
        # A copy of the dict: the event loop may add a lane meanwhile.
        for where, lane in list(shadows.lanes.items()):
            dropped, last = lane.dropped, seen.get(where)
            if last is None or dropped > last:  # a lane's series shows from its first copy on
                self.shadow_drops.labels(*where).inc(dropped - (last or 0))
            seen[where] = dropped


# ---- serving -------------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """The HTTP endpoint (prometheus_client's, in a daemon thread) and its bound port."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    def close(self) -> None:
        """Stop serving (blocks up to half a second: run it off the event loop)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)


class MetricsPortUnavailable(Exception):
    pass


def serve(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` on http://host:port/metrics (port 0: a free one)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        server, thread = start_http_server(port, addr=bare, registry=registry)
    except OSError as exc:
        raise MetricsPortUnavailable(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    bound = int(server.server_port)
    log.info("metrics served", url=f"http://{host}:{bound}/metrics")
    return MetricsServer(server, thread, host, bound)


def announce(server: MetricsServer) -> None:
    """The stdout line that tests and scripts read the metrics port from."""
    print(f"{METRICS} {server.host}:{server.port}", flush=True)


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """What the supervisor of --workers N serves: the sum over its workers' files."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def process_gone(directory: Path, pid: int) -> None:
    """A worker exited: its live gauges leave the sum (its counters stay)."""
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def open_metrics(settings: GatewaySettings) -> tuple[Metrics | None, MetricsServer | None]:
    """A single gateway's metrics and their endpoint (none with ``metrics_port`` -1).
    A port that cannot be bound stops the gateway (exit code 1), as the gRPC port does."""
    if settings.metrics_port < 0:
        return None, None
    metrics = Metrics()
    return metrics, serve_or_exit(metrics.registry, settings)


def serve_or_exit(registry: CollectorRegistry, settings: GatewaySettings) -> MetricsServer:
    try:
        return serve(registry, settings.host, settings.metrics_port)
    except MetricsPortUnavailable as exc:
        log.error("gateway cannot start", error=str(exc))
        raise SystemExit(1) from None


async def refresh_every(metrics: Metrics, interval_s: float = REFRESH_S) -> None:
    """A worker of --workers N: copy the ledger's and shadows' values in, periodically."""
    while True:
        await asyncio.sleep(interval_s)
        metrics.refresh()
