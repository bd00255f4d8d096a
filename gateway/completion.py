"""Work that must not stop half done when the task awaiting it is cancelled.

grpc.aio cancels a handler's task when its client's deadline passes or the client goes
away, and stopping the gateway cancels its background loops. Most work may stop at any
``await``; a change that is saved in one place and applied in another may not: cancelled
between the two, it is stored and journaled but not in force (a deployment), or recorded
but not on disk (a registered version). ``to_completion`` runs such a change to its end
and only then lets the cancellation through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def to_completion(work: Awaitable[T]) -> T:
    """``await work``, finishing it even if the awaiting task is cancelled meanwhile; the
    cancellation is raised once it has finished (its result or error is then dropped:
    the caller is gone)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # the work itself was cancelled, not its caller
                raise
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller that would handle it is gone
        raise asyncio.CancelledError
    return task.result()
