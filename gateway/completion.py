"""Work that must not stop half done when the task awaiting it is cancelled.

grpc.aio cancels a handler's task when its client's deadline passes or the client goes
away, and stopping the gateway cancels its background loops. Most work may stop at any
``await``; a change that is saved in one place and applied in another may not: cancelled
between the two, it is stored and journaled but not in force (a deployment), or recorded
but not on disk (a registered version). ``to_completion`` runs such a change to its end
and only then lets the cancellation through; ``drain`` lets shutdown wait for such work
before it stops the ledger and the runners the work needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

_running: set[asyncio.Future[Any]] = set()  # work whose callers may have gone


async def to_completion(work: Awaitable[T]) -> T:
    """``await work``, finishing it even if the awaiting task is cancelled meanwhile; the
    cancellation is raised once it has finished (an error of the work is then logged:
    the caller that would have handled it is gone)."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_running.discard)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # the work itself was cancelled, not its caller
                raise
            cancelled = True
    if cancelled:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("work finished after its caller left, and failed", exc_info=error)
        raise asyncio.CancelledError
    return task.result()


async def drain(timeout: float) -> None:
    """Wait (up to ``timeout``) for every ``to_completion`` work still running."""
    pending = list(_running)
    if pending:
        log.info("finishing changes whose callers left", changes=len(pending))
        await asyncio.wait(pending, timeout=timeout)
