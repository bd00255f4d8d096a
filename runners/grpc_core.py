"""The gRPC core experiments Greenroom's servers run with, chosen before grpc is imported.

grpc's C core reads ``GRPC_EXPERIMENTS`` once, when the ``grpc`` module is first imported,
so the choice is made by the packages' ``__init__`` (``runners``, and ``gateway``
through it), before any of their modules imports grpc.

By default grpc 1.85 serves a connection with its EventEngine: an engine thread reads the
socket and completes the operation, and grpc.aio's poller thread takes the completion
and wakes the event loop. With iomgr's listener and endpoints (the two experiments
turned off below) the poller thread reads and writes the socket itself: one hand-off
between threads fewer for every event of every call. On two shared cores that hand-off
costs more than the work: the gateway's in-process lane at concurrency 1 went from
1.28 to 1.16 times the echo floor's p50 (median of eight interleaved rounds, the floor
given the same setting), its CPU per request 485-551 -> 399-433 µs; throughput at
concurrency 16 did not move (docs/performance.md).

A ``GRPC_EXPERIMENTS`` already in the environment is left alone: set it empty to keep
grpc's own defaults. Processes the gateway starts (runners, workers) inherit it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"


def choose(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``GRPC_EXPERIMENTS`` unless it is set; returns the value grpc will read."""
    return environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
