"""The forest's model call alone: scikit-learn's ``predict`` and ``predict_proba`` (as the
runner with ``runner.lean: false`` calls them) against the numpy kernels the default
runner serves the same model.joblib with (runners.tree_kernels, through the real plan
helper and its proof on probes), at 1, 32, 256 and 1,000 rows. In one process, the two
timed in alternating rounds; the number is the median call of each. Shows where the
kernels stop paying: they walk every tree with numpy gathers, scikit-learn with compiled
loops behind a fixed per-call cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runners.config import ModelConfig
from runners.model import Model
from runners.sklearn_lean import build, request_plan
from runners.sklearn_model import SklearnModel

from payloads import FOREST_NAME, MODEL_VERSION, N_FEATURES

ROWS = (1, 32, 256, 1000)
ROUNDS = 5
ROUND_S = 0.2


def _median_us(call: Callable[[], Any], seconds: float) -> float:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def _answer(model: Model, rows: np.ndarray) -> Callable[[], Any]:
    return lambda: model.predict({"input": rows.copy()}, ["label", "probabilities"])


def measure(repo: Path) -> dict[str, Any]:
    """``repo``: the forest's repository with ``runner.lean: false`` (bench/payloads.py)."""
    artifact = repo / FOREST_NAME / MODEL_VERSION / "model.joblib"
    config = ModelConfig()
    plan, why = request_plan(artifact, config)
    lean = None if plan is None else build(plan, FOREST_NAME, MODEL_VERSION)
    if lean is None:
        return {"note": f"no numpy kernels for the forest: {why or 'they differ on probes'}"}
    sklearn = SklearnModel.load(artifact, FOREST_NAME, MODEL_VERSION, config)
    result: dict[str, Any] = {}
    for n in ROWS:
        rows = np.random.default_rng(n).standard_normal((n, N_FEATURES), dtype=np.float32)
        ours, theirs = _answer(lean, rows), _answer(sklearn, rows)
        a, b = theirs(), ours()
        same = all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
        timed: dict[str, list[float]] = {"sklearn_us": [], "kernels_us": []}
        for _ in range(ROUNDS):
            timed["sklearn_us"].append(_median_us(theirs, ROUND_S))
            timed["kernels_us"].append(_median_us(ours, ROUND_S))
        us = {key: round(statistics.median(values), 1) for key, values in timed.items()}
        result[str(n)] = {**us, "same_answers": same}
    return result
