"""Results of a benchmark run: the table, the ratios, the goals, the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ghzrun import RunStats

MB = 1e6
ECHO, FLOOR, RUNNER, GATEWAY = "echo", "two-hop-floor", "runner-direct", "gateway"
# The gateway without recording answers, and with one shadow at fraction 1.0.
NO_LEDGER, SHADOW = "gateway-no-ledger", "gateway-shadow"
# One LightGBM model served by the Python runner and by the Go runner.
LGBM_PY, LGBM_GO = "runner-lgbm-py", "runner-lgbm-go"
ONE, THOUSAND = "1-row", "1000-row"


@dataclass(frozen=True)
class Run:
    target: str
    payload: str
    concurrency: int
    stats: RunStats

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "payload": self.payload,
            "concurrency": self.concurrency,
            **self.stats.to_json(),
        }


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float | None
    goal: str = ""
    passed: bool | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "goal": self.goal or None,
            "status": _status(self),
            "note": self.note or None,
        }


@dataclass
class Results:
    meta: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    rss: dict[str, Any] = field(default_factory=dict)
    ledger_rate: dict[str, Any] = field(default_factory=dict)

    def stats(self, target: str, payload: str, concurrency: int) -> RunStats | None:
        """The run's stats, None if it was not run or had any error (no ratio from it)."""
        for run in self.runs:
            if (run.target, run.payload, run.concurrency) == (target, payload, concurrency):
                return run.stats if run.stats.ok and not run.stats.errors else None
        return None


def _status(ratio: Ratio) -> str:
    if not ratio.goal:
        return "info"
    if ratio.passed is None:
        return "N/A"
    return "PASS" if ratio.passed else "MISS"


def _divide(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _p50(results: Results, target: str, payload: str, concurrency: int = 1) -> float | None:
    stats = results.stats(target, payload, concurrency)
    return stats.p50_ms if stats else None


def _rps(results: Results, target: str, payload: str, concurrency: int = 16) -> float | None:
    stats = results.stats(target, payload, concurrency)
    return stats.rps if stats else None


def _goal(
    name: str, value: float | None, goal: str, test: Callable[[float], bool], note: str = ""
) -> Ratio:
    return Ratio(name, value, goal, None if value is None else test(value), note)


def _overhead(results: Results, payload: str) -> float | None:
    gateway, runner = _p50(results, GATEWAY, payload), _p50(results, RUNNER, payload)
    return None if gateway is None or runner is None else gateway - runner


def _overhead_ratio(results: Results) -> Ratio:
    one, thousand = _overhead(results, ONE), _overhead(results, THOUSAND)
    note = "overhead = gateway p50 - runner-direct p50, c=1"
    if one is not None and thousand is not None:
        note += f" (1-row {one:.3f} ms, 1000-row {thousand:.3f} ms)"
    value = _divide(thousand, one)
    if one is not None and thousand is not None and one <= 0:
        note += "; 1-row overhead <= 0, ratio undefined"
    return _goal("1000-row overhead / 1-row overhead", value, "<= 2.0", lambda v: v <= 2.0, note)


def _hop_cost_ratio(r: Results) -> Ratio:
    """The gateway hop against the proxy hop, each without what is behind it.

    The two-hop floor has the echo server behind it, the gateway a runner that also runs
    the model, so gateway / floor counts the model's time against the gateway.
    """
    floor, echo = _p50(r, FLOOR, ONE), _p50(r, ECHO, ONE)
    proxy_hop = None if floor is None or echo is None else floor - echo
    return Ratio(
        "hop cost (gateway - runner) / (floor - echo), 1-row c=1",
        _divide(_overhead(r, ONE), proxy_hop),
        note="p50s; the model's own time left out of both sides",
    )


def _floor_ratios(r: Results) -> list[Ratio]:
    return [
        _goal(
            "gateway p50 / two-hop floor p50, 1-row c=1",
            _divide(_p50(r, GATEWAY, ONE), _p50(r, FLOOR, ONE)),
            "<= 1.3",
            lambda v: v <= 1.3,
        ),
        Ratio(
            "gateway p50 / two-hop floor p50, 1000-row c=1",
            _divide(_p50(r, GATEWAY, THOUSAND), _p50(r, FLOOR, THOUSAND)),
        ),
        _goal(
            "gateway rps / two-hop floor rps, 1-row c=16",
            _divide(_rps(r, GATEWAY, ONE), _rps(r, FLOOR, ONE)),
            ">= 0.7",
            lambda v: v >= 0.7,
        ),
        Ratio(
            "gateway rps / two-hop floor rps, 1000-row c=16",
            _divide(_rps(r, GATEWAY, THOUSAND), _rps(r, FLOOR, THOUSAND)),
        ),
        Ratio(
            "two-hop floor p50 / echo p50, 1-row c=1",
            _divide(_p50(r, FLOOR, ONE), _p50(r, ECHO, ONE)),
        ),
        _hop_cost_ratio(r),
    ]


def _runner_ratios(r: Results) -> list[Ratio]:
    return [
        Ratio(
            "gateway p50 / runner-direct p50, 1-row c=1",
            _divide(_p50(r, GATEWAY, ONE), _p50(r, RUNNER, ONE)),
        ),
        Ratio(
            "gateway p50 / runner-direct p50, 1000-row c=1",
            _divide(_p50(r, GATEWAY, THOUSAND), _p50(r, RUNNER, THOUSAND)),
        ),
        Ratio(
            "gateway rps / runner-direct rps, 1-row c=16",
            _divide(_rps(r, GATEWAY, ONE), _rps(r, RUNNER, ONE)),
        ),
        _overhead_ratio(r),
    ]


def _rss_goal(r: Results) -> Ratio:
    gateway = r.rss.get(GATEWAY, {}).get("process_mb")
    children = r.rss.get(GATEWAY, {}).get("children_mb", {})
    note = f"runner children: {sum(children.values()):.1f} MB" if children else ""
    return _goal("gateway RSS (MB), after the run", gateway, "< 150", lambda v: v < 150, note)


def _ledger_and_shadow_ratios(r: Results) -> list[Ratio]:
    return [
        _goal(
            "gateway with one shadow at 1.0 p50 / gateway p50, 1-row c=1",
            _divide(_p50(r, SHADOW, ONE), _p50(r, GATEWAY, ONE)),
            "<= 1.2",
            lambda v: v <= 1.2,
        ),
        _goal(
            "gateway (ledger on) rps / gateway-no-ledger rps, 1-row c=16",
            _divide(_rps(r, GATEWAY, ONE), _rps(r, NO_LEDGER, ONE)),
            ">= 0.9",
            lambda v: v >= 0.9,
        ),
        Ratio(
            "gateway (ledger on) p50 / gateway-no-ledger p50, 1000-row c=1",
            _divide(_p50(r, GATEWAY, THOUSAND), _p50(r, NO_LEDGER, THOUSAND)),
        ),
        Ratio(
            "gateway-no-ledger p50 / two-hop floor p50, 1-row c=1",
            _divide(_p50(r, NO_LEDGER, ONE), _p50(r, FLOOR, ONE)),
        ),
        _goal(
            "ledger rows/s into SQLite (1-row answers, writer thread)",
            r.ledger_rate.get("rows_per_s"),
            ">= 5000",
            lambda v: v >= 5000,
            r.ledger_rate.get("note", ""),
        ),
    ]


def _foreign_runner_ratios(r: Results) -> list[Ratio]:
    return [
        Ratio(
            "Go runner p50 / Python runner p50 (LightGBM), 1-row c=1",
            _divide(_p50(r, LGBM_GO, ONE), _p50(r, LGBM_PY, ONE)),
        ),
        Ratio(
            "Go runner rps / Python runner rps (LightGBM), 1-row c=16",
            _divide(_rps(r, LGBM_GO, ONE), _rps(r, LGBM_PY, ONE)),
        ),
        Ratio(
            "Go runner rps / Python runner rps (LightGBM), 1000-row c=16",
            _divide(_rps(r, LGBM_GO, THOUSAND), _rps(r, LGBM_PY, THOUSAND)),
        ),
    ]


def ratios(results: Results) -> list[Ratio]:
    return [
        *_floor_ratios(results),
        *_runner_ratios(results),
        *_ledger_and_shadow_ratios(results),
        *_foreign_runner_ratios(results),
        _rss_goal(results),
    ]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def table(results: Results) -> str:
    header = (
        f"{'target':<14} {'payload':<9} {'c':>3} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'rps':>9} {'ok':>7} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    for run in results.runs:
        s = run.stats
        lines.append(
            f"{run.target:<14} {run.payload:<9} {run.concurrency:>3} {_fmt(s.p50_ms):>8} "
            f"{_fmt(s.p90_ms):>8} {_fmt(s.p99_ms):>8} {_fmt(s.rps, 0):>9} {s.ok:>7} "
            f"{s.errors:>6}"
        )
    lines.extend(f"{name:<14} SKIPPED: {reason}" for name, reason in results.skipped.items())
    return "\n".join(lines)


def ratio_lines(items: list[Ratio]) -> str:
    lines = []
    for item in items:
        goal = f"goal {item.goal}" if item.goal else ""
        line = f"{_status(item):<5} {item.name:<56} {_fmt(item.value):>8}  {goal}"
        lines.append(line.rstrip() + (f"  [{item.note}]" if item.note else ""))
    return "\n".join(lines)


def rss_line(results: Results) -> str:
    parts = []
    for target, rss in results.rss.items():
        children = rss["children_mb"]
        extra = f" (+ {len(children)} children {sum(children.values()):.1f} MB)" if children else ""
        parts.append(f"{target} {rss['process_mb']:.1f} MB{extra}")
    return "RSS after the run: " + ("; ".join(parts) or "-")


def write_json(results: Results, items: list[Ratio], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": results.meta,
        "runs": [run.to_json() for run in results.runs],
        "skipped": results.skipped,
        "failed": results.failed,
        "rss": results.rss,
        "ledger_rate": results.ledger_rate,
        "ratios": [item.to_json() for item in items],
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
