"""`make bench`: the gateway against its floors, with ghz, on loopback.

Targets, each started as its own process on 127.0.0.1 port 0:
  echo           bench/floor.py echo (one hop, parses and answers ModelInfer)
  two-hop-floor  bench/floor.py proxy -> echo (raw-bytes forwarding: the Python floor)
  runner-direct  python -m runners (the LogisticRegression trained here)
  gateway        greenroom serve (which starts its own runner for the same model)
  gateway-shadow     the same with version 2 (a copy of 1) deployed as a shadow at 1.0
  gateway-no-ledger  the same with --no-record (answers not recorded)
  gateway-grpc-hop   the same with --no-framed-socket (ModelInfer to the runner over gRPC)
  runner-lgbm-py / runner-lgbm-go  one LightGBM model, Python runner vs the Go runner
  runner-rf-batch / -queued / -nobatch  a 100-tree random forest, Python runner running
                 scikit-learn (runner.lean: false), dynamic batching by default, with
                 max_queue_delay_us 2000, and off (runner.max_batch_size: 0)
  runner-rf-lean the same forest, default settings: numpy kernels, no scikit-learn
  mlserver       with --peers (`make bench-peers`): MLServer 1.7.1, in its own
                 virtualenv, serving the same joblib LogisticRegression
Then the ledger's writer alone: rows/s into SQLite (bench/ledger_rate.py), the forest's
model call alone, scikit-learn against numpy kernels (bench/tree_speed.py), and memory
with four models loaded (bench/memory.py).
Scenarios: 1-row and 1000-row requests at concurrency 1, 16 and 64 for the floors, the
runner, the gateways and MLServer (inprocess, gateway-no-ledger, gateway-grpc-hop and
the LightGBM runners at 1 and 16 only); the random forests get 1 row at concurrency 32 only.
All are started first, and each answers one request of every payload it will get (its
answer is checked and recorded); then, scenario by scenario (payload, concurrency), each
target gets a warmup run, then the targets take turns for a few short measured rounds,
whose calls are pooled: the runs a ratio compares are interleaved in time, so that
background load hits both sides alike. Results go to stdout and to
bench/results/latest.json (logs: bench/results/logs/).
Goals print PASS/MISS, each with the issue it comes from; the run never fails on them.
A target that cannot start is skipped, loudly.
"""

from __future__ import annotations

# First: the runners package chooses grpc's core experiments before grpc is imported, and
# every server of the run (floors, gateways, runners, MLServer) inherits them.
import runners  # noqa: F401

# isort: split
import argparse
import contextlib
import datetime
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

import tree_speed
from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2 as pb

import ghzrun
import ledger_rate
import memory
import peers
import procs
import report
from payloads import (
    FOREST_NAME,
    FOREST_TREES,
    LGBM_NAME,
    MODEL_NAME,
    MODEL_VERSION,
    N_FEATURES,
    Payload,
    train_forest,
    train_inprocess,
    train_lightgbm,
    train_model,
    write_payload,
)
from report import (
    ECHO,
    FLOOR,
    FOREST_CONCURRENCY,
    FOREST_LEAN,
    FOREST_OFF,
    FOREST_ON,
    FOREST_QUEUED,
    GATEWAY,
    GRPC_HOP,
    INPROCESS,
    LGBM_GO,
    LGBM_PY,
    MLSERVER,
    NO_LEDGER,
    ONE,
    RUNNER,
    SHADOW,
    THOUSAND,
    Results,
    Run,
)

# Measured in every scenario of the matrix (payloads x concurrencies).
MATRIX = (ECHO, FLOOR, RUNNER, GATEWAY, SHADOW, MLSERVER)
# Measured only at the concurrencies of SIDE_CONCURRENCIES: their ratios need no more.
SIDE = (INPROCESS, NO_LEDGER, GRPC_HOP, LGBM_PY, LGBM_GO)
SIDE_CONCURRENCIES = (1, 16)
# Measured only with 1 row at the forest's concurrency (--forest-concurrency).
FOREST = (FOREST_ON, FOREST_QUEUED, FOREST_OFF, FOREST_LEAN)
ALL_TARGETS = (*MATRIX, *SIDE, *FOREST)
# `make bench` runs them all but the peer; `make bench-peers` (--peers) adds it.
PEERS = (MLSERVER,)
DEFAULT_TARGETS = tuple(t for t in ALL_TARGETS if t not in PEERS)
PAYLOADS = (ONE, THOUSAND)

ROOT = Path(__file__).resolve().parent.parent
GO_RUNNER = ROOT / "runners" / "go" / "bin" / "greenroom-runner-go"
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
LOUD = "!" * 78


@dataclass(frozen=True)
class Plan:
    scenarios: list[tuple[str, int]]  # (payload name, concurrency) of the matrix
    forest_concurrency: int  # 0: no forest scenario
    warmup_s: float
    duration_s: float
    rounds: int
    floor_link: str
    targets: set[str]
    start_timeout_s: float


@dataclass
class Context:
    plan: Plan
    payloads: dict[str, Payload]
    results: Results
    log_dir: Path
    lgbm_payloads: dict[str, Payload] = field(default_factory=dict)
    forest_payloads: dict[str, Payload] = field(default_factory=dict)

    def payload(self, target: str, name: str) -> Path:
        """The request file a target gets (the LightGBM and forest runners serve other
        models; everything else, MLServer included, gets the same bytes)."""
        table = self.payloads
        if target in (LGBM_PY, LGBM_GO):
            table = self.lgbm_payloads
        elif target in FOREST:
            table = self.forest_payloads
        return table[name].path

    def measured_in(self, target: str, payload: str, concurrency: int) -> bool:
        """Whether ``target`` takes part in the matrix scenario (payload, concurrency)."""
        if target in SIDE:
            return concurrency in SIDE_CONCURRENCIES
        return target not in FOREST


def _csv(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description="Greenroom benchmark (ghz)")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per target")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warmup")
    parser.add_argument(
        "--payloads", default=",".join(PAYLOADS), help=f"comma-separated, of {PAYLOADS}"
    )
    parser.add_argument(
        "--concurrency", default="1,16,64", help="the matrix's concurrencies, comma-separated"
    )
    parser.add_argument(
        "--forest-concurrency",
        type=int,
        default=FOREST_CONCURRENCY,
        help="the random forests' concurrency (their ratios are defined at 32)",
    )
    parser.add_argument("--start-timeout", type=float, default=90.0)
    parser.add_argument(
        "--floor-link",
        choices=["uds", "tcp"],
        default="uds",
        help="proxy -> echo link (the gateway reaches its runners over unix sockets)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, of {', '.join(ALL_TARGETS)} (default: all but the peers)",
    )
    parser.add_argument(
        "--peers", action="store_true", help="add MLServer (make bench-peers) to the targets"
    )
    args = parser.parse_args(argv)
    targets = set(_csv(args.targets)) | (set(PEERS) if args.peers else set())
    unknown = targets - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    payloads = _csv(args.payloads)
    if set(payloads) - set(PAYLOADS):
        parser.error(f"unknown payloads: {', '.join(sorted(set(payloads) - set(PAYLOADS)))}")
    try:
        concurrencies = [int(c) for c in _csv(args.concurrency)]
    except ValueError:
        parser.error(f"--concurrency: not a list of integers: {args.concurrency}")
    if any(c < 1 for c in concurrencies) or args.forest_concurrency < 0:
        parser.error("concurrencies must be >= 1 (--forest-concurrency 0: no forest scenario)")
    return Plan(
        scenarios=[(payload, c) for payload in payloads for c in concurrencies],
        forest_concurrency=args.forest_concurrency if ONE in payloads else 0,
        warmup_s=args.warmup,
        duration_s=args.duration,
        rounds=args.rounds,
        floor_link=args.floor_link,
        targets=targets,
        start_timeout_s=args.start_timeout,
    )


def say(text: str = "") -> None:
    print(text, flush=True)


def shout(*lines: str) -> None:
    say(LOUD)
    for line in lines:
        say(f"!!! {line}")
    say(LOUD)


def _skip(ctx: Context, name: str, reason: str, log_path: Path | None = None) -> None:
    ctx.results.skipped[name] = reason
    tail = procs.log_tail(log_path).splitlines() if log_path else []
    shout(f"SKIPPED target {name}: {reason}", *(f"  | {line}" for line in tail))


@contextlib.contextmanager
def serving(
    ctx: Context,
    name: str,
    argv: list[str],
    address: str | None = None,
    ready: procs.Probe = procs.health_serving,
) -> Iterator[procs.Server | None]:
    """The started target, or None (recorded as skipped) when it could not start."""
    say(f"starting {name}: {' '.join(argv)}")
    began = time.monotonic()
    try:
        server = procs.start(
            name, argv, ctx.log_dir, ctx.plan.start_timeout_s, address=address, ready=ready
        )
    except (procs.StartError, OSError) as error:
        _skip(ctx, name, str(error), ctx.log_dir / f"{name}.log")
        yield None
        return
    say(f"  {name} SERVING at {server.address} after {time.monotonic() - began:.1f} s")
    try:
        yield server
    finally:
        procs.stop(server)


def _sample(ctx: Context, target: str, load: ghzrun.Load, scenario: str) -> ghzrun.Sample | None:
    try:
        return ghzrun.run(load)
    except (ghzrun.GhzError, subprocess.TimeoutExpired) as error:
        ctx.results.failed.append(f"{target} {scenario}: {error}")
        shout(f"NO RESULT for {target} {scenario}: {error}")
        return None


def _record(ctx: Context, run: Run) -> None:
    ctx.results.runs.append(run)
    stats = run.stats
    say(
        f"  {run.target:<19} {run.payload:<9} c={run.concurrency:<3} "
        f"p50 {stats.p50_ms:8.3f} ms  rps {stats.rps:8.0f}  errors {stats.errors}"
    )
    if stats.errors or not stats.ok:
        shout(
            f"{run.target} {run.payload} c={run.concurrency}: {stats.errors} errors, "
            f"{stats.ok} ok; e.g. {stats.error_sample}"
        )


# What a target needs running besides its own processes during its turn.
NEEDS = {FLOOR: (ECHO,)}


def _alone(
    everyone: dict[str, procs.Server], target: str
) -> contextlib.AbstractContextManager[None]:
    """Every other server of the run paused during ``target``'s turn (its own processes
    and what it needs keep running): each target is measured as if alone on the machine."""
    keep = {target, *NEEDS.get(target, ())}
    return procs.paused(server for name, server in everyone.items() if name not in keep)


def measure(
    ctx: Context,
    servers: dict[str, procs.Server],
    payload: str,
    c: int,
    everyone: dict[str, procs.Server] | None = None,
) -> None:
    """Warm every target up, then ``rounds`` runs each, targets taking turns, each turn
    with every other server of the run (``everyone``) paused."""
    plan, scenario, everyone = ctx.plan, f"{payload} c={c}", everyone or servers
    for target, server in servers.items():
        with (
            contextlib.suppress(ghzrun.GhzError, subprocess.TimeoutExpired),
            _alone(everyone, target),
        ):
            warmup = ghzrun.Load(server.address, ctx.payload(target, payload), c, plan.warmup_s)
            ghzrun.run(warmup)  # discarded
    samples: dict[str, list[ghzrun.Sample]] = {target: [] for target in servers}
    for _ in range(plan.rounds):
        for target, server in servers.items():
            load = ghzrun.Load(server.address, ctx.payload(target, payload), c, plan.duration_s)
            with _alone(everyone, target):
                sample = _sample(ctx, target, load, scenario)
            samples[target] += [sample] if sample else []
    for target, taken in samples.items():
        if taken:
            _record(ctx, Run(target, payload, c, ghzrun.combine(taken)))


@dataclass(frozen=True)
class Scenario:
    payload: str
    concurrency: int
    servers: dict[str, procs.Server]


def _scenarios(ctx: Context, servers: dict[str, procs.Server]) -> list[Scenario]:
    """The matrix, then the forest's scenario: each with the targets measured in it."""
    plan, scenarios = ctx.plan, []
    for payload, c in plan.scenarios:
        taking_part = {t: s for t, s in servers.items() if ctx.measured_in(t, payload, c)}
        scenarios.append(Scenario(payload, c, taking_part))
    forest = {t: s for t, s in servers.items() if t in FOREST}
    if plan.forest_concurrency:
        scenarios.append(Scenario(ONE, plan.forest_concurrency, forest))
    return [scenario for scenario in scenarios if scenario.servers]


def measure_all(ctx: Context, servers: dict[str, procs.Server]) -> None:
    """Scenario by scenario, so that the runs a ratio compares are close in time."""
    for scenario in _scenarios(ctx, servers):
        names = ", ".join(scenario.servers)
        say(f"measuring {scenario.payload} c={scenario.concurrency} ({names}) ...")
        measure(ctx, scenario.servers, scenario.payload, scenario.concurrency, servers)
        _rss_after(ctx, scenario)


def _rss_after(ctx: Context, scenario: Scenario) -> None:
    """Each target's own RSS after the scenario: memory as the load grows."""
    where = f"{scenario.payload} c={scenario.concurrency}"
    for target, server in scenario.servers.items():
        measured = procs.rss_bytes(server.pid)
        if measured is not None:
            ctx.results.rss_after.setdefault(target, {})[where] = round(measured[0] / report.MB, 1)


def _describe(response: pb.ModelInferResponse) -> str:
    return ", ".join(f"{o.name} {o.datatype} {list(o.shape)}" for o in response.outputs)


def _check_answer(ctx: Context, target: str, address: str, payload: Payload) -> None:
    """One call with the bytes ghz will send: an OK answer with one row per request row,
    or a loud BAD ANSWER (ghz counts status codes only, not what an OK answer holds)."""
    request = ctx.payload(target, payload.name).read_bytes()
    try:
        with grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", -1)]
        ) as ch:
            call = ch.unary_unary(f"/{ghzrun.CALL}")
            response = pb.ModelInferResponse.FromString(call(request, timeout=30))
    except grpc.RpcError as error:
        problem = f"{target} {payload.name}: answered {error.code()}: {error.details()}"
        ctx.results.failed.append(f"answer check: {problem}")
        shout(f"BAD ANSWER {problem}")
        return
    answer = _describe(response)
    ctx.results.answers.setdefault(target, {})[payload.name] = answer
    rows = {o.shape[0] if o.shape else None for o in response.outputs}
    if not response.outputs or rows != {payload.rows}:
        problem = f"{target} {payload.name}: not one row per request row: {answer}"
        ctx.results.failed.append(f"answer check: {problem}")
        shout(f"BAD ANSWER {problem}")


def check_answers(ctx: Context, servers: dict[str, procs.Server]) -> None:
    """Every target answers each payload it will be sent, before any is measured."""
    for scenario in _scenarios(ctx, servers):
        for target, server in scenario.servers.items():
            if scenario.payload not in ctx.results.answers.get(target, {}):
                _check_answer(ctx, target, server.address, ctx.payloads[scenario.payload])
    for target, answers in ctx.results.answers.items():
        say(f"  {target:<19} answers " + "; ".join(f"{p}: {a}" for p, a in answers.items()))


def record_rss(ctx: Context, servers: dict[str, procs.Server]) -> None:
    for target, server in servers.items():
        measured = procs.rss_bytes(server.pid)
        if measured is None:
            shout(f"{target} (pid {server.pid}) is gone: it died during the run")
            ctx.results.failed.append(f"{target}: process died during the run")
            continue
        process, children = measured
        ctx.results.rss[target] = {
            "process_mb": round(process / report.MB, 1),
            "children_mb": {str(pid): round(rss / report.MB, 1) for pid, rss in children.items()},
        }


def _gateway_argv(repo: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        str(Path(PYTHON).parent / "greenroom"), "serve",
        "--repo", str(repo), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        "--data-dir", str(data_dir), *extra,
    ]  # fmt: skip


def _argvs(work: Path) -> dict[str, list[str]]:
    floor_py, repo = str(ROOT / "bench" / "floor.py"), work / "models"
    return {
        ECHO: [PYTHON, floor_py, "echo", "--address", "127.0.0.1:0", "--uds", _socket(work)],
        FLOOR: [PYTHON, floor_py, "proxy", "--address", "127.0.0.1:0", "--upstream"],
        RUNNER: [
            PYTHON, "-m", "runners",
            "--model-dir", str(repo / MODEL_NAME / MODEL_VERSION),
            "--name", MODEL_NAME, "--version", MODEL_VERSION,
            "--address", "127.0.0.1:0",
        ],
        GATEWAY: _gateway_argv(repo, work / "data"),
        NO_LEDGER: _gateway_argv(repo, work / "data-no-ledger", "--no-record"),
        GRPC_HOP: _gateway_argv(repo, work / "data-grpc-hop", "--no-framed-socket"),
        SHADOW: _gateway_argv(work / "models-shadow", work / "data-shadow"),
        INPROCESS: _gateway_argv(work / "models-inprocess", work / "data-inprocess"),
        LGBM_PY: [PYTHON, "-m", "runners", *_runner_args(work / "models-lgbm-py", LGBM_NAME)],
        LGBM_GO: [str(GO_RUNNER), *_runner_args(work / "models-lgbm-go", LGBM_NAME)],
        FOREST_ON: [PYTHON, "-m", "runners", *_runner_args(work / "models-rf", FOREST_NAME)],
        FOREST_QUEUED: [
            PYTHON, "-m", "runners", *_runner_args(work / "models-rf-queued", FOREST_NAME),
        ],
        FOREST_OFF: [
            PYTHON, "-m", "runners", *_runner_args(work / "models-rf-nobatch", FOREST_NAME),
        ],
        FOREST_LEAN: [
            PYTHON, "-m", "runners", *_runner_args(work / "models-rf-lean", FOREST_NAME),
        ],
        MLSERVER: peers.argv(work / "mlserver"),
    }  # fmt: skip


def _runner_args(repo: Path, name: str) -> list[str]:
    return [
        "--model-dir", str(repo / name / MODEL_VERSION),
        "--name", name, "--version", MODEL_VERSION, "--address", "127.0.0.1:0",
    ]  # fmt: skip


def _build_go_runner(ctx: Context) -> None:
    """``make -C runners/go build``; if it fails, the Go target is skipped when it cannot start."""
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "runners" / "go"), "build"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        shout("could not build the Go runner:", (done.stdout + done.stderr)[-800:])


def _deploy_shadow(server: procs.Server) -> None:
    """Version 2, the same artifact as 1, watches every request."""
    with ControlClient(server.address) as control:
        control.deploy(MODEL_NAME, MODEL_VERSION, shadows={"2": 1.0}, reason="benchmark")


def _start_mlserver(
    ctx: Context, stack: contextlib.ExitStack, work: Path, argv: list[str]
) -> procs.Server | None:
    """Install MLServer into its own virtualenv (once), then serve the gateway's model."""
    say(f"installing MLServer {peers.VERSION} into {peers.VENV} (once) ...")
    try:
        peers.ensure_installed()
    except (peers.InstallError, OSError) as error:
        _skip(ctx, MLSERVER, f"MLServer could not be installed: {error}")
        return None
    joblib_file = work / "models" / MODEL_NAME / MODEL_VERSION / "model.joblib"
    address = peers.write_repository(work / "mlserver", MODEL_NAME, joblib_file)
    ready = functools.partial(peers.model_ready, model_name=MODEL_NAME)
    server: procs.Server | None = stack.enter_context(
        serving(ctx, MLSERVER, argv, address=address, ready=ready)
    )
    return server


def _socket(work: Path) -> str:
    return str(work / "echo.sock")


def start_all(ctx: Context, stack: contextlib.ExitStack, work: Path) -> dict[str, procs.Server]:
    """Every wanted target that starts (the echo server also when only the floor is wanted)."""
    argvs, wanted = _argvs(work), ctx.plan.targets
    started: dict[str, procs.Server | None] = {}
    if wanted & {ECHO, FLOOR}:
        echo = started[ECHO] = stack.enter_context(serving(ctx, ECHO, argvs[ECHO]))
        if FLOOR in wanted and echo is not None:
            link = f"unix:{_socket(work)}" if ctx.plan.floor_link == "uds" else echo.address
            argv = [*argvs[FLOOR], link]
            started[FLOOR] = stack.enter_context(serving(ctx, FLOOR, argv))
    if LGBM_GO in wanted:
        _build_go_runner(ctx)
    for name in (
        RUNNER,
        GATEWAY,
        SHADOW,
        INPROCESS,
        NO_LEDGER,
        GRPC_HOP,
        LGBM_PY,
        LGBM_GO,
        *FOREST,
    ):
        if name in wanted:
            started[name] = stack.enter_context(serving(ctx, name, argvs[name]))
    if MLSERVER in wanted:
        started[MLSERVER] = _start_mlserver(ctx, stack, work, argvs[MLSERVER])
    shadow = started.get(SHADOW)
    if shadow is not None:
        _deploy_shadow(shadow)
    return {name: s for name, s in started.items() if s is not None and name in wanted}


def _meta(plan: Plan, payloads: dict[str, Payload]) -> dict[str, Any]:
    return {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ghz_version": ghzrun.ghz_version(),
        "ghz_cpus": ghzrun.GHZ_CPUS,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "grpc_experiments": os.environ.get("GRPC_EXPERIMENTS"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "warmup_s": plan.warmup_s,
        "round_s": plan.duration_s,
        "rounds": plan.rounds,
        "floor_link": plan.floor_link,
        "model": f"{MODEL_NAME} LogisticRegression, {N_FEATURES} FP32 features",
        "forest": f"{FOREST_NAME} RandomForestClassifier, {FOREST_TREES} trees, same data",
        "scenarios": [f"{payload} c={c}" for payload, c in plan.scenarios],
        "forest_concurrency": plan.forest_concurrency,
        "targets": sorted(plan.targets),
        "payload_bytes": {name: p.size_bytes for name, p in payloads.items()},
    }


def _warn_if_busy() -> None:
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus / 2:
        shout(
            f"system load {load:.1f} on {cpus} CPUs before the run: other work shares the "
            "machine, so latencies and ratios will be noisy"
        )


def _summary(ctx: Context, elapsed_s: float) -> None:
    items = report.ratios(ctx.results)
    ctx.results.meta["elapsed_s"] = round(elapsed_s, 1)
    say()
    say(report.table(ctx.results))
    say()
    say(report.rss_line(ctx.results))
    say()
    say(report.ratio_lines(items))
    report.write_json(ctx.results, items, RESULTS / "latest.json")
    say()
    say(f"results: {RESULTS / 'latest.json'}   logs: {ctx.log_dir}   ({elapsed_s:.0f} s)")
    problems = [f"SKIPPED {name}: {why}" for name, why in ctx.results.skipped.items()]
    problems += [f"NO RESULT {what}" for what in ctx.results.failed]
    problems += [
        f"ERRORS {run.target} {run.payload} c={run.concurrency}: {run.stats.errors}"
        for run in ctx.results.runs
        if run.stats.errors
    ]
    if problems:
        shout(*problems)


def main(argv: list[str] | None = None) -> int:
    began = time.monotonic()
    plan = _parse_args(argv)
    _warn_if_busy()
    ghzrun.ensure_ghz()
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as tmp:
        work = Path(tmp)
        version_dir = train_model(work / "models")
        shadowed = work / "models-shadow" / MODEL_NAME
        shutil.copytree(version_dir, shadowed / MODEL_VERSION)
        shutil.copytree(version_dir, shadowed / "2")
        payloads = {ONE: write_payload(work, ONE, 1), THOUSAND: write_payload(work, THOUSAND, 1000)}
        train_lightgbm(work / "models-lgbm-py", work / "models-lgbm-go")
        lgbm = {
            ONE: write_payload(work, ONE, 1, LGBM_NAME),
            THOUSAND: write_payload(work, THOUSAND, 1000, LGBM_NAME),
        }
        train_forest(
            work / "models-rf", work / "models-rf-queued", work / "models-rf-nobatch",
            work / "models-rf-lean",
        )  # fmt: skip
        train_inprocess(work / "models-inprocess")
        forest = {ONE: write_payload(work, ONE, 1, FOREST_NAME)}
        results = Results(meta=_meta(plan, payloads))
        ctx = Context(plan, payloads, results, log_dir, lgbm, forest)
        with contextlib.ExitStack() as stack:
            servers = start_all(ctx, stack, work)
            say("checking that every target answers every payload it will get ...")
            check_answers(ctx, servers)
            measure_all(ctx, servers)
            record_rss(ctx, servers)
        say("measuring the ledger's writer (50,000 answers into SQLite) ...")
        ctx.results.ledger_rate = ledger_rate.measure()
        say("... and into a ledger holding 300,000 answers, by kind of request id ...")
        ctx.results.ledger_rate["grown"] = ledger_rate.measure_grown()
        say("timing the forest's model call: scikit-learn vs numpy kernels ...")
        ctx.results.tree_speed = tree_speed.measure(work / "models-rf")
        say("measuring memory: a gateway with four models ...")
        try:
            ctx.results.memory = memory.measure(PYTHON, work, log_dir)
        except procs.StartError as exc:
            shout(f"!!! the four-model gateway did not start: {exc}")
    _summary(ctx, time.monotonic() - began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
