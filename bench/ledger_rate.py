"""How many rows per second the ledger's writer puts into SQLite.

Records 1-row answers from this (the producer's) thread, as the gateway's event loop
does, and times until the writer thread has written them all. Runs in-process: the
number measured is the writer's, not gRPC's.

``measure_grown`` does the same into a ledger that already holds many answers, once with
the request ids the gateway makes (time-ordered, gateway.ids) and once with random ones
(version-4 UUIDs, as many clients send): the ledger indexes answers by request id, and
where new ids land in that index decides what an insert costs once it outgrows the cache.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.ids import request_id
from gateway.ledger import Answer, Ledger


def _random_id() -> str:
    """A version-4 UUID (random bits, version and variant set), as ``uuid4`` makes."""
    bits = random.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62) | 0x4 << 76 | 0x2 << 62
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _answer(i: int, rid: str | None = None) -> Answer:
    return Answer(
        request_id=f"r{i}" if rid is None else rid,
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


def _rows_per_s(ledger: Ledger, answers: int, make_id: Callable[[], str]) -> float:
    before = ledger.stats.recorded_rows
    began = time.perf_counter()
    for i in range(answers):
        ledger.record(_answer(i, make_id()))
    ledger.flush(timeout=300)
    return (ledger.stats.recorded_rows - before) / (time.perf_counter() - began)


def measure_grown(held: int = 300_000, answers: int = 30_000) -> dict[str, Any]:
    """Rows/s into a ledger already holding ``held`` answers, by kind of request id."""
    out: dict[str, Any] = {"held": held, "answers": answers}
    for kind, make_id in (("time_ordered", request_id), ("random", _random_id)):
        with tempfile.TemporaryDirectory(prefix="greenroom-ledger-") as tmp:
            ledger = Ledger.for_data_dir(Path(tmp), queue_items=held + answers)
            ledger.start()
            _rows_per_s(ledger, held, make_id)
            out[f"{kind}_rows_per_s"] = round(_rows_per_s(ledger, answers, make_id), 1)
            out[f"{kind}_dropped"] = ledger.stats.dropped
            ledger.stop()
    return out
