"""model.yaml and runner.yaml: what a model directory may say about itself.

Both files are optional. Without model.yaml the runner takes names, datatypes and shapes
from the artifact (the estimator or the ONNX graph) and the gateway serves the highest
version. The gateway and every runner read these with the same classes.

    models/<name>/model.yaml
        task: classification | regression     # default: inferred from the artifact
        primary: "2"                           # default: the highest version
        inputs:  [{name, datatype, shape}]     # signature overrides (shape: -1 = any)
        outputs: [{name, datatype, shape}]
        runner: {threads: 1, startup_timeout_s: 60}
    models/<name>/<version>/runner.yaml
        address: host:port                     # an external V2 server; no process started
        model: remote-name                     # its name there (default: the same name)
        version: "3"                           # its version there (default: its own choice)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Task = Literal["classification", "regression", "other"]


class TensorDecl(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    datatype: str = "FP32"
    shape: list[int] = Field(default_factory=lambda: [-1])


class RunnerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threads: int = Field(default=1, ge=1, le=64)
    startup_timeout_s: float = Field(default=60.0, gt=0)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: Task | None = None
    primary: str | None = None
    inputs: list[TensorDecl] | None = None
    outputs: list[TensorDecl] | None = None
    runner: RunnerOptions = Field(default_factory=RunnerOptions)


class ExternalRunner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str
    model: str | None = None
    version: str | None = None


class ConfigError(ValueError):
    """A model.yaml or runner.yaml that cannot be used; the message names the file."""


def _load_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_model_config(model_dir: Path) -> ModelConfig:
    """model.yaml of a model directory (``models/<name>``), or the defaults."""
    path = model_dir / "model.yaml"
    if not path.exists():
        return ModelConfig()
    try:
        return ModelConfig.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_external_runner(version_dir: Path) -> ExternalRunner | None:
    path = version_dir / "runner.yaml"
    if not path.exists():
        return None
    try:
        return ExternalRunner.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
