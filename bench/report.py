"""Results of a benchmark run: the table, the ratios, the goals, the JSON file.

Each ratio says which issue's goal (or measure) it is: issue 2 (core), 3 (shadows and
ledger), 4 (polyglot) and 5 (performance). Issue 5 tightens some of issue 2's and 3's
goals; both are kept, one line each, on the same value.
"""

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
# The gateway reaching its runner over gRPC, as before the framed socket (runners.framed).
GRPC_HOP = "gateway-grpc-hop"
# One LightGBM model served by the Python runner and by the Go runner.
LGBM_PY, LGBM_GO = "runner-lgbm-py", "runner-lgbm-go"
# A 100-tree random forest, Python runner running scikit-learn: dynamic batching by
# default, with a queue delay (bench/payloads.py FOREST_QUEUE_DELAY_US), and off; and the
# default runner, which serves it with numpy kernels (runners.tree_kernels).
FOREST_ON, FOREST_QUEUED, FOREST_OFF = "runner-rf-batch", "runner-rf-queued", "runner-rf-nobatch"
FOREST_LEAN = "runner-rf-lean"
# The peer (`make bench-peers`): MLServer on the same joblib model.
MLSERVER = "mlserver"
# The in-process lane (issue 5, Build item 5): the gateway running the model itself.
INPROCESS = "inprocess"
ONE, THOUSAND = "1-row", "1000-row"
# The random forest's scenario: 1 row at this concurrency.
FOREST_CONCURRENCY = 32


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
    issue: int
    name: str
    value: float | None
    goal: str = ""
    passed: bool | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "issue": self.issue,
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
    # bench/tree_speed.py: rows -> the forest's model call, scikit-learn and numpy kernels
    tree_speed: dict[str, Any] = field(default_factory=dict)
    # target -> "payload c=N" -> its own RSS (MB) right after that scenario
    rss_after: dict[str, dict[str, float]] = field(default_factory=dict)
    # bench/memory.py: a gateway with four models, its RSS and each runner's
    memory: dict[str, Any] = field(default_factory=dict)
    # target -> payload -> its answer's outputs ("name DATATYPE [shape]"), one call each
    answers: dict[str, dict[str, str]] = field(default_factory=dict)

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


def _p99(results: Results, target: str, payload: str, concurrency: int) -> float | None:
    stats = results.stats(target, payload, concurrency)
    return stats.p99_ms if stats else None


Goal = tuple[str, Callable[[float], bool]]  # as printed, and the test


def _goal(issue: int, name: str, value: float | None, goal: Goal, note: str = "") -> Ratio:
    text, test = goal
    return Ratio(issue, name, value, text, None if value is None else test(value), note)


def _at_most(limit: float) -> Goal:
    return f"<= {limit:g}", lambda v: v <= limit


def _at_least(limit: float) -> Goal:
    return f">= {limit:g}", lambda v: v >= limit


def _below(limit: float) -> Goal:
    return f"< {limit:g}", lambda v: v < limit


def _overhead(results: Results, payload: str) -> float | None:
    gateway, runner = _p50(results, GATEWAY, payload), _p50(results, RUNNER, payload)
    return None if gateway is None or runner is None else gateway - runner


def _overhead_ratio(results: Results, issue: int, limit: float) -> Ratio:
    one, thousand = _overhead(results, ONE), _overhead(results, THOUSAND)
    note = "overhead = gateway p50 - runner-direct p50, c=1"
    if one is not None and thousand is not None:
        note += f" (1-row {one:.3f} ms, 1000-row {thousand:.3f} ms)"
    value = _divide(thousand, one)
    if one is not None and thousand is not None and one <= 0:
        note += "; 1-row overhead <= 0, ratio undefined"
    return _goal(issue, "1000-row overhead / 1-row overhead", value, _at_most(limit), note)


def _hop_cost_ratio(r: Results) -> Ratio:
    """The gateway hop against the proxy hop, each without what is behind it.

    The two-hop floor has the echo server behind it, the gateway a runner that also runs
    the model, so gateway / floor counts the model's time against the gateway.
    """
    floor, echo = _p50(r, FLOOR, ONE), _p50(r, ECHO, ONE)
    proxy_hop = None if floor is None or echo is None else floor - echo
    return Ratio(
        2,
        "hop cost (gateway - runner) / (floor - echo), 1-row c=1",
        _divide(_overhead(r, ONE), proxy_hop),
        note="p50s; the model's own time left out of both sides",
    )


def _floor_ratios(r: Results) -> list[Ratio]:
    """Issue 2: the gateway against the plain grpc.aio floors."""
    return [
        _goal(
            2,
            "gateway p50 / two-hop floor p50, 1-row c=1",
            _divide(_p50(r, GATEWAY, ONE), _p50(r, FLOOR, ONE)),
            _at_most(1.3),
        ),
        Ratio(
            2,
            "gateway p50 / two-hop floor p50, 1000-row c=1",
            _divide(_p50(r, GATEWAY, THOUSAND), _p50(r, FLOOR, THOUSAND)),
        ),
        _goal(
            2,
            "gateway rps / two-hop floor rps, 1-row c=16",
            _divide(_rps(r, GATEWAY, ONE), _rps(r, FLOOR, ONE)),
            _at_least(0.7),
        ),
        Ratio(
            2,
            "gateway rps / two-hop floor rps, 1000-row c=16",
            _divide(_rps(r, GATEWAY, THOUSAND), _rps(r, FLOOR, THOUSAND)),
        ),
        Ratio(
            2,
            "two-hop floor p50 / echo p50, 1-row c=1",
            _divide(_p50(r, FLOOR, ONE), _p50(r, ECHO, ONE)),
        ),
        _hop_cost_ratio(r),
    ]


def _runner_ratios(r: Results) -> list[Ratio]:
    """Issue 2: the gateway against the runner behind it, called directly."""
    return [
        Ratio(
            2,
            "gateway p50 / runner-direct p50, 1-row c=1",
            _divide(_p50(r, GATEWAY, ONE), _p50(r, RUNNER, ONE)),
        ),
        Ratio(
            2,
            "gateway p50 / runner-direct p50, 1000-row c=1",
            _divide(_p50(r, GATEWAY, THOUSAND), _p50(r, RUNNER, THOUSAND)),
        ),
        Ratio(
            2,
            "gateway rps / runner-direct rps, 1-row c=16",
            _divide(_rps(r, GATEWAY, ONE), _rps(r, RUNNER, ONE)),
        ),
        _overhead_ratio(r, 2, 2.0),
    ]


def _rss_goal(r: Results) -> list[Ratio]:
    """Issue 2's load is single rows at c=1 and c=16; the heavier scenarios come later."""
    after = r.rss_after.get(GATEWAY, {})
    at_c16 = after.get(f"{ONE} c=16")
    children = r.rss.get(GATEWAY, {}).get("children_mb", {})
    note = (
        f"its child processes (runner, ledger writer): "
        f"{' + '.join(f'{mb:.1f}' for mb in children.values())} MB"
        if children
        else ""
    )
    steps = ", ".join(f"{where} {mb:.0f}" for where, mb in after.items())
    return [
        _goal(2, "gateway RSS (MB), after the 1-row c=1 and c=16 runs", at_c16, _below(150), note),
        Ratio(2, "gateway RSS (MB), after the whole run", r.rss.get(GATEWAY, {}).get("process_mb"),
              note=f"after each scenario: {steps}" if steps else ""),
    ]  # fmt: skip


def _memory_goals(r: Results) -> list[Ratio]:
    """Issue 5: the gateway with four models, and each runner above its model's size."""
    gateway = r.memory.get("gateway", {}).get("rss_mb")
    goals = [_goal(5, "gateway RSS (MB), four models loaded", gateway, _below(150))]
    writer = r.memory.get("ledger_writer") or {}
    if writer:
        note = "the gateway's child that converts and writes answers (ledger_writer: process)"
        goals.append(Ratio(5, "ledger writer process: RSS (MB)", writer["rss_mb"], note=note))
        goals.append(Ratio(5, "ledger writer process: USS (MB)", writer["uss_mb"]))
    for name, usage in sorted(r.memory.get("runners", {}).items()):
        note = f"model file {usage['model_mb']} MB"
        if "scikit_learn_loaded" in usage:
            with_sklearn = usage["scikit_learn_loaded"]
            note += "; scikit-learn imported" if with_sklearn else "; without scikit-learn"
        rss, uss = usage["rss_above_model_mb"], usage["uss_above_model_mb"]
        shared = "memory only this runner holds; shared libraries counted once"
        goals.append(_goal(5, f"runner {name}: RSS above its model (MB)", rss, _below(100), note))
        goals.append(Ratio(5, f"runner {name}: USS above its model (MB)", uss, note=shared))
    return goals


def _ledger_and_shadow_ratios(r: Results) -> list[Ratio]:
    """Issue 3: what a shadow and the ledger cost the primary."""
    return [
        _goal(
            3,
            "gateway with one shadow at 1.0 p50 / gateway p50, 1-row c=1",
            _divide(_p50(r, SHADOW, ONE), _p50(r, GATEWAY, ONE)),
            _at_most(1.2),
        ),
        _goal(
            3,
            "gateway (ledger on) rps / gateway-no-ledger rps, 1-row c=16",
            _divide(_rps(r, GATEWAY, ONE), _rps(r, NO_LEDGER, ONE)),
            _at_least(0.9),
        ),
        Ratio(
            3,
            "gateway (ledger on) p50 / gateway-no-ledger p50, 1000-row c=1",
            _divide(_p50(r, GATEWAY, THOUSAND), _p50(r, NO_LEDGER, THOUSAND)),
        ),
        Ratio(
            3,
            "gateway-no-ledger p50 / two-hop floor p50, 1-row c=1",
            _divide(_p50(r, NO_LEDGER, ONE), _p50(r, FLOOR, ONE)),
        ),
        _goal(
            3,
            "ledger rows/s into SQLite (1-row answers, writer thread)",
            r.ledger_rate.get("rows_per_s"),
            _at_least(5000),
            r.ledger_rate.get("note", ""),
        ),
        *_grown_ledger(r.ledger_rate.get("grown") or {}),
    ]


def _grown_ledger(grown: dict[str, Any]) -> list[Ratio]:
    """The writer into a ledger already holding many answers, by kind of request id."""
    if not grown:
        return []
    held = f"{grown['held']:,}"
    ordered, scattered = grown.get("time_ordered_rows_per_s"), grown.get("random_rows_per_s")

    def dropped(kind: str) -> int:
        return int(grown.get(f"{kind}_dropped", 0))

    return [
        Ratio(3, f"ledger rows/s, {held} held, gateway-made ids", ordered,
              note=f"time-ordered (UUID 7, gateway.ids); dropped {dropped('time_ordered')}"),
        Ratio(3, f"ledger rows/s, {held} held, random ids", scattered,
              note=f"UUID version 4, as many clients send; dropped {dropped('random')}"),
        Ratio(3, "gateway-made ids / random ids, rows/s into that ledger",
              _divide(ordered, scattered)),
    ]  # fmt: skip


def _foreign_runner_ratios(r: Results) -> list[Ratio]:
    """Issue 4: the Go runner next to the Python runner on one LightGBM model."""
    return [
        Ratio(
            4,
            "Go runner p50 / Python runner p50 (LightGBM), 1-row c=1",
            _divide(_p50(r, LGBM_GO, ONE), _p50(r, LGBM_PY, ONE)),
        ),
        Ratio(
            4,
            "Go runner rps / Python runner rps (LightGBM), 1-row c=16",
            _divide(_rps(r, LGBM_GO, ONE), _rps(r, LGBM_PY, ONE)),
        ),
        Ratio(
            4,
            "Go runner rps / Python runner rps (LightGBM), 1000-row c=16",
            _divide(_rps(r, LGBM_GO, THOUSAND), _rps(r, LGBM_PY, THOUSAND)),
        ),
    ]


def _performance_floor_ratios(r: Results) -> list[Ratio]:
    """Issue 5: near the floors (tighter than issue 2's), the in-process lane, c=64."""
    inprocess = _divide(_p50(r, INPROCESS, ONE), _p50(r, ECHO, ONE))
    return [
        _goal(
            5,
            "gateway p50 / two-hop floor p50, 1-row c=1",
            _divide(_p50(r, GATEWAY, ONE), _p50(r, FLOOR, ONE)),
            _at_most(1.15),
        ),
        _goal(
            5,
            "in-process lane p50 / echo (one-hop floor) p50, 1-row c=1",
            inprocess,
            _at_most(1.15),
            "" if inprocess is not None else f"no '{INPROCESS}' target in this run",
        ),
        _goal(
            5,
            "gateway rps / two-hop floor rps, 1-row c=16",
            _divide(_rps(r, GATEWAY, ONE), _rps(r, FLOOR, ONE)),
            _at_least(0.85),
        ),
        Ratio(
            5,
            "gateway rps / two-hop floor rps, 1-row c=64",
            _divide(_rps(r, GATEWAY, ONE, 64), _rps(r, FLOOR, ONE, 64)),
        ),
        Ratio(
            5,
            "gateway rps / two-hop floor rps, 1000-row c=64",
            _divide(_rps(r, GATEWAY, THOUSAND, 64), _rps(r, FLOOR, THOUSAND, 64)),
        ),
        Ratio(
            5,
            "gateway over gRPC to its runner p50 / two-hop floor p50, 1-row c=1",
            _divide(_p50(r, GRPC_HOP, ONE), _p50(r, FLOOR, ONE)),
            note="--no-framed-socket: both hops gRPC, as the floor",
        ),
        Ratio(
            5,
            "gateway over gRPC to its runner rps / two-hop floor rps, 1-row c=16",
            _divide(_rps(r, GRPC_HOP, ONE), _rps(r, FLOOR, ONE)),
        ),
        _overhead_ratio(r, 5, 1.3),
        _goal(
            5,
            "gateway with one shadow at 1.0 p50 / gateway p50, 1-row c=1",
            _divide(_p50(r, SHADOW, ONE), _p50(r, GATEWAY, ONE)),
            _at_most(1.1),
        ),
    ]


def _peer_ratios(r: Results) -> list[Ratio]:
    """Issue 5: the gateway against MLServer on the same model (`make bench-peers`)."""
    absent = f"no '{MLSERVER}' target in this run (make bench-peers)"
    if MLSERVER in r.skipped:
        absent = f"'{MLSERVER}' was SKIPPED: {r.skipped[MLSERVER][:120]}"
    rps = _divide(_rps(r, GATEWAY, ONE), _rps(r, MLSERVER, ONE))
    return [
        _goal(
            5,
            "gateway rps / MLServer rps, 1-row c=16",
            rps,
            _at_least(2.5),
            "" if rps is not None else absent,
        ),
        Ratio(
            5,
            "gateway rps / MLServer rps, 1-row c=64",
            _divide(_rps(r, GATEWAY, ONE, 64), _rps(r, MLSERVER, ONE, 64)),
        ),
        Ratio(
            5,
            "gateway rps / MLServer rps, 1000-row c=16",
            _divide(_rps(r, GATEWAY, THOUSAND), _rps(r, MLSERVER, THOUSAND)),
        ),
        Ratio(
            5,
            "gateway p50 / MLServer p50, 1-row c=1",
            _divide(_p50(r, GATEWAY, ONE), _p50(r, MLSERVER, ONE)),
        ),
        Ratio(
            5,
            "gateway p50 / MLServer p50, 1-row c=16",
            _divide(_p50(r, GATEWAY, ONE, 16), _p50(r, MLSERVER, ONE, 16)),
        ),
        Ratio(
            5,
            "gateway p50 / MLServer p50, 1000-row c=1",
            _divide(_p50(r, GATEWAY, THOUSAND), _p50(r, MLSERVER, THOUSAND)),
        ),
    ]


def _batching_ratios(r: Results) -> list[Ratio]:
    """Issue 5: a 100-tree random forest, runner called directly, batching on vs off. The
    goal is read with a queue delay set (as Triton's dynamic batcher is used); the default,
    which merges only what queued while the model ran, is shown beside it."""
    c = int(r.meta.get("forest_concurrency") or FOREST_CONCURRENCY)
    on_p99, off_p99 = _p99(r, FOREST_QUEUED, ONE, c), _p99(r, FOREST_OFF, ONE, c)
    note = "" if on_p99 is None or off_p99 is None else f"{on_p99:.1f} ms vs {off_p99:.1f} ms"
    queued = "max_queue_delay_us 2000"
    return [
        _goal(
            5,
            f"random forest batching on ({queued}) rps / off rps, 1-row c={c}",
            _divide(_rps(r, FOREST_QUEUED, ONE, c), _rps(r, FOREST_OFF, ONE, c)),
            _at_least(4.0),
        ),
        _goal(
            5,
            f"random forest batching on ({queued}) p99 / off p99, 1-row c={c}",
            _divide(on_p99, off_p99),
            _at_most(1.0),
            note,
        ),
        Ratio(
            5,
            f"random forest batching on (no queue delay) rps / off rps, 1-row c={c}",
            _divide(_rps(r, FOREST_ON, ONE, c), _rps(r, FOREST_OFF, ONE, c)),
        ),
        Ratio(
            5,
            f"random forest without scikit-learn (default runner) rps / with it ({queued}) "
            f"rps, 1-row c={c}",
            _divide(_rps(r, FOREST_LEAN, ONE, c), _rps(r, FOREST_QUEUED, ONE, c)),
        ),
        Ratio(
            5,
            f"random forest without scikit-learn (default runner) p99 / with it ({queued}) "
            f"p99, 1-row c={c}",
            _divide(_p99(r, FOREST_LEAN, ONE, c), on_p99),
        ),
        *_tree_speed(r),
    ]


def _tree_speed(r: Results) -> list[Ratio]:
    """The forest's model call alone (bench/tree_speed.py): where the kernels stop paying."""
    note = r.tree_speed.get("note")
    if note:
        return [Ratio(5, "forest model call, scikit-learn / numpy kernels", None, note=note)]
    return [
        Ratio(
            5,
            f"forest model call, scikit-learn / numpy kernels, {rows} rows",
            _divide(timed["sklearn_us"], timed["kernels_us"]),
            note=f"{timed['sklearn_us']:.0f} vs {timed['kernels_us']:.0f} µs"
            + ("" if timed["same_answers"] else "; ANSWERS DIFFER"),
        )
        for rows, timed in r.tree_speed.items()
    ]


def ratios(results: Results) -> list[Ratio]:
    return [
        *_floor_ratios(results),
        *_runner_ratios(results),
        *_rss_goal(results),
        *_ledger_and_shadow_ratios(results),
        *_foreign_runner_ratios(results),
        *_performance_floor_ratios(results),
        *_peer_ratios(results),
        *_batching_ratios(results),
        *_memory_goals(results),
    ]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


ISSUES = {
    2: "core: the gateway against its floors",
    3: "shadows and the ledger",
    4: "polyglot: the Go runner",
    5: "performance",
}


def table(results: Results) -> str:
    header = (
        f"{'target':<19} {'payload':<9} {'c':>3} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'rps':>9} {'ok':>7} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    previous: tuple[str, int] | None = None
    for run in results.runs:
        if previous is not None and (run.payload, run.concurrency) != previous:
            lines.append("")
        previous = (run.payload, run.concurrency)
        s = run.stats
        lines.append(
            f"{run.target:<19} {run.payload:<9} {run.concurrency:>3} {_fmt(s.p50_ms):>8} "
            f"{_fmt(s.p90_ms):>8} {_fmt(s.p99_ms):>8} {_fmt(s.rps, 0):>9} {s.ok:>7} "
            f"{s.errors:>6}"
        )
    lines.extend(f"{name:<19} SKIPPED: {reason}" for name, reason in results.skipped.items())
    return "\n".join(lines)


def ratio_lines(items: list[Ratio]) -> str:
    """One line per ratio, under a heading per issue; each line names its issue too."""
    lines: list[str] = []
    issue: int | None = None
    for item in items:
        if item.issue != issue:
            lines += [""] if lines else []
            lines.append(f"-- issue {item.issue}: {ISSUES.get(item.issue, '')}")
            issue = item.issue
        goal = f"goal {item.goal}" if item.goal else ""
        line = (
            f"{_status(item):<5} issue {item.issue}  {item.name:<62} {_fmt(item.value):>8}  {goal}"
        )
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
        "tree_speed": results.tree_speed,
        "memory": results.memory,
        "rss_after": results.rss_after,
        "answers": results.answers,
        "ratios": [item.to_json() for item in items],
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
