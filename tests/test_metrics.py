"""Prometheus metrics and OpenTelemetry tracing, end to end: real gateways, runners and
scrapes of /metrics over HTTP, compared with what the ledger holds."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.ledger.writer import BatchHandler, BatchWriter, Bounds
from gateway.metrics import Metrics, serve
from gateway.wire import leading_string
from greenroom_client.control import ControlClient
from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GREENROOM, GatewayProcess
from tests.test_gateway import request
from tests.test_workers import worker_pids

# Two versions of one model: each labels a row by the sign of one column, and fails
# (INTERNAL, from the runner) on a row holding FAIL.
MODEL = """
import numpy as np

class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    outputs = [{"name": "label", "datatype": "INT64", "shape": [-1]}]

    def predict(self, inputs):
        x = inputs["x"]
        if (x == 999).any():
            raise ValueError("asked to fail")
        return {"label": (x[:, COLUMN] > 0).astype(np.int64)}
"""
FAIL = 999.0
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
Samples = list[tuple[str, dict[str, str], float]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("metrics-models")
    for version, column in (("1", 0), ("2", 1)):
        (repo / "m" / version).mkdir(parents=True)
        (repo / "m" / version / "model.py").write_text(MODEL.replace("COLUMN", str(column)))
    (repo / "m" / "model.yaml").write_text('task: classification\nprimary: "1"\n')
    return repo


def rows(n: int, fail: bool = False) -> np.ndarray:
    x = np.random.default_rng(n).normal(size=(n, 2)).astype(np.float32)
    if fail:
        x[0, 0] = FAIL
    return x


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        v
        for n, have, v in samples
        if n == name and all(have.get(k) == x for k, x in labels.items())
    )


def requests_by_key(samples: Samples, model: str = "m") -> dict[tuple[str, str, str], int]:
    """greenroom_requests_total of ``model``: (version, role, code) -> count (non-zero)."""
    return {
        (labels["version"], labels["role"], labels["code"]): int(v)
        for n, labels, v in samples
        if n == "greenroom_requests_total" and labels["model"] == model and v
    }


def ledger_by_key(data_dir: Path, model: str = "m") -> dict[tuple[str, str, str], int]:
    """The ledger's answers of ``model``: (version, role, status) -> count."""
    with sqlite3.connect(f"file:{data_dir / 'ledger.db'}?mode=ro", uri=True) as db:
        found = db.execute(
            "SELECT version, role, status, count(*) FROM answers WHERE model = ? "
            "GROUP BY version, role, status",
            (model,),
        ).fetchall()
    return {(version, role, status): count for version, role, status, count in found}


def send(stub: pb_grpc.GRPCInferenceServiceStub, message: pb.ModelInferRequest) -> str:
    """The code the gateway answered with."""
    try:
        stub.ModelInfer(message, timeout=30)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def shadows_settled(gateway: GatewayProcess, control: ControlClient) -> Callable[[], bool]:
    """Every primary answer has its shadow answer in the ledger, or its copy was dropped."""

    def settled() -> bool:
        report = control.report("m")  # writes what the ledger holds first
        by_key = ledger_by_key(gateway.data_dir)
        primary = sum(n for (v, role, _), n in by_key.items() if role == "primary")
        shadow = sum(n for (v, role, _), n in by_key.items() if role == "shadow")
        drops = sum(report["ledger"]["shadow_drops"].values())
        return bool(primary == shadow + drops)

    return settled


def check_against_ledger(gateway: GatewayProcess, control: ControlClient) -> Samples:
    """/metrics says what the ledger says: answers by version, role and code, histogram
    counts, ledger counters, shadow drops. Returns the scrape."""
    report = control.report("m")
    samples = scrape(gateway.metrics_url)
    in_ledger = ledger_by_key(gateway.data_dir)
    counted = requests_by_key(samples)
    answered = {key: n for key, n in counted.items() if key[0]}  # refused ones: version ""
    assert answered == in_ledger
    for version, role in {(v, r) for v, r, _ in in_ledger}:
        total = sum(n for (v, r, _), n in in_ledger.items() if (v, r) == (version, role))
        labels = {"model": "m", "version": version, "role": role}
        assert value(samples, "greenroom_request_duration_seconds_count", **labels) == total
        assert value(samples, "greenroom_request_duration_seconds_bucket", le="+Inf", **labels) == (
            total
        )
        assert value(samples, "greenroom_request_duration_seconds_sum", **labels) > 0
    ledger = report["ledger"]
    assert value(samples, "greenroom_ledger_recorded_total") == ledger["recorded_answers"]
    assert ledger["recorded_answers"] == sum(in_ledger.values())
    assert value(samples, "greenroom_ledger_dropped_total") == ledger["dropped"] == 0
    assert value(samples, "greenroom_ledger_failed_total") == ledger["failed"] == 0
    assert value(samples, "greenroom_ledger_queue_depth") == 0
    assert value(samples, "greenroom_ledger_lag_seconds") == 0
    for version, drops in ledger["shadow_drops"].items():
        assert value(samples, "greenroom_shadow_drops_total", model="m", version=version) == drops
    return samples


# ---- one gateway ----------------------------------------------------------------------------


def send_known(target: str) -> tuple[Counter[str], Counter[str]]:
    """20 answers, 5 failures in the runner, 5 requests refused before reaching a model:
    the codes of the first two kinds, and of the refused ones."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        codes = Counter(send(stub, request("m", {"x": rows(3)}, id=f"ok-{i}")) for i in range(20))
        codes.update(send(stub, request("m", {"x": rows(2, fail=True)})) for _ in range(5))
        wide = np.zeros((1, 3), np.float32)
        refused = Counter(
            [
                send(stub, request("nope", {"x": rows(1)})),
                send(stub, request("m", {"x": rows(1)}, model_version="7")),
                send(stub, request("m", {"x": wide})),
                send(stub, request("m", {"x": wide})),
                send(stub, request("", {"x": rows(1)})),
            ]
        )
    return codes, refused


def load_while_scraping(gateway: GatewayProcess) -> tuple[Counter[str], list[Samples]]:
    """4 threads of 150 requests (every tenth failing) while another thread scrapes."""
    scrapes: list[Samples] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            scrapes.append(scrape(gateway.metrics_url))
            time.sleep(0.05)

    def load(worker: int) -> Counter[str]:
        with grpc.insecure_channel(gateway.target, options=OWN_CONNECTION) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return Counter(
                send(stub, request("m", {"x": rows(2, fail=i % 10 == 0)}, id=f"l{worker}-{i}"))
                for i in range(150)
            )

    watcher = threading.Thread(target=scraper)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            loaded = sum(pool.map(load, range(4)), Counter[str]())
    finally:
        done.set()
        watcher.join()
    return loaded, scrapes


def test_metrics_show_what_the_ledger_holds(models: Path, tmp_path: Path) -> None:
    # Shadow copies travel alone (no merging window), so that a failing request fails its
    # own shadow call only; at most 4 in flight, so that the load below may drop some.
    env = {"GREENROOM_SHADOW_BATCH_WINDOW_MS": "0", "GREENROOM_SHADOW_LIMIT": "4"}
    gateway = GatewayProcess(models, tmp_path / "data", env=env)
    try:
        assert gateway.metrics_port is not None and gateway.metrics_port != 8002
        control = ControlClient(gateway.target)
        control.deploy("m", "1", shadows={"2": 1.0}, reason="metrics test")
        codes, refused = send_known(gateway.target)
        assert codes == {"OK": 20, "INTERNAL": 5}
        assert refused == {"NOT_FOUND": 2, "INVALID_ARGUMENT": 3}
        wait_for(shadows_settled(gateway, control), "the shadow copies")
        samples = check_against_ledger(gateway, control)
        in_ledger = ledger_by_key(gateway.data_dir)
        assert in_ledger[("1", "primary", "OK")] == 20
        assert in_ledger[("1", "primary", "INTERNAL")] == 5
        shadowed = sum(n for (_, role, _), n in in_ledger.items() if role == "shadow")
        assert shadowed + value(samples, "greenroom_shadow_drops_total") == 25
        # Refused before reaching a model: no version, no role; the model only if it is one.
        refused_of_m = {key: n for key, n in requests_by_key(samples).items() if not key[0]}
        assert refused_of_m == {
            ("", "", "NOT_FOUND"): 1,  # version 7 of m
            ("", "", "INVALID_ARGUMENT"): 2,  # the 3-column inputs
        }
        assert requests_by_key(samples, model="") == {
            ("", "", "NOT_FOUND"): 1,  # no model 'nope': not a label value
            ("", "", "INVALID_ARGUMENT"): 1,  # empty model name
        }
        durations = [s for s in samples if s[0].startswith("greenroom_request_duration")]
        assert all(labels["version"] for _, labels, _ in durations)  # no latency when refused

        loaded, scrapes = load_while_scraping(gateway)
        assert loaded == {"OK": 540, "INTERNAL": 60}
        assert len(scrapes) >= 3
        totals = [value(s, "greenroom_requests_total", model="m", role="primary") for s in scrapes]
        assert totals == sorted(totals) and totals[-1] <= 625
        for seen in scrapes:
            assert value(seen, "greenroom_ledger_queue_depth") >= 0
            assert 0 <= value(seen, "greenroom_ledger_lag_seconds") < 30
        wait_for(shadows_settled(gateway, control), "the shadow copies")
        samples = check_against_ledger(gateway, control)
        refused_of_m = {key: n for key, n in requests_by_key(samples).items() if not key[0]}
        assert sum(refused_of_m.values()) == 3  # the load's failures reached the model
        in_ledger = ledger_by_key(gateway.data_dir)
        assert in_ledger[("1", "primary", "OK")] == 560
        assert in_ledger[("1", "primary", "INTERNAL")] == 65
        shadowed = sum(n for (_, role, _), n in in_ledger.items() if role == "shadow")
        assert shadowed + value(samples, "greenroom_shadow_drops_total") == 625
    finally:
        assert gateway.stop() == 0


def test_metrics_count_answers_that_are_not_recorded(models: Path, tmp_path: Path) -> None:
    gateway = GatewayProcess(models, tmp_path / "data", "--no-record")
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            codes = Counter(send(stub, request("m", {"x": rows(1)})) for _ in range(7))
            codes.update([send(stub, request("m", {"x": rows(1, fail=True)}))])
            # The streaming form counts each of its requests the same way.
            stream = [
                request("m", {"x": rows(1)}),
                request("m", {"x": rows(1, fail=True)}),
                request("m", {"x": np.zeros((1, 3), np.float32)}),
                request("m", {"x": rows(2)}),
            ]
            replies = list(stub.ModelStreamInfer(iter(stream), timeout=30))
        assert codes == {"OK": 7, "INTERNAL": 1}
        assert [bool(reply.error_message) for reply in replies] == [False, True, True, False]
        samples = scrape(gateway.metrics_url)
        assert requests_by_key(samples) == {
            ("1", "primary", "OK"): 9,
            ("1", "primary", "INTERNAL"): 2,
            ("", "", "INVALID_ARGUMENT"): 1,
        }
        assert value(samples, "greenroom_ledger_recorded_total") == 0
    finally:
        assert gateway.stop() == 0


def test_a_taken_metrics_port_stops_the_gateway(models: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for workers in ("1", "2"):
            done = subprocess.run(
                [*GREENROOM, "serve", "--repo", str(models), "--port", "0", "--metrics-port", port,
                 "--workers", workers, "--data-dir", str(tmp_path / "data")],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 1, done.stderr
            assert (
                f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in done.stderr
            )
            assert "runner state" not in done.stderr  # no runner was started
            assert "GREENROOM_GATEWAY_LISTENING" not in done.stdout


# ---- --workers N ----------------------------------------------------------------------------


def test_workers_metrics_are_served_once_and_summed(models: Path, tmp_path: Path) -> None:
    env = {"GREENROOM_SHADOW_BATCH_WINDOW_MS": "0"}
    gateway = GatewayProcess(models, tmp_path / "data", "--workers", "2", env=env)
    try:
        control = ControlClient(gateway.target)
        control.deploy("m", "1", shadows={"2": 1.0}, reason="metrics test")
        answered_by: Counter[str] = Counter()

        def load(worker: int) -> Counter[str]:
            codes: Counter[str] = Counter()
            for i in range(40):
                # A fresh connection every 10 requests: the kernel spreads connections.
                if i % 10 == 0:
                    channel = grpc.insecure_channel(gateway.target, options=OWN_CONNECTION)
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                message = request("m", {"x": rows(1, fail=i % 8 == 0)}, id=f"w{worker}-{i}")
                try:
                    _, call = stub.ModelInfer.with_call(message, timeout=30)
                    codes["OK"] += 1
                    answered_by[dict(call.trailing_metadata())["x-greenroom-worker"][0]] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
                if i % 10 == 9:
                    channel.close()
            return codes

        with ThreadPoolExecutor(4) as pool:
            codes = sum(pool.map(load, range(4)), Counter())
        assert codes == {"OK": 140, "INTERNAL": 20}
        assert set(answered_by) == {"0", "1"}, answered_by  # both workers answered
        wait_for(shadows_settled(gateway, control), "the shadow copies")
        # The workers copy their ledger counters into the shared files every half second.
        wait_for(
            lambda: (
                value(scrape(gateway.metrics_url), "greenroom_ledger_recorded_total")
                == control.report("m")["ledger"]["recorded_answers"]
            ),
            "the ledger counters",
        )
        check_against_ledger(gateway, control)
        assert ledger_by_key(gateway.data_dir)[("1", "primary", "INTERNAL")] == 20

        # A worker killed: what it counted stays in the sums, and the counts still match.
        before = requests_by_key(scrape(gateway.metrics_url))
        old = worker_pids(gateway)
        os.kill(old[1], signal.SIGKILL)
        wait_for(lambda: worker_pids(gateway).get(1, old[1]) != old[1], "worker 1's restart")
        samples = scrape(gateway.metrics_url)
        assert requests_by_key(samples) == before == ledger_by_key(gateway.data_dir)
        assert value(samples, "greenroom_ledger_recorded_total") == sum(before.values())
        assert value(samples, "greenroom_ledger_queue_depth") == 0
    finally:
        assert gateway.stop() == 0


# ---- gauges and pieces --------------------------------------------------------------------


def test_accuracy_and_drift_gauges_appear_when_set() -> None:
    metrics = Metrics()
    server = serve(metrics.registry, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert not [s for s in scrape(url) if s[0] in ("greenroom_accuracy", "greenroom_drift_psi")]
        metrics.set_accuracy("churn", "2", 0.875)
        metrics.set_drift("churn", "2", "tenure", 0.31)
        metrics.set_drift("churn", "2", "tenure", 0.12)  # the latest value wins
        metrics.set_drift("churn", "1", "plan", 0.02)
        samples = scrape(url)
        assert value(samples, "greenroom_accuracy", model="churn", version="2") == 0.875
        drift = {
            (labels["version"], labels["feature"]): v
            for name, labels, v in samples
            if name == "greenroom_drift_psi"
        }
        assert drift == {("2", "tenure"): 0.12, ("1", "plan"): 0.02}
    finally:
        server.close()


def test_ledger_lag_is_the_age_of_the_oldest_waiting_answer() -> None:
    release = threading.Event()
    written: list[Any] = []

    def write(batch: Any) -> None:
        release.wait(10)
        written.extend(batch)

    handler: BatchHandler[Any] = BatchHandler(
        write, lambda item: (item, 1), is_transient=lambda _: False
    )
    writer: BatchWriter[Any] = BatchWriter(
        handler, Bounds(queue_items=100, queue_bytes=1 << 20, batch_items=1, flush_interval_s=0.0)
    )  # fmt: skip
    writer.start()
    try:
        assert writer.lag_s() == 0.0
        writer.put("first")
        time.sleep(0.3)
        writer.put("second")
        lag = writer.lag_s()  # "first" is in the batch being written, "second" queued
        assert 0.3 <= lag < 5
        release.set()
        assert writer.flush(5)
        assert writer.lag_s() == 0.0 and written == ["first", "second"]
    finally:
        release.set()
        writer.stop(5)


def test_leading_string_reads_the_model_name_without_parsing() -> None:
    message = request("churn", {"x": rows(2)}, id="abc").SerializeToString()
    assert leading_string(message, 1) == "churn"
    assert leading_string(pb.ModelInferRequest(id="abc").SerializeToString(), 1) is None
    assert leading_string(b"\x0a\x05ab", 1) is None  # cut short
    assert leading_string(b"", 1) is None


# ---- tracing --------------------------------------------------------------------------------


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tracing_follows_a_request_from_gateway_to_runners(models: Path, tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    env = {"GREENROOM_SHADOW_BATCH_WINDOW_MS": "0"}
    gateway = GatewayProcess(
        models, tmp_path / "data", "--tracing", "console", "--tracing-file", str(spans_file),
        "--metrics-port", "-1", env=env,
    )  # fmt: skip
    try:
        assert gateway.metrics_port is None  # -1: no metrics served
        ControlClient(gateway.target).deploy("m", "1", shadows={"2": 1.0}, reason="tracing")
        client_trace, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        traceparent = f"00-{client_trace}-{client_span}-01"
        with grpc.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(
                request("m", {"x": rows(1)}, id="t-1"), metadata=(("traceparent", traceparent),)
            )
            stub.ModelInfer(request("m", {"x": rows(1)}, id="t-2"))
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(request("nope", {"x": rows(1)}, id="t-3"))

        def ours(request_id: str) -> list[dict[str, Any]]:
            return [
                s for s in read_spans(spans_file)
                if request_id in (s["attributes"].get("greenroom.request_id"),
                                  *s["attributes"].get("greenroom.request_ids", ()))
            ]  # fmt: skip

        # gateway request, primary runner, gateway shadow call, shadow runner
        wait_for(lambda: len(ours("t-1")) == 4 and len(ours("t-2")) == 4, "the spans")
        for request_id in ("t-1", "t-2"):
            spans = {
                (s["name"], s["attributes"].get("greenroom.version")): s for s in ours(request_id)
            }
            gateway_span = spans[("gateway ModelInfer", "1")]
            runner_span = spans[("runner ModelInfer", "1")]
            shadow_span = spans[("gateway shadow", "2")]
            shadow_runner_span = spans[("runner ModelInfer", "2")]
            trace_ids = {s["context"]["trace_id"] for s in spans.values()}
            assert len(trace_ids) == 1  # one trace, across three processes
            assert (
                gateway_span["attributes"] | {"greenroom.code": "OK"} == gateway_span["attributes"]
            )
            assert gateway_span["attributes"]["greenroom.role"] == "primary"
            assert gateway_span["attributes"]["greenroom.model"] == "m"
            assert gateway_span["resource"]["attributes"]["service.name"] == "greenroom-gateway"
            assert runner_span["resource"]["attributes"]["service.name"] == "greenroom-runner"
            assert runner_span["parent_id"] == gateway_span["context"]["span_id"]
            assert shadow_span["parent_id"] == gateway_span["context"]["span_id"]
            assert shadow_span["attributes"]["greenroom.role"] == "shadow"
            assert shadow_runner_span["parent_id"] == shadow_span["context"]["span_id"]
            assert shadow_runner_span["resource"]["attributes"]["greenroom.version"] == "2"
        # The client's trace is continued; without one, the gateway's span is a root.
        first = {
            s["name"]: s for s in ours("t-1") if s["attributes"].get("greenroom.version") == "1"
        }
        assert first["gateway ModelInfer"]["context"]["trace_id"] == f"0x{client_trace}"
        assert first["gateway ModelInfer"]["parent_id"] == f"0x{client_span}"
        second = next(s for s in ours("t-2") if s["name"] == "gateway ModelInfer")
        assert second["parent_id"] is None
        assert second["context"]["trace_id"] != f"0x{client_trace}"
        # A refused request has its span too, marked as an error.
        wait_for(
            lambda: any(
                s["attributes"].get("greenroom.code") == "NOT_FOUND" for s in read_spans(spans_file)
            ),
            "the refused request's span",
        )
        refused = [
            s
            for s in read_spans(spans_file)
            if s["attributes"].get("greenroom.code") == "NOT_FOUND"
        ]
        assert refused[0]["status"]["status_code"] == "ERROR"
    finally:
        assert gateway.stop() == 0


def test_without_tracing_opentelemetry_is_never_imported() -> None:
    program = (
        "import sys\n"
        "import gateway.cli, gateway.server, gateway.worker, gateway.workers, runners.server\n"
        "import runners.__main__\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_tracing_exports_over_otlp(models: Path, tmp_path: Path) -> None:
    """--tracing otlp: spans of the gateway and of its runner reach an OTLP collector (a
    fake one here), configured by the standard OTEL_* variables only."""
    from opentelemetry.proto.collector.trace.v1 import (  # noqa: PLC0415
        trace_service_pb2 as otlp,
    )
    from opentelemetry.proto.collector.trace.v1 import (  # noqa: PLC0415
        trace_service_pb2_grpc as otlp_grpc,
    )

    received: list[dict[str, str]] = []

    class Collector(otlp_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: a.value.string_value for a in span.attributes}
                        received.append(
                            {
                                "service": resource["service.name"],
                                "name": span.name,
                                "trace": span.trace_id.hex(),
                                "span": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "request_id": attributes.get("greenroom.request_id", ""),
                            }
                        )
            return otlp.ExportTraceServiceResponse()

    collector = grpc.server(ThreadPoolExecutor(2))
    otlp_grpc.add_TraceServiceServicer_to_server(Collector(), collector)  # type: ignore[no-untyped-call]
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms between batches
    }
    gateway = GatewayProcess(models, tmp_path / "data", "--tracing", "otlp", env=env)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request("m", {"x": rows(1)}, id="otlp-1")
            )

        def spans() -> dict[str, dict[str, str]]:
            return {s["service"]: s for s in list(received) if s["request_id"] == "otlp-1"}

        wait_for(lambda: len(spans()) == 2, "the spans at the collector")
        found = spans()
        gateway_span, runner_span = found["greenroom-gateway"], found["greenroom-runner"]
        assert gateway_span["name"] == "gateway ModelInfer" and gateway_span["parent"] == ""
        assert runner_span["trace"] == gateway_span["trace"]
        assert runner_span["parent"] == gateway_span["span"]
    finally:
        assert gateway.stop() == 0
        collector.stop(None)
