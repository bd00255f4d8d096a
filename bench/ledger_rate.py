"""How many rows per second the ledger's writer puts into SQLite.

Records 1-row answers from this (the producer's) thread, as the gateway's event loop
does, and times until the writer thread has written them all. Runs in-process: the
number measured is the writer's, not gRPC's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.ledger import Answer, Ledger


def _answer(i: int) -> Answer:
    return Answer(
        request_id=f"r{i}",
        model="bench",
        version="1",
        role="primary",
        rows=1,
        labels=(str(i % 2),),
        values=None,
        probabilities=np.array([[0.3, 0.7]]),
        classes=("0", "1"),
        latency_ms=1.0,
        status="OK",
        created_at=time.time(),
    )


def measure(answers: int = 50_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="greenroom-ledger-") as tmp:
        ledger = Ledger.for_data_dir(Path(tmp), queue_items=answers)
        ledger.start()
        began = time.perf_counter()
        for i in range(answers):
            ledger.record(_answer(i))
        ledger.flush(timeout=120)
        elapsed = time.perf_counter() - began
        stats = ledger.stats
        ledger.stop()
    return {
        "answers": answers,
        "rows_written": stats.recorded_rows,
        "dropped": stats.dropped,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(stats.recorded_rows / elapsed, 1),
        "note": f"{stats.recorded_rows} of {answers} rows in {elapsed:.2f} s",
    }
