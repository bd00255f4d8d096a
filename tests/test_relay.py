"""The shadow relay process: it carries calls to a real runner and back unchanged, relays
the runner's errors with their status, and is restarted when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from gateway.relay import RelayedError, ShadowRelay
from greenroom_client.errors import Unavailable
from greenroom_proto.inference import grpc_service_pb2 as pb
from tests.models import iris
from tests.runner_fixtures import Runner, infer_request, outputs_of, running, save_joblib

LIMIT = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    x, y = iris()
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture(scope="module")
def runner(model: LogisticRegression, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    root = tmp_path_factory.mktemp("relay")
    with running(save_joblib(root, "iris", "1", model), "iris") as started:
        yield started


def _request(rows: np.ndarray, request_id: str = "r1") -> bytes:
    return infer_request(
        "iris", {"input": rows}, raw=True, request_id=request_id
    ).SerializeToString()


async def _with_relay(body: Callable[[ShadowRelay], Awaitable[None]]) -> None:
    relay = ShadowRelay(LIMIT)
    await relay.start()
    try:
        await body(relay)
    finally:
        await relay.stop()


def test_replies_come_back_as_the_runner_sent_them(
    runner: Runner, model: LogisticRegression
) -> None:
    rows = iris()[0][:5]

    async def body(relay: ShadowRelay) -> None:
        replies = await asyncio.gather(
            *(relay.call(runner.address, _request(rows, f"r{i}"), 5.0) for i in range(50))
        )
        for i, reply in enumerate(replies):
            response = pb.ModelInferResponse.FromString(reply)
            assert response.id == f"r{i}"
            outputs = outputs_of(response)
            assert np.array_equal(outputs["label"], model.predict(rows))
            assert np.array_equal(outputs["probabilities"], model.predict_proba(rows))

    asyncio.run(_with_relay(body))


def test_runner_errors_keep_their_status(runner: Runner) -> None:
    async def body(relay: ShadowRelay) -> None:
        with pytest.raises(RelayedError) as bad:
            await relay.call(runner.address, _request(np.zeros((1, 3), np.float32)), 5.0)
        assert bad.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert "input" in bad.value.details
        with pytest.raises(RelayedError) as gone:
            await relay.call("unix:/nonexistent/greenroom.sock", _request(iris()[0][:1]), 1.0)
        assert gone.value.status == grpc.StatusCode.UNAVAILABLE

    asyncio.run(_with_relay(body))


def test_a_killed_relay_is_restarted(runner: Runner, tmp_path: Path) -> None:
    rows = iris()[0][:1]

    async def body(relay: ShadowRelay) -> None:
        await relay.call(runner.address, _request(rows), 5.0)
        first = relay.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        answered = False
        for _ in range(100):
            try:
                await relay.call(runner.address, _request(rows), 5.0)
                answered = True
                break
            except Unavailable:
                await asyncio.sleep(0.05)
        assert answered, "no answer after the relay was killed"
        assert relay.pid != first and relay.restarts == 1

    asyncio.run(_with_relay(body))
