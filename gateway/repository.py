"""The model repository on disk: ``<repo>/<name>/<version>/<artifact>`` plus model.yaml.

The artifact picks the runner: model.onnx (ONNX Runtime), model.joblib (scikit-learn),
model.py (custom Python) or runner.yaml (an external V2 server, no process). The
artifact's sha256 is taken when it is scanned, so that the registry (gateway.registry)
can tell whether what is served is what was recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from runners.config import (
    ConfigError,
    ExternalRunner,
    ModelConfig,
    load_external_runner,
    load_model_config,
)

log = structlog.get_logger(__name__)

ArtifactKind = Literal["onnx", "joblib", "python", "external"]
ARTIFACTS: dict[str, ArtifactKind] = {
    "model.onnx": "onnx",
    "model.joblib": "joblib",
    "model.py": "python",
    "runner.yaml": "external",
}


@dataclass(frozen=True)
class VersionEntry:
    model: str
    version: str
    path: Path
    kind: ArtifactKind
    sha256: str  # of the artifact file (runner.yaml for an external runner)
    external: ExternalRunner | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    config: ModelConfig
    versions: dict[str, VersionEntry]  # in version order, lowest first
    primary: str


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions sort as numbers and after nothing else; other names sort as text."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_entry(model: str, directory: Path) -> VersionEntry | None:
    present = [name for name in ARTIFACTS if (directory / name).exists()]
    if len(present) != 1:
        problem = "no model artifact" if not present else f"several artifacts {present}"
        log.warning("version skipped", model=model, version=directory.name, problem=problem)
        return None
    kind = ARTIFACTS[present[0]]
    external = load_external_runner(directory) if kind == "external" else None
    digest = sha256_file(directory / present[0])
    return VersionEntry(model, directory.name, directory, kind, digest, external)


def load_model(directory: Path) -> ModelEntry:
    """One model directory; raises ConfigError when it cannot be served."""
    config = load_model_config(directory)
    entries = [
        entry
        for sub in sorted(
            (p for p in directory.iterdir() if p.is_dir()), key=lambda p: version_key(p.name)
        )
        if not sub.name.startswith(".")
        if (entry := _version_entry(directory.name, sub)) is not None
    ]
    if not entries:
        raise ConfigError(f"{directory}: no servable version directory")
    versions = {entry.version: entry for entry in entries}
    primary = config.primary or entries[-1].version
    if primary not in versions:
        raise ConfigError(f"{directory / 'model.yaml'}: primary '{primary}' is not a version here")
    unknown = sorted(set(config.runner.versions or []) - set(versions))
    if unknown:
        raise ConfigError(
            f"{directory / 'model.yaml'}: runner.versions names {unknown}, not versions here"
        )
    return ModelEntry(directory.name, directory, config, versions, primary)


def scan(repo: Path) -> dict[str, ModelEntry]:
    """Every servable model in the repository; broken ones are logged and left out."""
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} is not a directory")
    models: dict[str, ModelEntry] = {}
    for directory in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            models[directory.name] = load_model(directory)
        except ConfigError as exc:
            log.error("model skipped", model=directory.name, error=str(exc))
    return models
