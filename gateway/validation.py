"""Validation of one model version before it shadows or is promoted.

The promotion test (gateway.evaluation) judges a candidate on live traffic, so it can only
start once the candidate is already shadowing. These checks stop an obviously broken
version earlier (a collapsed accuracy, a feature it must ignore, too slow) and they are
the model owner's own words for what "working" means. A version with no declared check
passes: validation is opt-in.

Where checks come from (``load_checks``):

* model.yaml ``validation:`` and every ``<model dir>/tests/*.yaml`` (the same
  ``runners.config.Validation`` schema; one file per concern, e.g. ``tests/colour.yaml``).
  A holdout path is relative to the model directory in both.
* ``<model dir>/tests/test_*.py``: the owner's own pytest files, run in a subprocess with
  ``GREENROOM_TARGET`` (the gateway's host:port), ``GREENROOM_MODEL`` and
  ``GREENROOM_VERSION`` set, so that they call exactly the version under test::

      import os
      import numpy as np
      from greenroom_client import Client

      def test_a_known_flower():
          with Client(os.environ["GREENROOM_TARGET"], timeout=10) as client:
              x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
              result = client.infer(os.environ["GREENROOM_MODEL"], {"input": x},
                                    version=os.environ["GREENROOM_VERSION"])
          assert result.outputs["label"][0] == b"setosa"

The holdout is a CSV file with a header: one column per feature (the names of model.yaml
``features`` when given, in any order; otherwise the header defines them), then a
``label`` column. Features listed in ``categorical`` stay strings; every other column
must hold numbers. The model sees ``rows x features``: float64 when every feature is
numeric, else an object array.

What the checks compute:

* ``min_accuracy``: share of holdout rows whose predicted label equals the ``label``
  column, both compared as strings.
* ``max_mae``: mean absolute error of the predicted values against the numeric labels.
* ``invariance``: each holdout row is asked again with the feature set to each of
  ``values`` (or moved by +delta and -delta); a row counts as changed when any of those
  answers differs from its original answer (regression: by more than ``max_change``).
  The check fails when the changed share is above ``tolerance``.
* ``latency_budget_ms``: p99 of the latency of single-row calls, over up to 200 holdout
  rows (repeated to at least 20 calls: a p99 of a handful of calls means nothing), after
  one unmeasured warm-up call.

Checks run one after another (a latency measured beside other checks' traffic would be
wrong). A check never raises: a bad holdout, a runner error or a model that answers the
wrong kind of output fails that check, with the reason, and the other checks still run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import ValidationError

from gateway.prediction import Predict, Prediction
from gateway.process_group import signal_group
from runners.config import ConfigError, Invariance, ModelConfig, Validation

__all__ = [
    "NO_CHECKS",
    "Check",
    "CheckKind",
    "CheckResult",
    "Holdout",
    "HoldoutError",
    "Predict",
    "Prediction",
    "ValidationResult",
    "load_checks",
    "read_holdout",
    "validate",
]

LABEL = "label"
LATENCY_MIN_CALLS = 20
LATENCY_MAX_CALLS = 200
# Regression answers this close (relative) are the same answer, whatever ``max_change``:
# a row computed in another batch may differ in its last bits.
SAME_VALUE_RTOL = 1e-7
OUTPUT_TAIL_LINES = 30
OUTPUT_TAIL_CHARS = 4000
NO_CHECKS = "no validation checks are declared (model.yaml 'validation:' or tests/)"


# --------------------------------------------------------------------------- interface


CheckKind = Literal["min_accuracy", "max_mae", "invariance", "latency_budget_ms", "python_tests"]


@dataclass(frozen=True, slots=True)
class Check:
    """One declared check; ``name`` says where it was declared and what it asks."""

    name: str
    kind: CheckKind
    holdout: Path | None = None
    threshold: float | None = None
    invariance: Invariance | None = None
    tests_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The verdict on one version; ``at`` is a Unix time, ``note`` explains an empty list."""

    model: str
    version: str
    passed: bool
    checks: list[CheckResult]
    at: float
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, for the journal and ``--json``."""
        return asdict(self)


class HoldoutError(ValueError):
    """A holdout file that cannot be used; the message names the file (and the line)."""


class _CheckFailed(Exception):
    """A check that cannot pass for a reason its message states (not a crash)."""


# --------------------------------------------------------------------------- declarations


def load_checks(model_dir: Path, config: ModelConfig) -> list[Check]:
    """Every check declared for a model, model.yaml's first, then tests/ in name order.

    Raises ConfigError naming the file when a tests/*.yaml is unreadable or invalid, or a
    file asks for a holdout metric without naming a holdout.
    """
    checks: list[Check] = []
    if config.validation is not None:
        where = model_dir / "model.yaml"
        checks += _declared("model.yaml", where, config.validation, model_dir)
    tests_dir = model_dir / "tests"
    for path in _validation_files(tests_dir):
        spec = _read_validation(path)
        checks += _declared(f"tests/{path.name}", path, spec, model_dir)
    if tests_dir.is_dir() and any(p.is_file() for p in tests_dir.glob("test_*.py")):
        # Absolute: pytest runs with the model directory as its working directory.
        where = tests_dir.absolute()
        checks.append(Check("tests/test_*.py: pytest", "python_tests", tests_dir=where))
    return checks


def _validation_files(tests_dir: Path) -> list[Path]:
    if not tests_dir.is_dir():
        return []
    return sorted(p for p in tests_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _read_validation(path: Path) -> Validation:
    try:
        return Validation.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _declared(source: str, where: Path, spec: Validation, model_dir: Path) -> list[Check]:
    """The checks one Validation block declares, named after ``source``."""
    asked = _holdout_metrics(spec)
    if spec.holdout is None:
        if asked:
            raise ConfigError(f"{where}: validation {', '.join(asked)} needs a 'holdout' file")
        return []
    path, on = model_dir / spec.holdout, spec.holdout
    checks: list[Check] = []
    if spec.min_accuracy is not None:
        name = f"{source}: min_accuracy {spec.min_accuracy:g} on {on}"
        checks.append(Check(name, "min_accuracy", path, spec.min_accuracy))
    if spec.max_mae is not None:
        name = f"{source}: max_mae {spec.max_mae:g} on {on}"
        checks.append(Check(name, "max_mae", path, spec.max_mae))
    for inv in spec.invariance:
        name = f"{source}: {_invariance_name(inv)} on {on}"
        checks.append(Check(name, "invariance", path, inv.tolerance, invariance=inv))
    if spec.latency_budget_ms is not None:
        name = f"{source}: latency p99 <= {spec.latency_budget_ms:g} ms on {on}"
        checks.append(Check(name, "latency_budget_ms", path, spec.latency_budget_ms))
    return checks


def _holdout_metrics(spec: Validation) -> list[str]:
    asked = {
        "min_accuracy": spec.min_accuracy is not None,
        "max_mae": spec.max_mae is not None,
        "invariance": bool(spec.invariance),
        "latency_budget_ms": spec.latency_budget_ms is not None,
    }
    return [name for name, given in asked.items() if given]


def _invariance_name(inv: Invariance) -> str:
    if inv.values is not None:
        return f"invariance {inv.feature} in [{', '.join(str(v) for v in inv.values)}]"
    return f"invariance {inv.feature} +/-{inv.delta:g}"


# --------------------------------------------------------------------------- holdout


@dataclass(frozen=True, slots=True)
class Holdout:
    """A parsed holdout file: ``rows`` is what the model is asked, ``labels`` the truth."""

    path: Path
    features: list[str]
    numeric: list[bool]  # per feature: parsed as a number (else kept as a string)
    rows: npt.NDArray[Any]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def column(self, feature: str | int) -> int:
        """The index of ``feature`` (a name, or already an index) among the features."""
        if isinstance(feature, int):
            if 0 <= feature < len(self.features):
                return feature
            raise _CheckFailed(f"feature index {feature} is out of range ({len(self.features)})")
        if feature in self.features:
            return self.features.index(feature)
        raise _CheckFailed(
            f"{feature!r} is not a feature of {self.path.name} ({', '.join(self.features)})"
        )


def read_holdout(
    path: Path, features: Sequence[str] | None = None, categorical: Collection[str] = ()
) -> Holdout:
    """Parse a holdout CSV; raises HoldoutError saying which file, line and column is bad."""
    records = _csv_records(path)
    if not records:
        raise HoldoutError(f"{path}: empty; it needs a header row and a '{LABEL}' column")
    header = [name.strip() for name in records[0][1]]
    names, indexes, label_at = _columns(path, header, features)
    numeric = [name not in categorical for name in names]
    columns = list(zip(names, indexes, numeric, strict=True))
    rows: list[list[Any]] = []
    labels: list[str] = []
    for line, record in records[1:]:
        if len(record) != len(header):
            raise HoldoutError(f"{path}:{line}: {len(record)} fields, the header has {len(header)}")
        labels.append(_label(path, line, record[label_at]))
        rows.append([_cell(path, line, name, record[i], kind) for name, i, kind in columns])
    if not rows:
        raise HoldoutError(f"{path}: no data rows after the header")
    dtype = np.float64 if all(numeric) else object
    return Holdout(path, names, numeric, np.array(rows, dtype=dtype), labels)


def _csv_records(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank CSV records with the line each starts on."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise HoldoutError(f"{path}: cannot be read ({exc})") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    try:
        for record in reader:
            if any(cell.strip() for cell in record):
                records.append((reader.line_num, record))
    except csv.Error as exc:
        raise HoldoutError(f"{path}:{reader.line_num}: {exc}") from exc
    return records


def _columns(
    path: Path, header: list[str], features: Sequence[str] | None
) -> tuple[list[str], list[int], int]:
    """Feature names in model order, their CSV column indexes, and the label's index."""
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise HoldoutError(f"{path}: duplicated columns {duplicated}")
    if LABEL not in header:
        raise HoldoutError(f"{path}: no '{LABEL}' column (header: {', '.join(header)})")
    present = [name for name in header if name != LABEL]
    if features:
        missing = [name for name in features if name not in present]
        extra = [name for name in present if name not in features]
        if missing or extra:
            raise HoldoutError(
                f"{path}: columns do not match model.yaml features: "
                f"missing {missing}, unexpected {extra}"
            )
        present = list(features)
    if not present:
        raise HoldoutError(f"{path}: no feature columns besides '{LABEL}'")
    return present, [header.index(name) for name in present], header.index(LABEL)


def _label(path: Path, line: int, text: str) -> str:
    label = text.strip()
    if not label:
        raise HoldoutError(f"{path}:{line}: the label is empty")
    return label


def _cell(path: Path, line: int, feature: str, text: str, numeric: bool) -> Any:
    if not numeric:
        return text.strip()
    try:
        return float(text)
    except ValueError:
        raise HoldoutError(
            f"{path}:{line}: column {feature!r}: {text!r} is not a number "
            "(list the feature in model.yaml 'categorical' if it is a category)"
        ) from None


# --------------------------------------------------------------------------- running


@dataclass
class _Session:
    """One validate call: each holdout is read, and answered on, once for all checks."""

    model: str
    version: str
    config: ModelConfig
    predict: Predict
    target: str | None
    python_timeout_s: float
    _holdouts: dict[Path, Holdout] = field(default_factory=dict, init=False)
    _answers: dict[Path, Prediction] = field(default_factory=dict, init=False)

    async def holdout(self, path: Path | None) -> Holdout:
        assert path is not None, "holdout checks always carry their file"
        if path not in self._holdouts:
            features, categorical = self.config.features, self.config.categorical
            holdout = await asyncio.to_thread(read_holdout, path, features, categorical)
            self._holdouts[path] = holdout
        return self._holdouts[path]

    async def answers(self, path: Path | None) -> tuple[Holdout, Prediction]:
        """The holdout and the model's answer on all of its rows (asked once)."""
        holdout = await self.holdout(path)
        if holdout.path not in self._answers:
            self._answers[holdout.path] = await self.predict(holdout.rows)
        return holdout, self._answers[holdout.path]


async def validate(
    model: str,
    version: str,
    model_dir: Path,
    config: ModelConfig,
    predict: Predict,
    *,
    target: str | None = None,
    python_timeout_s: float = 300.0,
) -> ValidationResult:
    """Run every check declared for ``model`` against ``version`` through ``predict``.

    ``target`` is the gateway's host:port for the owner's pytest files (without it they
    are not run, and the result fails). Never raises for a bad declaration or a failing
    model: a tests/*.yaml that cannot be loaded fails the result with the file's name.
    """
    try:
        checks = await asyncio.to_thread(load_checks, model_dir, config)
    except ConfigError as exc:
        failed = CheckResult("validation declarations", False, str(exc))
        return ValidationResult(model, version, False, [failed], time.time())
    if not checks:
        return ValidationResult(model, version, True, [], time.time(), note=NO_CHECKS)
    session = _Session(model, version, config, predict, target, python_timeout_s)
    results = [await _run(check, session) for check in checks]
    return ValidationResult(model, version, all(r.passed for r in results), results, time.time())


async def _run(check: Check, session: _Session) -> CheckResult:
    """One check; whatever goes wrong becomes its failure, so the other checks still run."""
    try:
        return await _CHECKS[check.kind](check, session)
    except (HoldoutError, _CheckFailed) as exc:
        return _failed(check, str(exc))
    except Exception as exc:  # a runner error, a model that cannot take the rows, ...
        return _failed(check, f"{type(exc).__name__}: {exc}")


def _failed(check: Check, detail: str) -> CheckResult:
    return CheckResult(check.name, False, detail, None, check.threshold)


def _verdict(check: Check, passed: bool, detail: str, value: float) -> CheckResult:
    return CheckResult(check.name, passed, detail, value, check.threshold)


# --------------------------------------------------------------------------- checks


async def _min_accuracy(check: Check, session: _Session) -> CheckResult:
    holdout, answer = await session.answers(check.holdout)
    predicted = _labels(answer, len(holdout))
    hits = sum(p == t for p, t in zip(predicted, holdout.labels, strict=True))
    accuracy, floor = hits / len(holdout), _threshold(check)
    passed = accuracy >= floor
    relation = ">=" if passed else "<"
    detail = f"accuracy {accuracy:.4f} ({hits}/{len(holdout)} rows) {relation} {floor:g}"
    return _verdict(check, passed, detail, accuracy)


async def _max_mae(check: Check, session: _Session) -> CheckResult:
    holdout, answer = await session.answers(check.holdout)
    predicted = _values(answer, len(holdout))
    mae, ceiling = float(np.mean(np.abs(predicted - _numeric_labels(holdout)))), _threshold(check)
    passed = mae <= ceiling
    relation = "<=" if passed else ">"
    detail = f"mean absolute error {mae:.6g} over {len(holdout)} rows {relation} {ceiling:g}"
    return _verdict(check, passed, detail, mae)


async def _invariance(check: Check, session: _Session) -> CheckResult:
    assert check.invariance is not None
    inv = check.invariance
    holdout, base = await session.answers(check.holdout)
    column = holdout.column(inv.feature)
    changed = np.zeros(len(holdout), dtype=bool)
    for rows in _variants(holdout, column, inv):
        changed |= _changed(base, await session.predict(rows), len(holdout), inv.max_change)
    count = int(changed.sum())
    share = count / len(holdout)
    passed = share <= inv.tolerance
    detail = (
        f"{count} of {len(holdout)} rows changed their answer "
        f"({share:.1%}; tolerance {inv.tolerance:.1%})"
    )
    return _verdict(check, passed, detail, share)


async def _latency(check: Check, session: _Session) -> CheckResult:
    holdout = await session.holdout(check.holdout)
    await session.predict(holdout.rows[:1])  # warm-up: connections, lazy loads, caches
    latencies = []
    for index in _latency_rows(len(holdout)):
        answer = await session.predict(holdout.rows[index : index + 1])
        latencies.append(answer.latency_ms)
    p99, budget = float(np.percentile(latencies, 99)), _threshold(check)
    passed = p99 <= budget
    relation = "<=" if passed else ">"
    detail = (
        f"p99 {p99:.2f} ms over {len(latencies)} single-row calls {relation} budget {budget:g} ms"
    )
    return _verdict(check, passed, detail, p99)


async def _python_tests(check: Check, session: _Session) -> CheckResult:
    assert check.tests_dir is not None
    if session.target is None:
        return _failed(check, "not run: no gateway address to call the version at (target is None)")
    env = {
        **os.environ,
        "GREENROOM_TARGET": session.target,
        "GREENROOM_MODEL": session.model,
        "GREENROOM_VERSION": session.version,
    }
    code, output = await _run_pytest(check.tests_dir, env, session.python_timeout_s)
    tail = _tail(output)
    if code is None:
        return _failed(check, f"timed out after {session.python_timeout_s:g} s\n{tail}")
    if code != 0:
        return _failed(check, f"pytest exited with status {code}\n{tail}")
    summary = tail.splitlines()[-1] if tail else "passed"
    return CheckResult(check.name, True, summary)


_CHECKS: dict[CheckKind, Callable[[Check, _Session], Awaitable[CheckResult]]] = {
    "min_accuracy": _min_accuracy,
    "max_mae": _max_mae,
    "invariance": _invariance,
    "latency_budget_ms": _latency,
    "python_tests": _python_tests,
}


# --------------------------------------------------------------------------- helpers


def _threshold(check: Check) -> float:
    assert check.threshold is not None, "metric checks always carry their threshold"
    return check.threshold


def _labels(answer: Prediction, rows: int) -> list[str]:
    if answer.labels is None:
        raise _CheckFailed("the model answered no labels (a regressor? use max_mae)")
    if len(answer.labels) != rows:
        raise _CheckFailed(f"the model answered {len(answer.labels)} labels for {rows} rows")
    return [str(label) for label in answer.labels]


def _values(answer: Prediction, rows: int) -> npt.NDArray[np.float64]:
    if answer.values is None:
        raise _CheckFailed("the model answered no values (a classifier? use min_accuracy)")
    values = np.asarray(answer.values, dtype=np.float64).reshape(-1)
    if len(values) != rows:
        raise _CheckFailed(f"the model answered {len(values)} values for {rows} rows")
    return values


def _numeric_labels(holdout: Holdout) -> npt.NDArray[np.float64]:
    try:
        return np.array([float(label) for label in holdout.labels], dtype=np.float64)
    except ValueError as exc:
        raise _CheckFailed(f"{holdout.path}: max_mae needs numeric labels ({exc})") from None


def _variants(holdout: Holdout, column: int, inv: Invariance) -> list[npt.NDArray[Any]]:
    """The holdout rows with ``column`` set to each value, or moved by +delta and -delta."""
    numeric = holdout.numeric[column]
    variants = []
    if inv.values is not None:
        for value in inv.values:
            rows = holdout.rows.copy()
            rows[:, column] = _as_cell(value, numeric, holdout.features[column])
            variants.append(rows)
        return variants
    if not numeric:
        raise _CheckFailed(f"delta needs a numeric feature; {inv.feature!r} is categorical")
    assert inv.delta is not None
    for step in (inv.delta, -inv.delta):
        rows = holdout.rows.copy()
        rows[:, column] = rows[:, column].astype(np.float64) + step
        variants.append(rows)
    return variants


def _as_cell(value: str | float, numeric: bool, feature: str) -> Any:
    """An invariance value in the column's own type (a float, or a category string)."""
    if not numeric:
        return value if isinstance(value, str) else format(value, "g")
    try:
        return float(value)
    except ValueError:
        raise _CheckFailed(f"{value!r} is not a number, and {feature!r} is numeric") from None


def _changed(
    base: Prediction, answer: Prediction, rows: int, max_change: float
) -> npt.NDArray[np.bool_]:
    """Per row: whether ``answer`` differs from ``base`` (the original rows' answer)."""
    if base.labels is not None:
        before, after = _labels(base, rows), _labels(answer, rows)
        return np.array([a != b for a, b in zip(before, after, strict=True)], dtype=bool)
    before_values, after_values = _values(base, rows), _values(answer, rows)
    same = np.isclose(after_values, before_values, rtol=SAME_VALUE_RTOL, atol=max_change)
    return ~same


def _latency_rows(count: int) -> list[int]:
    """Row indexes of the measured calls: up to LATENCY_MAX_CALLS, at least the minimum."""
    calls = max(LATENCY_MIN_CALLS, min(LATENCY_MAX_CALLS, count))
    return [index % count for index in range(calls)]


async def _run_pytest(
    tests_dir: Path, env: dict[str, str], timeout_s: float
) -> tuple[int | None, str]:
    """pytest's exit status (None: killed at the time limit) and its combined output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests_dir)),
        cwd=tests_dir.parent,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: a time-out kills its children too
    )
    assert process.stdout is not None
    reading = asyncio.ensure_future(process.stdout.read())
    try:
        code: int | None = await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        code = None
    finally:
        if process.returncode is None:
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
    return code, await _collected(reading)


async def _collected(reading: asyncio.Future[bytes]) -> str:
    """What the run wrote; a child that escaped its group and holds the pipe is not waited."""
    try:
        return (await asyncio.wait_for(reading, 5.0)).decode(errors="replace")
    except TimeoutError:
        return ""


def _tail(output: str) -> str:
    lines = output.strip().splitlines()[-OUTPUT_TAIL_LINES:]
    return "\n".join(lines)[-OUTPUT_TAIL_CHARS:]
