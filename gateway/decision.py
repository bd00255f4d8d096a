"""Whether a candidate version should replace the primary, on paired evidence.

A *pair* is one request row that both versions answered and whose truth is known, so the
two versions are compared on exactly the same inputs and everything the inputs share
cancels out. Only pairs where the versions disagree carry information about which is
better: ``b`` = primary right and candidate wrong, ``c`` = candidate right and primary
wrong. If the versions are equally good, each discordant pair is a fair coin.

Classification, one look (``Policy.sequential`` False): one-sided exact McNemar test,
``p = P(X >= c)`` for ``X ~ Binomial(b + c, 1/2)``, computed from exact integer binomial
coefficients (Python integers; the float is the exact ratio correctly rounded).
Promote if ``p < alpha``; reject if the mirror test (candidate worse) gives ``p < alpha``.

Classification, repeated looks (``Policy.sequential`` True): a fixed-n p-value checked
again and again will eventually dip below alpha by chance, so the gateway's scheduled
policy uses a mixture sequential probability ratio test (mSPRT) instead. Against
``p = 1/2`` (p = the chance a discordant pair favours the candidate), mix the likelihood
ratio over a uniform prior on ``p`` in ``[1/2, 1]``::

    LR+ = 2 * integral_{1/2}^{1} (2p)^c (2(1-p))^b dp
        = sum_{k=0}^{c} C(n+1, k) / ((n+1) * C(n, c))        n = b + c

(the second line is the Beta integral written with the binomial identity
``I_x(a, b) = P(Binomial(a+b-1, x) >= a)``; it is an exact ratio of integers). Each
``(2p)^c (2(1-p))^b`` with ``p >= 1/2`` is a non-negative supermartingale with start 1
whenever, given the past, a pair is no more likely to favour the candidate than the
primary (concordant pairs multiply it by 1), and so is any fixed mixture of them. Ville's
inequality then gives ``P(LR+ ever reaches 1/alpha) <= alpha``: promoting the first time
``LR+ >= 1/alpha`` is valid however often and whenever we look. ``min(1, 1/LR+)`` is the
matching always-valid p-value. Rejection uses the mirror statistic ``LR-`` (c and b
swapped), with the same guarantee for a candidate that is not worse. The guarantee holds
for the cumulative stream of pairs since the comparison began: feed it all pairs so far,
not a sliding window (dropping old pairs would restart the martingale at every look).

Regression, one look: paired percentile bootstrap of ``mean(candidate_error -
primary_error)`` (absolute errors). The ``alpha`` and ``1 - alpha`` quantiles are the
one-sided ``(1 - alpha)`` lower and upper confidence bounds (together a ``1 - 2 alpha``
interval). Promote if the upper bound is below 0, reject if the lower bound is above 0.
The bootstrap is approximate (valid as the number of pairs grows) and seeded, so the same
pairs give the same decision.

Regression, repeated looks: a sign test in the same mSPRT, counting pairs where the
candidate's error is strictly smaller (c) or strictly larger (b), ties dropped. It asks
"is the candidate closer more often?", not "is its mean error smaller?", but it is exactly
valid at any stopping time and needs no distributional assumption.

Guardrails (candidate call failure rate, candidate p99 over primary p99) reject on their
own; a minimum number of pairs gates both promotion and statistical rejection. Domain code
only: no gRPC, no database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from gateway.evaluation import Scored, Task, VersionMetrics, abs_error, is_correct

Outcome = Literal["promote", "hold", "reject"]
_T = TypeVar("_T")

#: The largest e-value reported; beyond it the evidence is overwhelming anyway and the
#: number stays a finite JSON float.
MAX_E_VALUE = 1e300

#: Bootstrap resamples are drawn in blocks of at most this many indices to bound memory.
_BOOTSTRAP_BLOCK = 4_000_000


@dataclass(frozen=True, slots=True)
class Pair:
    """One labelled request row answered by both versions (classification)."""

    primary_correct: bool
    candidate_correct: bool


@dataclass(frozen=True, slots=True)
class ErrorPair:
    """One labelled request row answered by both versions: absolute errors (regression)."""

    primary_error: float
    candidate_error: float


def pair_of(primary: Scored, candidate: Scored, task: Task) -> Pair | ErrorPair | None:
    """The pair two ledger rows of one request row make, or None unless both are labelled."""
    if not (primary.labelled and candidate.labelled):
        return None
    if task == "classification":
        return Pair(bool(is_correct(primary)), bool(is_correct(candidate)))
    return ErrorPair(abs_error(primary) or 0.0, abs_error(candidate) or 0.0)


@dataclass(frozen=True, slots=True)
class PairCounts:
    """Classification pairs summed up: all a McNemar test (and the accuracies) need."""

    pairs: int
    both_correct: int
    primary_only: int
    candidate_only: int

    def __post_init__(self) -> None:
        parts = (self.both_correct, self.primary_only, self.candidate_only)
        if min(parts) < 0 or sum(parts) > self.pairs:
            raise ValueError(f"inconsistent pair counts: {self}")

    @classmethod
    def of(cls, pairs: Iterable[Pair]) -> PairCounts:
        n = both = primary_only = candidate_only = 0
        for pair in pairs:
            n += 1
            both += pair.primary_correct and pair.candidate_correct
            primary_only += pair.primary_correct and not pair.candidate_correct
            candidate_only += pair.candidate_correct and not pair.primary_correct
        return cls(n, both, primary_only, candidate_only)


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Operational facts about the window: candidate failure rate and both p99 latencies."""

    candidate_error_rate: float | None = None
    candidate_p99_ms: float | None = None
    primary_p99_ms: float | None = None

    @classmethod
    def from_metrics(cls, primary: VersionMetrics, candidate: VersionMetrics) -> Guardrails:
        return cls(candidate.error_rate, candidate.latency_p99_ms, primary.latency_p99_ms)


@dataclass(frozen=True, slots=True)
class Policy:
    """When to promote. ``max_p99_ratio=None`` turns the latency guardrail off."""

    min_pairs: int = 200
    alpha: float = 0.05
    max_error_rate: float = 0.01
    max_p99_ratio: float | None = 1.5
    sequential: bool = False
    bootstrap_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha}")
        if self.min_pairs < 0 or self.bootstrap_samples < 1:
            raise ValueError("min_pairs must be >= 0 and bootstrap_samples >= 1")
        if self.max_p99_ratio is not None and self.max_p99_ratio <= 0:
            raise ValueError(f"max_p99_ratio must be positive, not {self.max_p99_ratio}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome with its evidence.

    ``p_value`` is the one-sided p for "candidate better" (exact McNemar; always-valid
    ``min(1, 1/e_value)`` when sequential; None for the regression bootstrap, whose
    evidence is ``interval``), ``reverse_p_value`` the same for "candidate worse".
    ``e_value`` is the mixture likelihood ratio LR+ (sequential only). ``interval`` holds
    the one-sided (1 - alpha) lower and upper bounds of mean(candidate - primary error).
    For regression, ``discordant`` counts pairs where one version is strictly closer.
    """

    decision: Outcome
    task: Task
    test: str
    pairs: int
    discordant: dict[str, int]
    reasons: tuple[str, ...]
    primary_accuracy: float | None = None
    candidate_accuracy: float | None = None
    primary_mae: float | None = None
    candidate_mae: float | None = None
    p_value: float | None = None
    reverse_p_value: float | None = None
    e_value: float | None = None
    interval: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "decision": self.decision,
            "task": self.task,
            "test": self.test,
            "pairs": self.pairs,
            "primary_accuracy": self.primary_accuracy,
            "candidate_accuracy": self.candidate_accuracy,
            "primary_mae": self.primary_mae,
            "candidate_mae": self.candidate_mae,
            "discordant": dict(self.discordant),
            "p_value": self.p_value,
            "reverse_p_value": self.reverse_p_value,
            "e_value": self.e_value,
            "interval": None if self.interval is None else list(self.interval),
            "reasons": list(self.reasons),
        }


# --- exact binomial arithmetic -------------------------------------------------------------


def _head(n: int, m: int) -> tuple[int, int]:
    """(sum_{j=0}^{m} C(n, j), C(n, m)) exactly, in m big-integer steps."""
    total, term = 0, 1
    for j in range(m):
        total += term
        term = term * (n - j) // (j + 1)
    return total + term, term


@lru_cache(maxsize=4096)
def mcnemar_p_values(candidate_only: int, primary_only: int) -> tuple[float, float]:
    """One-sided exact McNemar p-values: (candidate better, candidate worse).

    With n = b + c and X ~ Binomial(n, 1/2): P(X >= c) = P(X <= b) and P(X >= b) =
    P(X <= c). One exact integer sum over the shorter side (at most n/2 steps, ~0.7 s of
    CPU at n = 100,000) gives both, by the symmetry C(n, j) = C(n, n - j). Python divides
    big integers exactly and rounds once, so each p is the exact value correctly rounded;
    a tail below the smallest double (~1e-308, e.g. 30,000 of 50,000) rounds to 0.0.
    """
    c, b = candidate_only, primary_only
    n, low = b + c, min(b, c)
    low_sum, low_term = _head(n, low)
    high_sum = (1 << n) - low_sum + low_term  # sum_{j <= n - low} C(n, j)
    head_b, head_c = (low_sum, high_sum) if b <= c else (high_sum, low_sum)
    return head_b / (1 << n), head_c / (1 << n)


@lru_cache(maxsize=4096)
def mixture_log_lrs(candidate_only: int, primary_only: int) -> tuple[float, float]:
    """(ln LR+, ln LR-): the one-sided mixture likelihood ratios of the module docstring.

    LR+ = sum_{k<=c} C(n+1, k) / ((n+1) C(n, c)) and LR- the same with b for c. The two
    numerators add up to 2^(n+1) (b + c = n), so one exact sum over the shorter side gives
    both; Python takes logarithms of big integers without overflow.
    """
    c, b = candidate_only, primary_only
    big, low = b + c + 1, min(b, c)
    low_sum, low_term = _head(big, low)
    high_sum = (1 << big) - low_sum  # sum_{k <= max(b, c)} C(n+1, k)
    denominator = math.log(low_term * (big - low))  # (n+1) C(n, c) = C(n+1, low) (n+1-low)
    head_c, head_b = (low_sum, high_sum) if c <= b else (high_sum, low_sum)
    return math.log(head_c) - denominator, math.log(head_b) - denominator


def mcnemar_p(candidate_only: int, primary_only: int) -> float:
    """One-sided exact McNemar p for "candidate better": P(X >= c), X ~ Bin(b + c, 1/2)."""
    return mcnemar_p_values(candidate_only, primary_only)[0]


def mixture_log_lr(candidate_only: int, primary_only: int) -> float:
    """ln LR+: the evidence that the candidate is better, from the mixture SPRT."""
    return mixture_log_lrs(candidate_only, primary_only)[0]


def e_values(candidate_only: int, primary_only: int) -> tuple[float, float]:
    """(LR+, LR-) as floats, each capped at ``MAX_E_VALUE``."""
    up, down = mixture_log_lrs(candidate_only, primary_only)
    return _capped_exp(up), _capped_exp(down)


def _capped_exp(log_value: float) -> float:
    return MAX_E_VALUE if log_value >= math.log(MAX_E_VALUE) else math.exp(log_value)


# --- the tests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Evidence:
    """What a test concluded: candidate better, worse, or neither; with one sentence."""

    better: bool
    worse: bool
    test: str
    reason: str
    p_value: float | None = None
    reverse_p_value: float | None = None
    e_value: float | None = None
    interval: tuple[float, float] | None = None


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _direction(c: int, b: int, what: str, unit: str) -> str:
    n = b + c
    if c > b:
        return f"candidate {what} on {c} of {n} {unit}"
    if b > c:
        return f"primary {what} on {b} of {n} {unit}"
    return f"neither version {what} more often ({c} and {b} of {n} {unit})"


def _worse(b: int, c: int) -> str:
    return ", candidate worse" if b > c else ""


def _mcnemar(c: int, b: int, alpha: float) -> _Evidence:
    """Fixed-n one-sided exact McNemar tests in both directions."""
    p, reverse = mcnemar_p_values(c, b)
    shown = reverse if b > c else p
    sign = "<" if shown < alpha else ">="
    reason = (
        f"{_direction(c, b, 'better', 'discordant pairs')} (one-sided exact McNemar "
        f"p = {_fmt(shown)} {sign} {alpha:g}{_worse(b, c)})"
    )
    return _Evidence(p < alpha, reverse < alpha, "exact McNemar (one-sided)", reason, p, reverse)


def _msprt(c: int, b: int, alpha: float, test: str, *, what: str, unit: str) -> _Evidence:
    """Mixture SPRT in both directions; valid at any stopping time (Ville's inequality)."""
    up, down = e_values(c, b)
    shown = down if b > c else up
    sign = ">=" if shown >= 1 / alpha else "<"
    reason = (
        f"{_direction(c, b, what, unit)} (mixture SPRT likelihood ratio {_fmt(shown)} "
        f"{sign} {_fmt(1 / alpha)} = 1/alpha{_worse(b, c)}; "
        f"always-valid p = {_fmt(min(1.0, 1 / shown))})"
    )
    return _Evidence(
        up >= 1 / alpha,
        down >= 1 / alpha,
        test,
        reason,
        p_value=min(1.0, 1 / up),
        reverse_p_value=min(1.0, 1 / down),
        e_value=up,
    )


def bootstrap_bounds(
    differences: npt.NDArray[np.float64], alpha: float, samples: int, seed: int
) -> tuple[float, float]:
    """The alpha and 1 - alpha percentile-bootstrap quantiles of the mean difference.

    Each is a one-sided (1 - alpha) confidence bound. Pairs are resampled whole, so the
    dependence between the two versions' errors on the same row is kept.
    """
    rng = np.random.default_rng(seed)
    n = differences.size
    means = np.empty(samples, dtype=np.float64)
    block = max(1, _BOOTSTRAP_BLOCK // n)
    for start in range(0, samples, block):
        stop = min(samples, start + block)
        rows = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = differences[rows].mean(axis=1)
    lower, upper = np.quantile(means, [alpha, 1 - alpha])
    return float(lower), float(upper)


def _bootstrap(differences: npt.NDArray[np.float64], policy: Policy) -> _Evidence:
    test = "paired bootstrap of the mean absolute error difference"
    if differences.size == 0:
        return _Evidence(False, False, test, "no pairs to resample")
    lower, upper = bootstrap_bounds(
        differences, policy.alpha, policy.bootstrap_samples, policy.seed
    )
    level = f"{100 * (1 - policy.alpha):g}%"
    reason = (
        f"candidate's mean absolute error minus the primary's is "
        f"{_fmt(float(differences.mean()))} (one-sided {level} bounds: lower {_fmt(lower)}, "
        f"upper {_fmt(upper)}; paired bootstrap, {policy.bootstrap_samples} resamples)"
    )
    return _Evidence(upper < 0, lower > 0, test, reason, interval=(lower, upper))


# --- guardrails and the outcome ------------------------------------------------------------


def _guardrails(guardrails: Guardrails, policy: Policy) -> tuple[bool, list[str]]:
    """(any guardrail failed, one sentence per guardrail)."""
    failed, notes = False, []
    rate = guardrails.candidate_error_rate
    if rate is not None:
        bad = rate > policy.max_error_rate
        failed |= bad
        verb = "exceeds" if bad else "is within"
        notes.append(
            f"candidate error rate {rate:.2%} {verb} the limit {policy.max_error_rate:.2%}"
        )
    if policy.max_p99_ratio is not None:
        bad, note = _latency(guardrails, policy.max_p99_ratio)
        failed |= bad
        notes.append(note)
    return failed, notes


def _latency(guardrails: Guardrails, limit: float) -> tuple[bool, str]:
    candidate, primary = guardrails.candidate_p99_ms, guardrails.primary_p99_ms
    if candidate is None or primary is None or primary <= 0:
        return False, "latency guardrail not checked: a p99 latency is unknown"
    ratio = candidate / primary
    return ratio > limit, (
        f"candidate p99 {candidate:.1f} ms is {ratio:.2f}x the primary's {primary:.1f} ms "
        f"(limit {limit:g}x)"
    )


def _conclude(
    pairs: int, evidence: _Evidence, guardrails: Guardrails, policy: Policy
) -> tuple[Outcome, tuple[str, ...]]:
    failed, notes = _guardrails(guardrails, policy)
    reasons = [evidence.reason, *notes]
    outcome: Outcome
    if pairs < policy.min_pairs:
        reasons.insert(0, f"only {pairs} labelled pairs; at least {policy.min_pairs} needed")
    if failed:
        outcome = "reject"
    elif pairs < policy.min_pairs:
        outcome = "hold"
    elif evidence.better:
        outcome = "promote"
    else:
        outcome = "reject" if evidence.worse else "hold"
    return outcome, tuple(reasons)


def decide_classification(
    counts: PairCounts | Iterable[Pair],
    guardrails: Guardrails | None = None,
    policy: Policy | None = None,
) -> Decision:
    """Promote, hold or reject a classifier from its discordant pairs (see module doc)."""
    policy = policy or Policy()
    if not isinstance(counts, PairCounts):
        counts = PairCounts.of(counts)
    c, b = counts.candidate_only, counts.primary_only
    evidence = (
        _msprt(c, b, policy.alpha, "mixture SPRT", what="better", unit="discordant pairs")
        if policy.sequential
        else _mcnemar(c, b, policy.alpha)
    )
    outcome, reasons = _conclude(counts.pairs, evidence, guardrails or Guardrails(), policy)
    n = counts.pairs
    return Decision(
        decision=outcome,
        task="classification",
        test=evidence.test,
        pairs=n,
        discordant={"primary_only": b, "candidate_only": c},
        reasons=reasons,
        primary_accuracy=(counts.both_correct + b) / n if n else None,
        candidate_accuracy=(counts.both_correct + c) / n if n else None,
        p_value=evidence.p_value,
        reverse_p_value=evidence.reverse_p_value,
        e_value=evidence.e_value,
    )


def decide_regression(
    pairs: Sequence[ErrorPair],
    guardrails: Guardrails | None = None,
    policy: Policy | None = None,
) -> Decision:
    """Promote, hold or reject a regressor from paired absolute errors (see module doc)."""
    policy = policy or Policy()
    primary = np.array([p.primary_error for p in pairs], dtype=np.float64)
    candidate = np.array([p.candidate_error for p in pairs], dtype=np.float64)
    c, b = int(np.sum(candidate < primary)), int(np.sum(candidate > primary))
    evidence = (
        _msprt(c, b, policy.alpha, "mixture SPRT sign test", what="closer", unit="pairs")
        if policy.sequential
        else _bootstrap(candidate - primary, policy)
    )
    outcome, reasons = _conclude(len(pairs), evidence, guardrails or Guardrails(), policy)
    return Decision(
        decision=outcome,
        task="regression",
        test=evidence.test,
        pairs=len(pairs),
        discordant={"primary_only": b, "candidate_only": c},
        reasons=reasons,
        primary_mae=float(primary.mean()) if pairs else None,
        candidate_mae=float(candidate.mean()) if pairs else None,
        p_value=evidence.p_value,
        reverse_p_value=evidence.reverse_p_value,
        e_value=evidence.e_value,
        interval=evidence.interval,
    )


def decide(
    task: Task,
    pairs: Sequence[Pair] | Sequence[ErrorPair] | PairCounts,
    guardrails: Guardrails | None = None,
    policy: Policy | None = None,
) -> Decision:
    """The decision for ``task``; pairs must be ``Pair`` (classification) or ``ErrorPair``."""
    if task == "classification":
        if isinstance(pairs, PairCounts):
            return decide_classification(pairs, guardrails, policy)
        return decide_classification(_all(pairs, Pair), guardrails, policy)
    if task == "regression" and not isinstance(pairs, PairCounts):
        return decide_regression(_all(pairs, ErrorPair), guardrails, policy)
    raise ValueError(f"no promotion test for task {task!r} with {type(pairs).__name__}")


def _all(items: Sequence[object], kind: type[_T]) -> list[_T]:
    checked = [item for item in items if isinstance(item, kind)]
    if len(checked) != len(items):
        raise ValueError(f"every pair must be of type {kind.__name__}")
    return checked
