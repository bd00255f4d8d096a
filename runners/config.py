"""model.yaml and runner.yaml: what a model directory may say about itself.

Both files are optional. Without model.yaml the runner takes names, datatypes and shapes
from the artifact (the estimator or the ONNX graph) and the gateway serves the highest
version. The gateway and every runner read these with the same classes.

    models/<name>/model.yaml
        task: classification | regression     # default: inferred from the artifact
        primary: "2"                           # default: the highest version
        inputs:  [{name, datatype, shape}]     # signature overrides (shape: -1 = any)
        outputs: [{name, datatype, shape}]
        runner: {threads: 1, startup_timeout_s: 60, max_batch_size: 256}
        classes: ["setosa", "versicolor", "virginica"]  # probabilities' column order
        promotion: {auto: false, interval_s: 60, min_pairs: 200, alpha: 0.05,
                    max_error_rate: 0.01, max_p99_ratio: 1.5, old_primary_shadow_fraction: 1.0}
    models/<name>/<version>/runner.yaml
        address: host:port                     # an external V2 server; no process started
        model: remote-name                     # its name there (default: the same name)
        version: "3"                           # its version there (default: its own choice)
      or
        command: [./greenroom-runner-go]       # a runner in any language, started with the
                                               # runner arguments appended and supervised
                                               # like a Python runner (relative paths are
                                               # from the version directory)

runner options: ``threads`` is how many model calls run at once (and ONNX Runtime's
intra-op threads); ``startup_timeout_s`` how long the gateway waits for the runner to
listen. ``max_batch_size`` caps, in rows, how many concurrent requests a runner merges
into one model call (runners.batching; no delay is added to wait for a batch to fill):
0 never merges. Unset, it is 256 for scikit-learn and ONNX models whose inputs and
outputs all have -1 as their first dimension, and 0 otherwise (custom model.py: set it
only if predict answers each row from that row alone). A request bigger than the cap
still runs, alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    max_batch_size: int | None = Field(default=None, ge=0)


class PromotionPolicy(BaseModel):
    """When a shadow has earned promotion; ``auto`` checks on a schedule and promotes."""

    model_config = ConfigDict(extra="forbid")
    auto: bool = False
    interval_s: float = Field(default=60.0, gt=0)
    min_pairs: int = Field(default=200, ge=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p99_ratio: float | None = Field(default=1.5, gt=0)
    # Fraction at which the old primary keeps shadowing after a promotion (0: it leaves).
    old_primary_shadow_fraction: float = Field(default=1.0, ge=0, le=1)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: Task | None = None
    primary: str | None = None
    inputs: list[TensorDecl] | None = None
    outputs: list[TensorDecl] | None = None
    # The order of the probabilities output's columns, when the runner does not say.
    classes: list[str] | None = None
    runner: RunnerOptions = Field(default_factory=RunnerOptions)
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)


class ExternalRunner(BaseModel):
    """runner.yaml: a V2 server at ``address``, or a runner process of any language that
    the gateway starts with ``command`` (plus the runner arguments) and supervises."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = None
    command: list[str] | None = None
    model: str | None = None
    version: str | None = None

    @model_validator(mode="after")
    def _one_way_to_reach_it(self) -> ExternalRunner:
        if (self.address is None) == (self.command is None):
            raise ValueError("runner.yaml needs exactly one of 'address' and 'command'")
        if self.command is not None and not self.command:
            raise ValueError("runner.yaml 'command' is empty")
        return self


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
