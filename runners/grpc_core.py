"""The gRPC core experiments Greenroom's servers run with, chosen before grpc is imported.

grpc's C core reads ``GRPC_EXPERIMENTS`` once, when the ``grpc`` module is first imported,
so the choice is made by the packages' ``__init__`` (``runners``, and ``gateway``
through it), before any of their modules imports grpc.

By default grpc 1.85 serves a connection with its EventEngine: an engine thread reads the
socket and completes the operation, and grpc.aio's poller thread takes the completion
and wakes the event loop. With iomgr's listener and endpoints (the two experiments
turned off below) the poller thread reads and writes the socket itself: one hand-off
between threads fewer for every event of every call a server answers. Client channels
(the gateway's gRPC calls to runners, shadows, workers) keep the EventEngine. On two
shared cores that hand-off costs more than the work: the gateway's in-process lane at
concurrency 1 went from 1.28 to 1.16 times the echo floor's p50 (median of eight
interleaved rounds, the floor given the same setting), its CPU per request 485-551 ->
399-433 µs; throughput at concurrency 16 did not move (docs/performance.md).

A ``GRPC_EXPERIMENTS`` already in the environment is left alone: set it empty to keep
grpc's own defaults. Processes the gateway starts (runners, workers, and the programs of
external runners, validation tests and retraining) inherit it. grpc releases from 1.80
on make the EventEngine the default and will drop these switches (grpc/grpc pull request
42150): pyproject.toml keeps grpcio below 1.86 until a newer one is measured, and
tests/test_grpc_core.py fails when the grpc installed no longer knows them.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import MutableMapping

EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"


def choose(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``GRPC_EXPERIMENTS`` unless it is set; returns the value grpc will read (in
    the processes this one starts, when grpc is already imported here: said as a
    warning, since this process then runs with whatever grpc read)."""
    if "GRPC_EXPERIMENTS" not in environ and "grpc" in sys.modules:
        warnings.warn(
            "grpc was imported before the gateway or runners package: this process "
            "keeps grpc's default experiments; processes it starts get "
            f"GRPC_EXPERIMENTS={EXPERIMENTS}",
            RuntimeWarning,
            stacklevel=2,
        )
    return environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
