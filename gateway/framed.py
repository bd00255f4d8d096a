"""The gateway's side of the framed socket (runners.framed): ModelInfer to a local runner
without gRPC.

A pool of Unix socket connections to one runner's framed socket, each carrying one call
at a time: a call takes an idle connection or opens one, writes the request, and waits
for the answer on that connection's asyncio protocol. A connection goes back to the pool
after a complete answer; a call that ends any other way (its deadline, its cancellation,
the runner closing the socket) closes it, since an answer may still be on its way. The
answers' statuses are gRPC status numbers, so ``FramedClient.send`` raises the same
``FramedStatus`` a gRPC call's status would be translated from (gateway.supervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc

from runners.framed import HEADER, KIND_INFER, STATUS_OK

# Idle connections kept per runner beyond what is in use (more are closed when they free).
MAX_IDLE = 64
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class FramedStatus(Exception):
    """The runner answered with a status other than OK (or the framed socket broke: UNAVAILABLE)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class _Connection(asyncio.Protocol):
    """One connection; at most one call waits on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if len(buffer) < HEADER.size:
            return
        length, code = HEADER.unpack_from(buffer)
        if len(buffer) < HEADER.size + length:
            return
        body = bytes(buffer[HEADER.size : HEADER.size + length])
        del buffer[: HEADER.size + length]
        waiter, self._waiter = self._waiter, None
        if waiter is None or buffer:  # an answer nobody asked for: the framed socket is confused
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((code, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            reason = (
                f"the runner closed the framed socket ({exc})"
                if exc
                else "the runner closed the framed socket"
            )
            waiter.set_exception(FramedStatus(grpc.StatusCode.UNAVAILABLE, reason))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(HEADER.pack(len(request), KIND_INFER) + request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FramedClient:
    """The connection pool to one runner's framed socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[_Connection] = []
        self._closed = False

    def send(self, request: bytes) -> Coroutine[Any, Any, bytes]:
        """Send ``request`` now when a connection is idle (else once awaited, after
        connecting); await the result for the serialized answer, FramedStatus for any other
        outcome. Cancelling it (a timeout around it) gives up and closes the connection."""
        if self._closed:
            return self._refuse()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return self._answer(conn, conn.send(request))
        return self._connect_and_call(request)

    async def _refuse(self) -> bytes:
        raise FramedStatus(grpc.StatusCode.UNAVAILABLE, "the framed socket is closed")

    async def _connect_and_call(self, request: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_unix_connection(_Connection, str(self.path))
        except OSError as exc:
            reason = f"cannot reach its framed socket: {exc.strerror or exc}"
            raise FramedStatus(grpc.StatusCode.UNAVAILABLE, reason) from None
        return await self._answer(conn, conn.send(request))

    async def _answer(self, conn: _Connection, sent: asyncio.Future[tuple[int, bytes]]) -> bytes:
        try:
            code, body = await sent
        except BaseException:
            conn.close()
            raise
        if conn.closed or self._closed or len(self._idle) >= MAX_IDLE:
            conn.close()
        else:
            self._idle.append(conn)
        if code != STATUS_OK:
            status = _STATUS_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
            raise FramedStatus(status, body.decode(errors="replace"))
        return body

    def close(self) -> None:
        """Close the idle connections; calls in flight close theirs when they end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
