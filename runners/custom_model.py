"""Custom Python models: a ``model.py`` in the version directory that defines ``Model``.

This is the escape hatch for anything the scikit-learn and ONNX adapters do not cover
(preprocessing in plain Python, a rules engine, another framework). The interface::

    # models/<name>/<version>/model.py
    import numpy as np
    from pathlib import Path

    class Model:
        # The V2 signature: -1 marks a variable dimension (the batch first).
        # model.yaml inputs/outputs, when present, take precedence (renaming these
        # in order); one of the two must declare the signature.
        inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        outputs = [{"name": "score", "datatype": "FP64", "shape": [-1]}]

        def load(self, path: Path) -> None:
            # Optional. Called once, before any request, with the version directory:
            # read weights, vocabularies... from files next to model.py.
            ...

        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # Called in a gRPC handler thread with the request's arrays, already checked
            # against ``inputs`` (names, datatypes, shapes). Return every declared
            # output; the runner casts each to its declared datatype. BYTES inputs
            # arrive as object arrays of ``bytes``.
            return {"score": inputs["x"].sum(axis=1)}

The class is constructed without arguments. The version directory is put at the front of
``sys.path`` so that ``model.py`` can import helper modules kept beside it. To reject a
request with INVALID_ARGUMENT, raise ``greenroom_client.errors.InvalidInput(name, why)``;
any other exception answers INTERNAL and is logged with its traceback by the runner.
With ``runner.threads`` above 1, ``predict`` may run in several threads at once.

Requests are not batched by default: the runner cannot know that ``predict`` answers each
row from that row alone. If it does, model.yaml ``runner: {max_batch_size: 256}`` lets
concurrent requests be merged into one ``predict`` call (runners.batching).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from greenroom_client.tensors import TensorSpec
from runners.config import ConfigError, ModelConfig, TensorDecl
from runners.model import Arrays, Binding, Model, bind, validate_decl


def _import_user_module(artifact: Path, name: str, version: str) -> Any:
    """Import model.py under a name of its own, with its directory importable."""
    directory = str(artifact.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module_name = "greenroom_model_" + re.sub(r"\W", "_", f"{name}_{version}")
    spec = importlib.util.spec_from_file_location(module_name, artifact)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{artifact}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _class_signature(user_class: Any, attribute: str, where: str) -> list[TensorSpec] | None:
    """The class attribute ``inputs``/``outputs`` as specs, or None when it is absent."""
    raw = getattr(user_class, attribute, None)
    if raw is None:
        return None
    try:
        decls = [TensorDecl.model_validate(item) for item in raw]
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"{where}: Model.{attribute} is not a list of tensors: {exc}") from exc
    return [validate_decl(decl, where) for decl in decls]


def _signature(
    user_class: Any, attribute: str, decls: list[TensorDecl] | None, where: str
) -> list[Binding]:
    native = _class_signature(user_class, attribute, where)
    if native is not None:
        return bind(native, decls, attribute, where)
    if decls is None:
        raise ConfigError(
            f"{where}: no {attribute} declared; set Model.{attribute} or model.yaml {attribute}"
        )
    specs = [validate_decl(decl, where) for decl in decls]
    return [Binding(spec, spec.name) for spec in specs]


class CustomModel(Model):
    """Adapter around the user's ``Model`` instance: renames tensors, nothing else."""

    platform = "python"

    def __init__(
        self, name: str, version: str, inputs: list[Binding], outputs: list[Binding], user: Any
    ):
        super().__init__(name, version, inputs, outputs)
        self._user = user
        self._input_names = {b.spec.name: b.native for b in inputs}
        self._output_names = {b.native: b.spec.name for b in outputs}

    @classmethod
    def load(cls, artifact: Path, name: str, version: str, config: ModelConfig) -> CustomModel:
        module = _import_user_module(artifact, name, version)
        user_class = getattr(module, "Model", None)
        if not isinstance(user_class, type) or not callable(getattr(user_class, "predict", None)):
            raise ConfigError(f"{artifact}: defines no class Model with a predict method")
        inputs = _signature(user_class, "inputs", config.inputs, str(artifact))
        outputs = _signature(user_class, "outputs", config.outputs, str(artifact))
        user = user_class()
        if callable(getattr(user, "load", None)):
            user.load(artifact.parent)
        return cls(name, version, inputs, outputs, user)

    def predict(self, inputs: Arrays, outputs: Sequence[str] | None = None) -> Arrays:
        given = {self._input_names[name]: array for name, array in inputs.items()}
        answer = self._user.predict(given)
        if not isinstance(answer, dict):
            raise TypeError(f"Model.predict returned {type(answer).__name__}, not a dict")
        return {
            self._output_names[native]: array
            for native, array in answer.items()
            if native in self._output_names
        }
