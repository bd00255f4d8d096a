"""Input drift of one feature: a reference sample against a live window.

Two views per feature, because each misses what the other sees:

* **PSI** (population stability index) over the reference's deciles (numeric) or its
  categories: sum over bins of ``(live - ref) * ln(live / ref)``, bin shares floored at
  ``EPSILON`` so that an empty bin counts as rare rather than infinite. The bands are the
  industry's: below 0.1 stable, 0.1 to 0.2 moderate, 0.2 and above major. PSI says how
  much the mass moved, whatever the sample sizes.
* **A test** of "same distribution": two-sample Kolmogorov-Smirnov for numeric features,
  chi-square on the contingency table of categories for categorical ones. The p-value says
  whether the difference could be chance at these sample sizes.

A feature is flagged when PSI reaches the major band, or when its test rejects at
``alpha`` divided by the number of features (Bonferroni: with eight features checked at
0.05 each, a third of stable windows would flag something) and PSI is at least moderate,
so that a statistically certain but tiny shift in a large window is not called drift.
Windows smaller than ``MIN_WINDOW`` rows are reported as such and never flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

MIN_WINDOW = 500
EPSILON = 1e-4
PSI_MODERATE = 0.1
PSI_MAJOR = 0.2
DEFAULT_ALPHA = 0.01
# A numeric feature with at most this many distinct reference values is categorical.
MAX_CATEGORIES = 20

Kind = Literal["numeric", "categorical"]
Band = Literal["stable", "moderate", "major"]


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    feature: str
    kind: Kind
    reference_rows: int
    live_rows: int
    psi: float | None
    band: Band | None
    test: Literal["ks", "chi2"]
    statistic: float | None
    p_value: float | None
    drifted: bool
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kind_of(reference: npt.NDArray[Any]) -> Kind:
    """Strings, booleans and integer-like columns with few values are categorical."""
    if reference.dtype.kind in "OSUb":
        return "categorical"
    values = np.unique(reference)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
        if not np.all(np.mod(values, 1) == 0):
            return "numeric"
    return "categorical" if len(values) <= MAX_CATEGORIES else "numeric"


def band_of(psi: float) -> Band:
    if psi >= PSI_MAJOR:
        return "major"
    return "moderate" if psi >= PSI_MODERATE else "stable"


def _psi(ref_share: npt.NDArray[np.float64], live_share: npt.NDArray[np.float64]) -> float:
    ref = np.maximum(ref_share, EPSILON)
    live = np.maximum(live_share, EPSILON)
    return float(np.sum((live - ref) * np.log(live / ref)))


def _numeric(ref: npt.NDArray[Any], live: npt.NDArray[Any]) -> tuple[float, float, float]:
    """PSI over the reference's deciles, and the KS statistic and p-value."""
    ref = ref[np.isfinite(ref)].astype(np.float64)
    live = live[np.isfinite(live)].astype(np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)[1:-1]))
    ref_bins = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    live_bins = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1)
    psi = _psi(ref_bins / len(ref), live_bins / len(live))
    from scipy import stats  # noqa: PLC0415 (tens of MB: loaded by the first drift check)

    ks = stats.ks_2samp(ref, live)
    return psi, float(ks.statistic), float(ks.pvalue)


def _categorical(ref: npt.NDArray[Any], live: npt.NDArray[Any]) -> tuple[float, float, float]:
    """PSI over the categories of both samples, and the chi-square test of their counts."""
    ref_s = np.asarray([str(v) for v in ref.ravel()])
    live_s = np.asarray([str(v) for v in live.ravel()])
    categories = np.union1d(ref_s, live_s)
    ref_counts = np.array([np.sum(ref_s == c) for c in categories], dtype=np.float64)
    live_counts = np.array([np.sum(live_s == c) for c in categories], dtype=np.float64)
    psi = _psi(ref_counts / ref_counts.sum(), live_counts / live_counts.sum())
    if len(categories) < 2:
        return psi, 0.0, 1.0
    from scipy import stats  # noqa: PLC0415 (tens of MB: loaded by the first drift check)

    chi2 = stats.chi2_contingency(np.vstack([ref_counts, live_counts]))
    return psi, float(chi2.statistic), float(chi2.pvalue)


def feature_drift(
    name: str,
    reference: npt.NDArray[Any],
    live: npt.NDArray[Any],
    *,
    features: int = 1,
    alpha: float = DEFAULT_ALPHA,
    kind: Kind | None = None,
) -> FeatureDrift:
    """Drift of one feature; ``features`` is how many are checked together (Bonferroni)."""
    kind = kind or kind_of(reference)
    test: Literal["ks", "chi2"] = "ks" if kind == "numeric" else "chi2"
    n_ref, n_live = len(reference), len(live)
    if len(live) < MIN_WINDOW or len(reference) < MIN_WINDOW:
        note = f"needs at least {MIN_WINDOW} rows on each side"
        return FeatureDrift(name, kind, n_ref, n_live, psi=None, band=None, test=test,
                            statistic=None, p_value=None, drifted=False, note=note)  # fmt: skip
    measure = _numeric if kind == "numeric" else _categorical
    psi, statistic, p_value = measure(reference, live)
    band = band_of(psi)
    significant = p_value < alpha / max(features, 1)
    drifted = band == "major" or (significant and band == "moderate")
    return FeatureDrift(name, kind, n_ref, n_live, psi=psi, band=band, test=test,
                        statistic=statistic, p_value=p_value, drifted=drifted)  # fmt: skip


def drift(
    names: Sequence[str],
    reference: npt.NDArray[Any],
    live: npt.NDArray[Any],
    *,
    alpha: float = DEFAULT_ALPHA,
) -> list[FeatureDrift]:
    """Per column of two 2-D samples (rows x features) with the same columns."""
    if reference.ndim != 2 or live.ndim != 2 or reference.shape[1] != live.shape[1]:
        raise ValueError(
            f"reference {reference.shape} and live {live.shape} must be 2-D with equal columns"
        )
    if len(names) != reference.shape[1]:
        raise ValueError(f"{len(names)} names for {reference.shape[1]} columns")
    count = len(names)
    return [
        feature_drift(name, reference[:, i], live[:, i], features=count, alpha=alpha)
        for i, name in enumerate(names)
    ]
