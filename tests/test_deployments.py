"""Deployments: validation, routing by canary weight, shadow sampling, promotion."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.control import ControlPlane
from gateway.deployments import Canary, Deployment, Shadow
from gateway.ledger import Ledger
from gateway.repository import scan
from gateway.router import Router
from gateway.shadow import ShadowFanout
from gateway.worker import Peers, WorkerControlPlane
from greenroom_client.control import ControlClient
from greenroom_client.errors import (
    FailedPrecondition,
    InvalidArgument,
    VersionNotFound,
)
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import GatewayProcess
from tests.models import churn_data
from tests.test_gateway import request

VERSIONS = ["1", "2", "3"]


def test_canary_weight_and_shadow_fraction_are_sampled_per_request() -> None:
    deployment = Deployment("m", "1", Canary("2", 0.25), (Shadow("3", 0.5),))
    rng = random.Random(7)
    routes = [deployment.route(rng) for _ in range(20_000)]
    canary_share = sum(role == "canary" for _, role in routes) / len(routes)
    assert {v for v, _ in routes} == {"1", "2"}
    assert canary_share == pytest.approx(0.25, abs=0.015)
    copies = sum(deployment.sample_shadows(rng) == ["3"] for _ in range(20_000)) / 20_000
    assert copies == pytest.approx(0.5, abs=0.015)
    assert Deployment("m", "1", Canary("2", 0.0)).route(rng) == ("1", "primary")


@pytest.mark.parametrize(
    ("deployment", "error", "words"),
    [
        (Deployment("m", "9"), VersionNotFound, "no version '9'"),
        (Deployment("m", "1", Canary("2", 1.5)), InvalidArgument, "canary 2 weight"),
        (Deployment("m", "1", None, (Shadow("2", -0.1),)), InvalidArgument, "shadow 2 fraction"),
        (Deployment("m", "1", Canary("2", 0.1), (Shadow("2", 1.0),)), InvalidArgument, "one role"),
    ],
)
def test_invalid_deployments_are_refused(
    deployment: Deployment, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        deployment.validate(VERSIONS)


def test_promotion_keeps_the_old_primary_watching() -> None:
    before = Deployment("m", "1", Canary("3", 0.1), (Shadow("2", 1.0),))
    after = before.promoted("2", old_primary_fraction=0.5)
    assert after == Deployment("m", "2", Canary("3", 0.1), (Shadow("1", 0.5),))
    assert before.promoted("2", old_primary_fraction=0.0).shadows == ()
    assert Deployment.from_dict(after.as_dict()) == after


def test_a_canary_answers_its_share_through_the_gateway(repo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "churn").symlink_to(repo / "churn")
    gateway = GatewayProcess(models, tmp_path / "data")
    x, _ = churn_data()
    try:
        with ControlClient(gateway.target) as control:
            control.deploy("churn", "1", canary=("2", 1.0), reason="all to the canary")
            with grpc.insecure_channel(gateway.target) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                served = {
                    stub.ModelInfer(request("churn", {"input": x[:1]})).model_version
                    for _ in range(20)
                }
                named = stub.ModelInfer(request("churn", {"input": x[:1]}, model_version="1"))
            report = control.report("churn")
        assert served == {"2"} and named.model_version == "1"
        roles = {v["version"]: (v["role"], v["predictions"]) for v in report["versions"]}
        assert roles == {"1": ("primary", 1), "2": ("canary", 20)}
    finally:
        gateway.stop()


def _control_plane(tmp_path: Path) -> ControlPlane:
    """A real router over three versions (scanned from files) and a SQLite ledger."""
    repo = tmp_path / "repo"
    for version in VERSIONS:
        (repo / "m" / version).mkdir(parents=True)
        (repo / "m" / version / "model.py").write_text("# never loaded here\n")
    ledger = Ledger.for_data_dir(tmp_path / "data")
    ledger.start()
    control = ControlPlane(Router(scan(repo), {}), ledger)
    control.router.set_deployment(Deployment("m", "1", None, (Shadow("2", 1.0),)))
    return control


def test_changes_that_arrive_together_both_land(tmp_path: Path) -> None:
    """A retraining run's new shadow waits on its validation gate while a promotion
    arrives: the promotion is computed from the deployment that includes the shadow, not
    from the one it saw when it arrived (which would silently drop the shadow)."""
    control = _control_plane(tmp_path)
    release = asyncio.Event()

    async def slow_gate(model: str, new: list[str]) -> None:
        await release.wait()  # e.g. a validation run

    control.gate = slow_gate

    async def scenario() -> None:
        shadow = asyncio.create_task(
            control.change_deployment(
                "m", lambda d: d.with_shadow("3", 0.5), "retrained", "retraining"
            )
        )
        await asyncio.sleep(0.05)  # the shadow's change holds the lock, in its gate
        promotion = asyncio.create_task(control.promote("m", "2", "it won", 1.0, "api"))
        await asyncio.sleep(0.05)
        assert not promotion.done()
        release.set()
        await asyncio.gather(shadow, promotion)

    asyncio.run(scenario())
    final = control.router.deployment("m")
    assert final == Deployment("m", "2", None, (Shadow("3", 0.5), Shadow("1", 1.0)))
    assert control.ledger.deployment("m") == final.as_dict()
    saved = [h.spec for h in control.ledger.history("m")]
    assert saved[-2:] == [
        {"model": "m", "primary": "1", "canary": None,
         "shadows": [{"version": "2", "fraction": 1.0}, {"version": "3", "fraction": 0.5}]},
        final.as_dict(),
    ]  # fmt: skip
    control.ledger.stop(5.0)


def test_a_promotion_decided_on_a_shadow_that_left_changes_nothing(tmp_path: Path) -> None:
    """The automatic policy's promotion applies only if the candidate still shadows."""
    control = _control_plane(tmp_path)

    decided_on = control.router.deployment("m")  # 2 shadows 1

    async def scenario() -> None:
        await control.set_deployment(Deployment("m", "1"), "shadow removed", "api")
        with pytest.raises(FailedPrecondition, match="version 2 of model 'm' no longer shadows"):
            await control.promote("m", "2", "stale decision", 1.0, "policy", decided_on=decided_on)

    asyncio.run(scenario())
    assert control.router.deployment("m") == Deployment("m", "1")
    assert control.ledger.deployment("m") == Deployment("m", "1").as_dict()
    control.ledger.stop(5.0)


def test_a_promotion_decided_against_another_primary_changes_nothing(tmp_path: Path) -> None:
    """A human promoted 3 while the policy tested 2 against 1: 2 still shadows, but its
    evidence was against 1, so the policy's promotion must not undo the human's."""
    control = _control_plane(tmp_path)
    decided_on = control.router.deployment("m")  # 2 shadows 1

    async def scenario() -> None:
        await control.change_deployment(
            "m", lambda d: d.with_shadow("3", 1.0).promoted("3", 0.0), "human", "api"
        )
        with pytest.raises(FailedPrecondition, match="primary of model 'm' changed from 1 to 3"):
            await control.promote("m", "2", "stale decision", 1.0, "policy", decided_on=decided_on)

    asyncio.run(scenario())
    assert control.router.deployment("m") == Deployment("m", "3", None, (Shadow("2", 1.0),))
    control.ledger.stop(5.0)


def test_a_change_cancelled_while_it_is_saved_is_still_applied(tmp_path: Path) -> None:
    """grpc.aio cancels the handler when the client's deadline passes: a change whose
    save had begun is then both stored and in force, never stored only."""
    control = _control_plane(tmp_path)
    entered, release = threading.Event(), threading.Event()
    save = control.ledger.save_deployment

    def slow_save(*args: Any, **kwargs: Any) -> None:
        entered.set()
        release.wait(10)
        save(*args, **kwargs)

    control.ledger.save_deployment = slow_save  # type: ignore[method-assign]

    async def scenario() -> None:
        change = asyncio.create_task(
            control.change_deployment("m", lambda d: d.with_shadow("3", 1.0), "new", "api")
        )
        await asyncio.to_thread(entered.wait, 10)
        change.cancel()
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await change
        assert not control.changes.locked()

    asyncio.run(scenario())
    expected = Deployment("m", "1", None, (Shadow("2", 1.0), Shadow("3", 1.0)))
    assert control.router.deployment("m") == expected
    assert control.ledger.deployment("m") == expected.as_dict()
    control.ledger.stop(5.0)


def test_changes_through_two_workers_both_land(tmp_path: Path) -> None:
    """--workers N: worker 0's new shadow waits in its gate while worker 1 promotes and
    saves. Worker 0's save then finds the stored deployment changed, re-reads it and
    applies its shadow to the promoted one, instead of undoing the promotion."""
    control = _control_plane(tmp_path)  # the repository and the database both workers use
    control.ledger.stop(5.0)
    sockets = (tmp_path / "w0.sock", tmp_path / "w1.sock")
    release = asyncio.Event()

    async def slow_gate(model: str, new: list[str]) -> None:
        await release.wait()

    async def scenario() -> list[WorkerControlPlane]:
        workers = []
        for index in range(2):
            ledger = Ledger.for_data_dir(tmp_path / "data")
            ledger.start()
            router = Router(scan(tmp_path / "repo"), {})
            peers = Peers(sockets, index)
            worker = WorkerControlPlane(router, ledger, ShadowFanout(8, 1.0), peers)
            await peers.serve(worker.sync_state, worker.reload)
            workers.append(worker)
        w0, w1 = workers
        await w0.set_deployment(Deployment("m", "1", None, (Shadow("2", 1.0),)), "start", "api")
        w0.gate = slow_gate
        shadow = asyncio.create_task(
            w0.change_deployment("m", lambda d: d.with_shadow("3", 0.5), "new", "retraining")
        )
        await asyncio.sleep(0.2)  # in its gate
        await w1.promote("m", "2", "it won", 1.0, "api")
        release.set()
        await shadow
        for worker in workers:
            await worker.peers.stop()
        return workers

    workers = asyncio.run(scenario())
    final = Deployment("m", "2", None, (Shadow("1", 1.0), Shadow("3", 0.5)))
    for worker in workers:
        assert worker.router.deployment("m") == final
        assert worker.ledger.deployment("m") == final.as_dict()
    actors = [h.actor for h in workers[0].ledger.history("m")]
    assert actors == ["api", "api", "retraining"]  # each change saved once
    for worker in workers:
        worker.ledger.stop(5.0)


def test_a_change_lands_on_what_another_gateway_saved_meanwhile(tmp_path: Path) -> None:
    """Two gateways on one database (PostgreSQL for several gateways): the second one's
    copy is stale; its save finds the other's deployment, takes it up and applies its
    change to it, instead of undoing it (or refusing forever)."""
    first = _control_plane(tmp_path)
    other = ControlPlane(Router(scan(tmp_path / "repo"), {}), first.ledger)
    other.router.set_deployment(first.router.deployment("m"))

    async def scenario() -> None:
        await first.promote("m", "2", "it won", 1.0, "api")
        await other.change_deployment("m", lambda d: d.with_shadow("3", 1.0), "x", "api")

    asyncio.run(scenario())
    final = Deployment("m", "2", None, (Shadow("1", 1.0), Shadow("3", 1.0)))
    assert other.router.deployment("m") == final
    assert first.ledger.deployment("m") == final.as_dict()
    first.ledger.stop(5.0)


def test_a_stored_deployment_that_no_longer_fits_is_replaced_not_a_deadlock(
    tmp_path: Path,
) -> None:
    """A stored deployment naming a version that is gone is ignored at start (model.yaml's
    default serves); the next change replaces it, it does not conflict with it forever."""
    control = _control_plane(tmp_path)
    gone: dict[str, Any] = {"model": "m", "primary": "9", "canary": None, "shadows": []}
    control.ledger.save_deployment("m", gone, "a version since removed")

    async def scenario() -> None:
        await control.restore()
        assert control.router.deployment("m") == Deployment("m", "1", None, (Shadow("2", 1.0),))
        await control.set_deployment(Deployment("m", "1"), "fresh start", "api")

    asyncio.run(scenario())
    assert control.ledger.deployment("m") == Deployment("m", "1").as_dict()
    control.ledger.stop(5.0)
