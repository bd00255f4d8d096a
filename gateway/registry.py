"""The registry: which artifact each version is, where it came from, and that it is intact.

A version is registered once (``greenroom register`` from a training script, a retraining
run, or the first start that finds it in the repository) with the sha256 of its artifact
file and its provenance; the record is never rewritten. At start-up every version on disk
is checked against its record, and one whose artifact bytes changed is refused (not
served), because its accuracy history would otherwise describe a different model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.ledger import Ledger
from gateway.ledger.governance import AlreadyRegistered
from gateway.ledger.records import JournalEntry, VersionRecord
from gateway.repository import ARTIFACTS, ModelEntry, VersionEntry, version_key
from greenroom_client.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from runners.config import ModelConfig

log = structlog.get_logger(__name__)

# An uploaded file's suffix says which artifact it is.
SUFFIXES = {".onnx": "model.onnx", ".joblib": "model.joblib", ".py": "model.py"}
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Provenance fields a caller may give in its metadata file; anything else is refused so
# that a typo does not silently lose a field.
METADATA_FIELDS = {"data", "code_ref", "parameters", "metrics", "parent", "author", "notes",
                   "framework", "framework_version"}  # fmt: skip


def artifact_file(entry: VersionEntry) -> Path:
    name = next(name for name, kind in ARTIFACTS.items() if kind == entry.kind)
    return entry.path / name


def framework_of(artifact: Path) -> tuple[str | None, str | None]:
    """What built the artifact, as far as the file itself says."""
    if artifact.name == "model.onnx":
        import onnx  # noqa: PLC0415 (only for ONNX artifacts)

        proto = onnx.load(str(artifact), load_external_data=False)
        return proto.producer_name or "onnx", proto.producer_version or None
    if artifact.name == "model.joblib":
        return "scikit-learn", importlib.metadata.version("scikit-learn")
    if artifact.name == "model.py":
        return "python", None
    return None, None


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(metadata) - METADATA_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"metadata has unknown fields {unknown}; known: {sorted(METADATA_FIELDS)}"
        )
    for key in ("data", "parameters", "metrics"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            raise InvalidArgument(f"metadata '{key}' must be an object")
    return metadata


def next_version(model: ModelEntry) -> str:
    numeric = [int(v) for v in model.versions if v.isdigit()]
    return str(max(numeric, default=0) + 1)


@dataclass(frozen=True, slots=True)
class Staged:
    """An artifact written into the repository under its version's directory."""

    version: str
    directory: Path
    artifact: Path
    sha256: str


# Numbers an auto-numbered registration tries past the first free-looking one: others may
# be taken meanwhile by another gateway process on the same repository (--workers N).
NUMBER_ATTEMPTS = 20


def stage(
    model: ModelEntry,
    version: str | None,
    filename: str,
    data: bytes,
    registered: Collection[str] = (),
) -> Staged:
    """Write the artifact into ``<model>/<version>/`` atomically (a temporary directory
    renamed into place), refusing a version that exists. Without a ``version``, the next
    number above every directory and record (``registered``: the model's recorded
    versions) that no directory holds: the rename claims it,
    so that two processes numbering at once take two numbers, not one and an error."""
    artifact_name = SUFFIXES.get(Path(filename).suffix)
    if artifact_name is None:
        raise InvalidArgument(
            f"artifact '{filename}': expected a file ending in {', '.join(SUFFIXES)}"
        )
    if not data:
        raise InvalidArgument(f"artifact '{filename}' is empty")
    if version and not VERSION_NAME.match(version):
        raise InvalidArgument(f"version '{version}' is not a valid name (letters, digits, ._-)")
    if version and ((model.path / version).exists() or version in model.versions):
        raise _exists(model, version)
    digest = hashlib.sha256(data).hexdigest()
    temp = Path(tempfile.mkdtemp(prefix=f".{version or 'new'}.", dir=model.path))
    try:
        (temp / artifact_name).write_bytes(data)
        claimed = _claim(model, temp, version, registered)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return Staged(claimed, model.path / claimed, model.path / claimed / artifact_name, digest)


def _exists(model: ModelEntry, version: str) -> AlreadyExists:
    return AlreadyExists(
        f"version {version} of '{model.name}' exists; a registered version is never "
        "replaced: register a new version"
    )


def _claim(model: ModelEntry, temp: Path, version: str | None, registered: Collection[str]) -> str:
    """Rename ``temp`` to the version's directory (atomic on one file system; a rename onto
    a directory that is there, and never empty, fails): the version it became."""
    if version:
        candidates = [version]
    else:
        names = [p.name for p in model.path.iterdir()] + list(registered)
        used = [int(name) for name in names if name.isascii() and name.isdigit()]
        first = max(int(next_version(model)), max(used, default=0) + 1)
        candidates = [str(n) for n in range(first, first + NUMBER_ATTEMPTS)]
    for candidate in candidates:
        target = model.path / candidate
        if not version and target.exists():
            continue
        try:
            os.rename(temp, target)
        except OSError:
            if not target.exists():
                raise
            continue  # taken since the check: by another process
        return candidate
    raise (
        _exists(model, version)
        if version
        else AlreadyExists(
            f"model '{model.name}': no free version number among {candidates[0]}-{candidates[-1]}"
        )
    )


def new_model(repo: Path, name: str) -> ModelEntry:
    """A model directory for a first registration (no model.yaml: the defaults). Its
    version is added by the caller; a directory already there is refused, since the
    gateway would be serving it if it could."""
    if not VERSION_NAME.match(name):
        raise InvalidArgument(f"model name '{name}' is not valid (letters, digits, ._-)")
    path = repo / name
    try:
        path.mkdir()
    except FileExistsError:
        raise FailedPrecondition(
            f"{path} exists but is not served (see the gateway's log for why); fix it and "
            "restart the gateway"
        ) from None
    return ModelEntry(name, path, ModelConfig(), {}, primary="")


def unstage(staged: Staged) -> None:
    shutil.rmtree(staged.directory, ignore_errors=True)


def record_for(
    model: str, version: str, artifact: Path, sha256: str, *, runner: str,
    metadata: dict[str, Any], author: str | None = None,
) -> VersionRecord:  # fmt: skip
    framework, framework_version = framework_of(artifact)
    return VersionRecord(
        model=model,
        version=version,
        sha256=sha256,
        artifact=artifact.name,
        runner=runner,
        registered_at=time.time(),
        framework=metadata.get("framework") or framework,
        framework_version=metadata.get("framework_version") or framework_version,
        data=metadata.get("data"),
        code_ref=metadata.get("code_ref"),
        parameters=metadata.get("parameters"),
        metrics=metadata.get("metrics"),
        parent=metadata.get("parent"),
        author=metadata.get("author") or author,
        notes=metadata.get("notes"),
    )


def save(ledger: Ledger, record: VersionRecord, reason: str, actor: str) -> None:
    entry = JournalEntry(record.registered_at, "registration", record.version, reason, actor,
                         record.as_dict())  # fmt: skip
    try:
        ledger.governance.register(record, entry)
    except AlreadyRegistered as exc:
        raise AlreadyExists(str(exc)) from None


def runner_name(model: ModelEntry, entry: VersionEntry) -> str:
    if model.config.runner.in_process(entry.version):
        return "inprocess"
    return {"onnx": "onnx", "joblib": "sklearn", "python": "python", "external": "external"}[
        entry.kind
    ]


def reconcile(models: dict[str, ModelEntry], ledger: Ledger) -> list[str]:
    """Start-up: register unknown versions found on disk, and take out of ``models`` every
    version whose artifact no longer has its registered bytes. Returns what was refused."""
    refused: list[str] = []
    for model in list(models.values()):
        for version, entry in list(model.versions.items()):
            if entry.kind == "external":
                continue  # no artifact of ours to fingerprint
            artifact, digest = artifact_file(entry), entry.sha256
            known = ledger.governance.version(model.name, version)
            if known is None:
                runner = runner_name(model, entry)
                record = record_for(model.name, version, artifact, digest, runner=runner,
                                    metadata={}, author="repository scan")  # fmt: skip
                save(ledger, record, "found in the model repository at start-up", "startup")
            elif known.sha256 != digest:
                refused.append(f"{model.name}/{version}")
                models[model.name] = _refuse(models[model.name], version, known.sha256, digest)
        if not model.versions:
            log.error("model skipped: no intact version", model=model.name)
    for name in [name for name, model in models.items() if not model.versions]:
        del models[name]
    return refused


def _refuse(model: ModelEntry, version: str, registered: str, found: str) -> ModelEntry:
    log.error(
        "version refused: its artifact changed since registration",
        model=model.name, version=version, registered=registered[:12], found=found[:12],
    )  # fmt: skip
    del model.versions[version]
    if model.versions and version == model.primary:
        # The primary is gone: the highest intact version answers until a deployment says.
        return dataclasses.replace(model, primary=max(model.versions, key=version_key))
    return model
