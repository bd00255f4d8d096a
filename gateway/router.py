"""Which runner answers a request, and which shadows get a copy.

A request naming no version follows the model's deployment (primary, or canary by
weight) and is copied to its sampled shadows; a request naming a version is served by
that version as asked, with no shadow. Routing knows nothing of gRPC.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.deployments import Deployment, Role
from gateway.recording import OutputRoles
from gateway.replicas import Backend
from gateway.repository import ModelEntry
from gateway.supervisor import Signature
from greenroom_client.errors import InvalidArgument, ModelNotFound, Unavailable, VersionNotFound
from greenroom_client.tensors import TensorSpec


def require_model_name(name: str) -> None:
    """An empty name is the caller's mistake (a field left unset), not a model missing
    from the repository: INVALID_ARGUMENT, in the same words on every RPC (ModelInfer
    too), so a client can tell "fill in the name" from "that model is not served here"."""
    if not name:
        raise InvalidArgument("model name is empty: name the model")


@dataclass(frozen=True, slots=True)
class Plan:
    runner: Backend
    role: Role
    shadows: list[str] = field(default_factory=list)


class Router:
    def __init__(
        self,
        models: dict[str, ModelEntry],
        runners: dict[tuple[str, str], Backend],
        rng: random.Random | None = None,
    ) -> None:
        self.models = models
        self.runners = runners
        self.rng = rng or random.Random()
        self.deployments = {name: Deployment(name, m.primary) for name, m in models.items()}

    def model(self, name: str) -> ModelEntry:
        """The served model ``name``: every lookup by name passes here, and so every RPC
        that takes one refuses an empty name the same way."""
        require_model_name(name)
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(name)
        return entry

    def add_model(self, entry: ModelEntry) -> None:
        """A model registered while serving (with its first version, its primary)."""
        self.models[entry.name] = entry
        self.deployments[entry.name] = Deployment(entry.name, entry.primary)

    def versions(self, name: str) -> list[str]:
        return list(self.model(name).versions)

    def deployment(self, name: str) -> Deployment:
        self.model(name)
        return self.deployments[name]

    def set_deployment(self, deployment: Deployment) -> None:
        """Takes effect for the next request; callers validate first."""
        self.deployments[deployment.model] = deployment

    def resolve(self, name: str, version: str = "") -> Backend:
        """The runner for ``version``, or for the primary when ``version`` is empty."""
        model = self.model(name)
        chosen = version or self.deployments[name].primary
        if chosen not in model.versions:
            raise VersionNotFound(name, chosen, list(model.versions))
        return self.runners[(name, chosen)]

    def plan(self, name: str, version: str) -> Plan:
        deployment = self.deployment(name)
        if version:
            return Plan(self.resolve(name, version), deployment.role_of(version) or "primary")
        chosen, role = deployment.route(self.rng)
        shadows = deployment.sample_shadows(self.rng) if deployment.shadows else []
        return Plan(self.runners[(name, chosen)], role, shadows)

    def output_roles(self, name: str, version: str = "") -> OutputRoles:
        """Which outputs the ledger reads, from the version's signature and model.yaml
        (the primary's when ``version`` is empty)."""
        runner = self.resolve(name, version)
        outputs = runner.signature.outputs if runner.signature else []
        return OutputRoles.infer(outputs, self.model(name).config.classes)


def signature_of(runner: Backend) -> Signature:
    """The runner's signature, known once it has loaded at least once."""
    if runner.signature is None:
        raise Unavailable(f"{runner.where} is not ready: {runner.reason}")
    return runner.signature


def check_request(runner: Backend, inputs: Sequence[TensorSpec], outputs: Sequence[str]) -> None:
    signature_of(runner).check(inputs, outputs)
