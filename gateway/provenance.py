"""Provenance a training script need not write by hand: ``greenroom register --data``.

The training data's fingerprint (sha256, rows, the feature schema and, with a time column,
the time range) is computed from the file itself, and the code reference is the git
commit of the artifact's working tree when there is one (``-dirty`` when it has changes),
so that "from what data and code" has an answer even when nobody wrote it down.
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
from pathlib import Path
from typing import Any

from greenroom_client.errors import InvalidArgument


def _kind(values: list[str]) -> str:
    try:
        for value in values:
            float(value)
    except ValueError:
        return "categorical"
    return "numeric"


def data_fingerprint(path: Path, time_column: str | None = None) -> dict[str, Any]:
    """sha256, rows, columns (name and numeric/categorical) and, given a time column of
    sortable values (ISO times or numbers), its first and last value."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror}") from None
    reader = csv.reader(raw.decode("utf-8", "replace").splitlines())
    header = next(reader, None)
    if not header:
        raise InvalidArgument(f"{path}: empty, no header")
    rows = [row for row in reader if row]
    if any(len(row) != len(header) for row in rows):
        raise InvalidArgument(f"{path}: rows do not all have {len(header)} values")
    columns = [
        {"name": name, "type": _kind([row[i] for row in rows])} for i, name in enumerate(header)
    ]
    fingerprint: dict[str, Any] = {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "rows": len(rows),
        "columns": columns,
        "file": path.name,
    }
    if time_column is not None:
        if time_column not in header:
            raise InvalidArgument(f"{path}: no column '{time_column}'")
        times = sorted(row[header.index(time_column)] for row in rows)
        fingerprint["time_range"] = [times[0], times[-1]] if times else None
    return fingerprint


def code_ref(directory: Path) -> str | None:
    """The git commit of ``directory``'s working tree, ``-dirty`` if it has changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain") else "")


def without_column(path: Path, column: str | None) -> str:
    """The CSV's text without ``column`` (a time column is no feature for drift)."""
    text = path.read_text()
    if column is None:
        return text
    rows = list(csv.reader(text.splitlines()))
    if not rows or column not in rows[0]:
        return text
    index = rows[0].index(column)
    out = io.StringIO()
    csv.writer(out).writerows([r[:index] + r[index + 1 :] for r in rows if r])
    return out.getvalue()
