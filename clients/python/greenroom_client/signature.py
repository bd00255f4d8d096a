"""Checks a request's tensors against a model's declared signature (its V2 metadata).

The gateway runs this before a runner sees a request, and runners run it too since
anyone may call a runner directly. -1 in a declared shape accepts any size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from greenroom_client.errors import InvalidArgument, InvalidInput
from greenroom_client.tensors import TensorSpec


def _fmt(specs: Iterable[TensorSpec]) -> str:
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in specs)


def shape_matches(actual: Sequence[int], declared: Sequence[int]) -> bool:
    if len(actual) != len(declared):
        return False
    return all(d in (-1, a) for a, d in zip(actual, declared, strict=True))


def check_inputs(given: Sequence[TensorSpec], declared: Sequence[TensorSpec]) -> None:
    by_name = {spec.name: spec for spec in declared}
    for spec in given:
        want = by_name.get(spec.name)
        if want is None:
            raise InvalidInput(
                spec.name, f"is not an input of this model; its inputs are: {_fmt(declared)}"
            )
        if spec.datatype != want.datatype:
            raise InvalidInput(
                spec.name, f"datatype {spec.datatype} does not match the model's {want.datatype}"
            )
        if not shape_matches(spec.shape, want.shape):
            raise InvalidInput(
                spec.name,
                f"shape {list(spec.shape)} does not match the model's {list(want.shape)}",
            )
    given_names = {spec.name for spec in given}
    for want in declared:
        if want.name not in given_names:
            raise InvalidInput(want.name, f"is missing; the model takes: {_fmt(declared)}")


def check_outputs(requested: Sequence[str], declared: Sequence[TensorSpec]) -> None:
    names = {spec.name for spec in declared}
    for name in requested:
        if name not in names:
            raise InvalidArgument(
                f"output '{name}' is not an output of this model; its outputs are: "
                f"{', '.join(sorted(names))}"
            )


# Request layouts a SignatureCheck remembers at most (then it starts over).
MAX_LAYOUTS = 1024


class SignatureCheck:
    """``check_inputs`` and ``check_outputs`` against one signature, remembering the request
    layouts (input names, datatypes and shapes; requested outputs) that passed: callers
    repeat a handful of them, so each is checked once, on the gateway's and on a runner's
    hot path alike. A layout that fails is not remembered, so it fails every time."""

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._passed: dict[tuple[tuple[TensorSpec, ...], tuple[str, ...]], None] = {}

    def __call__(self, given: Sequence[TensorSpec], requested: Sequence[str]) -> None:
        layout = (tuple(given), tuple(requested))
        if layout in self._passed:
            return
        check_inputs(given, self._inputs)
        check_outputs(requested, self._outputs)
        if len(self._passed) >= MAX_LAYOUTS:
            self._passed.clear()
        self._passed[layout] = None
