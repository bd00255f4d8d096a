"""Which runner answers a request: the named version, or the model's primary.

Routing is a plain lookup over the repository and the fleet; it knows nothing of gRPC.
(Deployments with canaries and shadows build on this.)
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.repository import ModelEntry
from gateway.supervisor import Runner, Signature
from greenroom_client.errors import ModelNotFound, Unavailable, VersionNotFound
from greenroom_client.signature import check_inputs, check_outputs
from greenroom_client.tensors import TensorSpec


class Router:
    def __init__(self, models: dict[str, ModelEntry], runners: dict[tuple[str, str], Runner]):
        self.models = models
        self.runners = runners

    def model(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(name)
        return entry

    def resolve(self, name: str, version: str = "") -> Runner:
        """The runner for ``version``, or for the primary when ``version`` is empty."""
        model = self.model(name)
        chosen = version or model.primary
        if chosen not in model.versions:
            raise VersionNotFound(name, chosen, list(model.versions))
        return self.runners[(name, chosen)]

    def versions(self, name: str) -> list[str]:
        return list(self.model(name).versions)


def signature_of(runner: Runner) -> Signature:
    """The runner's signature, known once it has loaded at least once."""
    if runner.signature is None:
        raise Unavailable(f"{runner.where} is not ready: {runner.reason}")
    return runner.signature


def check_request(runner: Runner, inputs: Sequence[TensorSpec], outputs: Sequence[str]) -> None:
    signature = signature_of(runner)
    check_inputs(inputs, signature.inputs)
    check_outputs(outputs, signature.outputs)
