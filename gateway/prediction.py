"""What one call to a version with a table of rows returns (``gateway.direct`` makes the
calls; validation and backtests use them). Apart so that domain code need not import gRPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Prediction:
    """The model's answer to one call: labels (classification) or values (regression)."""

    labels: list[str] | None  # classification: one label per row
    values: npt.NDArray[np.float64] | None  # regression: one value per row
    latency_ms: float  # of the whole call


# rows x features; float64 when every feature is numeric, else object (str categoricals)
Predict = Callable[[npt.NDArray[Any]], Awaitable[Prediction]]
