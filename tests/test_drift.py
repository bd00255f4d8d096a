"""Drift statistics: flagged on shifted features only, quiet on stable windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.drift import MIN_WINDOW, _psi, band_of, drift, feature_drift, kind_of

NAMES = [f"f{i}" for i in range(8)]


def _sample(
    rng: np.random.Generator, rows: int, shift: dict[int, float] | None = None
) -> np.ndarray:
    data = rng.normal(size=(rows, len(NAMES)))
    for column, amount in (shift or {}).items():
        data[:, column] += amount
    return data


def test_psi_matches_its_definition() -> None:
    ref = np.array([0.5, 0.5])
    live = np.array([0.25, 0.75])
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert _psi(ref, live) == pytest.approx(expected)
    assert _psi(ref, ref) == 0.0
    assert [band_of(x) for x in (0.05, 0.15, 0.25)] == ["stable", "moderate", "major"]


def test_only_the_shifted_features_are_flagged() -> None:
    rng = np.random.default_rng(1)
    reference = _sample(rng, 2000)
    live = _sample(rng, 800, shift={2: 0.6, 5: -0.8})
    flagged = [d.feature for d in drift(NAMES, reference, live) if d.drifted]
    assert flagged == ["f2", "f5"]


def test_stable_windows_are_rarely_flagged() -> None:
    rng = np.random.default_rng(2)
    reference = _sample(rng, 2000)
    windows = 100
    noisy = sum(
        any(d.drifted for d in drift(NAMES, reference, _sample(rng, 600))) for _ in range(windows)
    )
    assert noisy <= 3, f"{noisy} of {windows} stable windows flagged"


def test_categorical_features_use_chi_square() -> None:
    rng = np.random.default_rng(3)
    reference = rng.choice(["a", "b", "c"], size=1500, p=[0.5, 0.3, 0.2]).astype(object)
    same = rng.choice(["a", "b", "c"], size=800, p=[0.5, 0.3, 0.2]).astype(object)
    moved = rng.choice(["a", "b", "c", "d"], size=800, p=[0.3, 0.3, 0.2, 0.2]).astype(object)
    assert kind_of(reference) == "categorical"
    stable = feature_drift("city", reference, same)
    shifted = feature_drift("city", reference, moved)
    assert stable.test == "chi2" and not stable.drifted
    assert shifted.drifted and shifted.p_value is not None and shifted.p_value < 1e-6
    assert kind_of(np.array([0.0, 1.0, 2.0] * 300)) == "categorical"
    assert kind_of(rng.normal(size=900)) == "numeric"


def test_small_windows_are_not_judged() -> None:
    rng = np.random.default_rng(4)
    result = feature_drift("f0", rng.normal(size=1000), rng.normal(size=MIN_WINDOW - 1) + 5)
    assert result.psi is None and not result.drifted
    assert result.note is not None and str(MIN_WINDOW) in result.note


def test_mismatched_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="equal columns"):
        drift(NAMES, np.zeros((10, 8)), np.zeros((10, 7)))
