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
        features: [sepal_length, ...]          # names of the input columns, in order
        categorical: [colour]                  # features compared as categories in drift
        monitoring: {input_sample_rate: 0.0, drift_window: 1000, check_interval_s: 60}
        validation: {holdout: holdout.csv, min_accuracy: 0.9, max_mae: null,
                     invariance: [{feature: colour, values: [red, blue]}],
                     latency_budget_ms: 50}    # gateway.validation; also <name>/tests/
        retraining: {schedule: "0 3 * * *", command: [python, train.py, "{dataset}", "{output}"],
                     timeout_s: 600, shadow_fraction: 1.0, check_interval_s: 60,
                     triggers: {min_accuracy: 0.8, last_labels: 500, max_psi: 0.2}}
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
``lean`` (default true) serves a ``model.joblib`` linear model (LogisticRegression,
LinearRegression, Ridge, LinearSVC... ``runners.sklearn_lean.KINDS``, after StandardScaler
steps or not), decision tree or random forest with numpy kernels proven bit-equal to
scikit-learn at load, in a runner that never imports scikit-learn (runners.sklearn_lean);
false loads it with scikit-learn in the runner (for a forest scored in batches of
thousands of rows, where scikit-learn's compiled walk is faster: runners.tree_kernels).

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
from croniter import croniter
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
    # inprocess only: run the model on the gateway's event loop, with no thread hand-off,
    # for models that answer in well under a millisecond. Unset: inline unless threads or
    # max_queue_delay_us ask for a pool of model threads.
    inline: bool | None = None
    # model.joblib only: serve linear models and trees with numpy kernels proven equal at
    # load, in a runner that never imports scikit-learn (runners.sklearn_lean); false
    # keeps it.
    lean: bool = True

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
        if self.inline and self.kind != "inprocess":
            raise ValueError("'inline' runs the model on the gateway's loop: set kind: inprocess")
        if self.inline and (self.max_queue_delay_us or self.threads > 1):
            raise ValueError(
                "'inline' runs one model call at a time and cannot wait for a batch: "
                "drop threads or max_queue_delay_us, or set inline: false"
            )
        return self

    def runs_inline(self) -> bool:
        """Whether an in-process version runs on the gateway's event loop."""
        if self.inline is not None:
            return self.inline
        return self.threads == 1 and not self.max_queue_delay_us

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


class Monitoring(BaseModel):
    """Which live inputs the ledger keeps: drift, retraining and backtests read them."""

    model_config = ConfigDict(extra="forbid")
    # Share of requests (sampled per request) whose input rows are written to the ledger.
    input_sample_rate: float = Field(default=0.0, ge=0, le=1)
    # Rows of the most recent sampled inputs compared with the reference (at least 500).
    drift_window: int = Field(default=1000, ge=500)
    # How often the gateway recomputes drift for its gauges and triggers.
    check_interval_s: float = Field(default=60.0, gt=0)


class Invariance(BaseModel):
    """Changing ``feature`` among ``values`` (or by ``delta``) must not change the answer."""

    model_config = ConfigDict(extra="forbid")
    feature: str | int
    values: list[str | float] | None = None
    delta: float | None = None
    # Share of holdout rows whose answer may change without failing the check.
    tolerance: float = Field(default=0.0, ge=0, le=1)
    # Regression: an answer that moves by at most this much (absolute) counts as unchanged.
    max_change: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _one_change(self) -> Invariance:
        if (self.values is None) == (self.delta is None):
            raise ValueError("an invariance check needs exactly one of 'values' and 'delta'")
        return self


class Validation(BaseModel):
    """Checks a version must pass before it shadows or is promoted (gateway.validation)."""

    model_config = ConfigDict(extra="forbid")
    # CSV relative to the model directory: one column per feature, then ``label``.
    holdout: str | None = None
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    max_mae: float | None = Field(default=None, ge=0)
    invariance: list[Invariance] = Field(default_factory=list)
    # p99 of single-row requests through the gateway, in milliseconds.
    latency_budget_ms: float | None = Field(default=None, gt=0)


class RetrainingTriggers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Retrain when the primary's accuracy over its last ``last_labels`` labels is below this.
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    last_labels: int = Field(default=500, ge=1)
    # Retrain when any feature's PSI against the reference is above this.
    max_psi: float | None = Field(default=None, gt=0)


class Retraining(BaseModel):
    """A training command run on a cron schedule and/or when a trigger fires.

    ``command`` is an argv list run in the model directory; ``{dataset}`` (the exported
    labelled data, CSV) and ``{output}`` (an empty folder the command fills with one
    artifact) are replaced in every argument.
    """

    model_config = ConfigDict(extra="forbid")
    command: list[str]
    schedule: str | None = None
    triggers: RetrainingTriggers = Field(default_factory=RetrainingTriggers)
    timeout_s: float = Field(default=600.0, gt=0)
    check_interval_s: float = Field(default=60.0, gt=0)
    shadow_fraction: float = Field(default=1.0, gt=0, le=1)

    @field_validator("command")
    @classmethod
    def _not_empty(cls, command: list[str]) -> list[str]:
        if not command:
            raise ValueError("retraining 'command' is empty")
        return command

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        if schedule is not None and not croniter.is_valid(schedule):
            raise ValueError(f"retraining 'schedule' is not a cron expression: {schedule!r}")
        return schedule


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
    features: list[str] | None = None
    categorical: list[str] = Field(default_factory=list)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    validation: Validation | None = None
    retraining: Retraining | None = None


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
