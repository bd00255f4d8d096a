"""What a runner serves: one model version behind a V2 signature, whatever its artifact.

A version directory holds exactly one artifact, and the artifact picks the adapter:

    model.onnx    -> runners.onnx_model.OnnxModel      (platform "onnxruntime")
    model.joblib  -> runners.sklearn_lean.LeanSklearnModel (platform "sklearn"): numpy
                     kernels for linear models, else runners.sklearn_model.SklearnModel
    model.py      -> runners.custom_model.CustomModel   (platform "python")

The server only sees the ``Model`` interface below, so adding an artifact type means one
adapter and one entry in ``_ADAPTERS``; the server, the gateway and the clients do not
change.

Signature overrides (model.yaml ``inputs``/``outputs``) are applied the same way by every
adapter, with ``bind``: the declarations map *in order* onto the tensors the artifact
itself has (the estimator's features and answers, the ONNX graph's inputs and outputs),
renaming them and pinning their datatype and shape. Inputs must be declared all or
nothing; outputs may be declared in part, which serves only the first ones.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from greenroom_client.tensors import DTYPES, TensorSpec
from runners.config import ConfigError, ModelConfig, TensorDecl

Arrays = dict[str, npt.NDArray[Any]]

# Artifact file name -> "module:class" of its adapter (imported lazily: a scikit-learn
# runner should not pay for importing onnxruntime, nor the other way round).
_ADAPTERS: dict[str, str] = {
    "model.onnx": "runners.onnx_model:OnnxModel",
    "model.joblib": "runners.sklearn_lean:LeanSklearnModel",
    "model.py": "runners.custom_model:CustomModel",
}


@dataclass(frozen=True, slots=True)
class Binding:
    """A served tensor (``spec``, what clients see) and the artifact's own name for it."""

    spec: TensorSpec
    native: str


class Model(ABC):
    """One loaded model version. ``predict`` is synchronous and runs in a gRPC handler
    thread, in several at once when ``runner.threads`` is above 1.

    ``inputs``/``outputs`` are the V2 signature (-1 marks a variable dimension, the batch
    first). The server checks requests against ``inputs`` before calling ``predict``, so
    an adapter receives exactly the declared names, datatypes and ranks; it casts outputs
    to the declared datatypes itself afterwards.

    ``row_wise`` says that each output row depends on its input row alone, so that the
    runner may merge concurrent requests into one ``predict`` call (runners.batching);
    ``predict`` then receives the rows of several requests at once.
    """

    platform: str = "unknown"
    row_wise: bool = False

    def __init__(self, name: str, version: str, inputs: list[Binding], outputs: list[Binding]):
        self.name = name
        self.version = version
        self.input_bindings = inputs
        self.output_bindings = outputs
        self.inputs: list[TensorSpec] = [b.spec for b in inputs]
        self.outputs: list[TensorSpec] = [b.spec for b in outputs]
        # Per served output, string parameters sent with every answer (e.g. the ``classes``
        # that name a probabilities output's columns, which V2 metadata cannot say).
        self.output_parameters: dict[str, dict[str, str]] = {}

    @classmethod
    @abstractmethod
    def load(cls, artifact: Path, name: str, version: str, config: ModelConfig) -> Model:
        """Build the model from its artifact file; ConfigError when it cannot be served."""

    def check(self, inputs: Arrays) -> None:
        """Refuse a request's decoded arrays with InvalidInput (nothing by default). Runs
        per request, before requests are merged, so one bad request fails only itself."""
        return

    @abstractmethod
    def predict(self, inputs: Arrays, outputs: Sequence[str] | None = None) -> Arrays:
        """Answers keyed by output name. ``outputs`` names the ones the caller wants
        (None: all); an adapter may skip work for the others, or return them anyway."""


def validate_decl(decl: TensorDecl, where: str) -> TensorSpec:
    """A declaration as a TensorSpec, refusing datatypes and shapes V2 cannot carry."""
    if decl.datatype not in DTYPES:
        raise ConfigError(
            f"{where}: tensor '{decl.name}' has unknown datatype '{decl.datatype}' "
            f"(expected one of {', '.join(DTYPES)})"
        )
    if any(dim < -1 for dim in decl.shape):
        raise ConfigError(f"{where}: tensor '{decl.name}' has a bad shape {decl.shape}")
    return TensorSpec(decl.name, decl.datatype, tuple(decl.shape))


def bind(
    native: Sequence[TensorSpec], decls: Sequence[TensorDecl] | None, kind: str, where: str
) -> list[Binding]:
    """Apply model.yaml declarations of one kind ("inputs"/"outputs") onto native tensors."""
    if decls is None:
        return [Binding(spec, spec.name) for spec in native]
    names = [d.name for d in decls]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: {kind} declare a name twice: {names}")
    if kind == "inputs" and len(decls) != len(native):
        raise ConfigError(
            f"{where}: declares {len(decls)} inputs; the artifact takes {len(native)} "
            f"({', '.join(s.name for s in native)})"
        )
    if len(decls) > len(native):
        raise ConfigError(
            f"{where}: declares {len(decls)} {kind}; the artifact has only {len(native)} "
            f"({', '.join(s.name for s in native)})"
        )
    return [
        Binding(validate_decl(decl, where), spec.name)
        for decl, spec in zip(decls, native, strict=False)
    ]


def find_artifact(version_dir: Path) -> Path:
    """The one artifact of a version directory; ConfigError for none or several."""
    if not version_dir.is_dir():
        raise ConfigError(f"{version_dir}: not a directory")
    found = [version_dir / name for name in _ADAPTERS if (version_dir / name).is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        extra = (
            "; it has runner.yaml, an external server that needs no runner process"
            if (version_dir / "runner.yaml").exists()
            else ""
        )
        raise ConfigError(
            f"{version_dir}: no model artifact (expected one of {', '.join(_ADAPTERS)}){extra}"
        )
    raise ConfigError(
        f"{version_dir}: several model artifacts ({', '.join(p.name for p in found)}); "
        "a version directory must hold exactly one"
    )


def load_model(version_dir: Path, name: str, version: str, config: ModelConfig) -> Model:
    """Load the version directory's artifact with its adapter (slow: run it off the loop)."""
    artifact = find_artifact(version_dir)
    module_name, class_name = _ADAPTERS[artifact.name].split(":")
    adapter: type[Model] = getattr(importlib.import_module(module_name), class_name)
    return adapter.load(artifact, name, version, config)
