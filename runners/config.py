"""model.yaml and runner.yaml: what a model directory may say about itself.

Both files are optional. Without model.yaml the runner takes names, datatypes and shapes
from the artifact (the estimator or the ONNX graph) and the gateway serves the highest
version. The gateway and every runner read these with the same classes.

    models/<name>/model.yaml
        task: classification | regression     # default: inferred from the artifact
        primary: "2"                           # default: the highest version
        inputs:  [{name, datatype, shape}]     # signature overrides (shape: -1 = any)
        outputs: [{name, datatype, shape}]
        runner: {threads: 1, startup_timeout_s: 60, max_batch_size: 256,
                 max_queue_delay_us: 0, preferred_batch_sizes: []}
          or runner: inprocess                 # ONNX only: run inside the gateway process
          or runner: {kind: inprocess, threads: 2, versions: ["2"]}  (gateway.inprocess)
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
listen. ``kind`` is ``process`` (the default: a supervised runner process) or
``inprocess`` (an ONNX model run by the gateway itself, gateway.inprocess; ``runner:
inprocess`` is short for ``{kind: inprocess}``); with ``versions``, only the versions it
lists run in process, the others in runner processes.

Dynamic batching (runners.batching), in Triton's words:

    runner: {max_batch_size: 64, max_queue_delay_us: 2000, preferred_batch_sizes: [8, 32]}

``max_batch_size`` caps, in rows, how many concurrent requests a runner merges into one
model call: 0 never merges. Unset, it is 256 for scikit-learn and ONNX models whose
inputs and outputs all have -1 as their first dimension, and 0 otherwise (custom
model.py: set it only if predict answers each row from that row alone). A request bigger
than the cap still runs, alone. ``max_queue_delay_us`` (default 0: never wait) is how
long a request may wait for others to fill its batch: the batch goes as soon as it
reaches ``max_batch_size`` or one of ``preferred_batch_sizes`` (the largest one it can
form from what is queued), and with whatever is queued when the delay is up. With
preferred sizes, a batch that need not wait is cut at one of them, or else at most at
the largest. Preferred sizes count rows, are positive and at most ``max_batch_size``,
and are kept sorted without duplicates. Either option needs ``max_batch_size`` set (and
not 0) in the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
    max_queue_delay_us: int = Field(default=0, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)

    # Runner processes per version; the gateway balances by least outstanding requests.
    instances: int = Field(default=1, ge=1, le=32)
    # "inprocess": the gateway runs the (ONNX) model itself, no runner process; for the
    # versions listed in ``versions`` only, when given (the others get runner processes).
    kind: Literal["process", "inprocess"] = "process"
    versions: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_alone(cls, value: object) -> object:
        """``runner: inprocess`` (a bare string) is short for ``runner: {kind: inprocess}``."""
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _inprocess_options(self) -> RunnerOptions:
        if self.versions is not None and self.kind != "inprocess":
            raise ValueError("'versions' lists the versions run in process: set kind: inprocess")
        if self.kind == "inprocess" and self.versions is None and self.instances != 1:
            raise ValueError("'instances' counts runner processes; an inprocess model has none")
        return self

    def in_process(self, version: str) -> bool:
        """Whether the gateway runs this version itself (gateway.inprocess)."""
        return self.kind == "inprocess" and (self.versions is None or version in self.versions)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive_sorted(cls, sizes: list[int]) -> list[int]:
        if any(size <= 0 for size in sizes):
            raise ValueError(f"preferred_batch_sizes must be positive, got {sizes}")
        return sorted(set(sizes))

    @model_validator(mode="after")
    def _batching_needs_a_cap(self) -> RunnerOptions:
        if not (self.max_queue_delay_us or self.preferred_batch_sizes):
            return self
        if not self.max_batch_size:
            raise ValueError(
                "max_queue_delay_us and preferred_batch_sizes need max_batch_size set above 0"
            )
        if self.preferred_batch_sizes and self.preferred_batch_sizes[-1] > self.max_batch_size:
            raise ValueError(
                f"preferred_batch_sizes {self.preferred_batch_sizes} must not exceed "
                f"max_batch_size {self.max_batch_size}"
            )
        return self


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
