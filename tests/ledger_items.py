"""Items for the ledger's writer process to convert: the process imports this module by
name, so it stays small (no pytest, no fixtures)."""

from __future__ import annotations

import os
import time

from gateway.ledger import Answer


def convert(item: tuple[str, int]) -> Answer | None:
    """``(request_id, rows)`` as an answer of model ``pid<writer's pid>`` (0 rows: skip;
    ``slow`` sleeps first, so that a test can kill the writer in the middle of it)."""
    request_id, rows = item
    if rows == 0:
        return None
    if request_id == "slow":
        time.sleep(60)
    return Answer(
        request_id=request_id, model=f"pid{os.getpid()}", version="v1", role="primary",
        rows=rows, labels=("setosa",) * rows, values=None, probabilities=None, classes=None,
        latency_ms=1.0, status="OK", created_at=time.time(),
    )  # fmt: skip
