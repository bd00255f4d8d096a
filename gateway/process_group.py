"""Signals to a child's whole process group.

The commands the gateway runs for a model's owner (a retraining command, the owner's
pytest files) start in a session of their own (``start_new_session=True``): their pid is
then also their group's id, and a time-out reaches whatever they started, not only them.
"""

from __future__ import annotations

import contextlib
import os
import signal


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the group; nothing if it is gone (macOS answers EPERM rather
    than ESRCH for a group left with zombies only)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
