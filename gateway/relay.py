"""The shadow relay: a helper process that makes the gateway's shadow gRPC calls for it.

Why a process. A unary call through grpc.aio costs the calling process about 150-200 µs
of CPU, nearly all of it holding the GIL, whatever the payload. A shadow copy made by the
gateway itself therefore lands on the one thread that also answers live traffic: at
concurrency 1 it added a quarter to the primary's latency on a two-core machine. Handing
the copy to this process costs the gateway one framed write and one framed read on a
socketpair (a few µs each); the gRPC call, its HTTP/2 work and its wait happen here, on
whichever core is idle. Everything else about shadows stays in the gateway
(``gateway.shadow``: sampling, per-version bounds, drops, deadlines, recording): the relay
is only a transport, so its answers and errors are the runner's own.

Frames on the socketpair, little-endian:

    gateway -> relay   seq u32 | timeout f64 | target length u16 | payload length u32
                       | target (utf-8: a gRPC address) | payload (a ModelInferRequest)
    relay -> gateway   seq u32 | status u8 (gRPC code, 0 = OK) | payload length u32
                       | payload (the ModelInferResponse, or the status details, utf-8)

The relay exits when the socket closes (the gateway is gone) and, on Linux, when its
parent dies. The gateway restarts it if it exits; calls in flight then fail UNAVAILABLE,
which a shadow records like any other failure of its copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import signal
import socket
import struct
import sys
from typing import Any

import grpc
import structlog

from greenroom_client.errors import GreenroomError, Unavailable

log = structlog.get_logger(__name__)

REQUEST = struct.Struct("<IdHI")
REPLY = struct.Struct("<IBI")
METHOD = "/inference.GRPCInferenceService/ModelInfer"
# Extra time the gateway gives the relay beyond the call's own deadline before giving up.
GRACE_S = 1.0
RESTART_DELAY_S = 0.2
_PR_SET_PDEATHSIG = 1

Options = list[tuple[str, int]]


# ---- the relay process ----------------------------------------------------------------


class _Relay:
    def __init__(self, writer: asyncio.StreamWriter, options: Options) -> None:
        self.writer = writer
        self.options = options
        self.calls: dict[str, Any] = {}
        self.channels: list[grpc.aio.Channel] = []

    def _call(self, target: str) -> Any:
        call = self.calls.get(target)
        if call is None:
            channel = grpc.aio.insecure_channel(target, options=self.options)
            self.channels.append(channel)
            call = self.calls[target] = channel.unary_unary(METHOD)
        return call

    async def forward(self, seq: int, target: str, timeout: float, payload: bytes) -> None:
        try:
            reply: bytes = await self._call(target)(payload, timeout=timeout)
            status, data = 0, reply
        except grpc.aio.AioRpcError as exc:
            status, data = exc.code().value[0], (exc.details() or "").encode()
        except Exception as exc:  # e.g. a malformed target: tell the gateway, keep going
            status, data = grpc.StatusCode.INTERNAL.value[0], f"relay: {exc}".encode()
        self.writer.write(REPLY.pack(seq, status, len(data)) + data)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(grace=None)


async def _relay_main(fd: int, options: Options) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    relay = _Relay(writer, options)
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                head = await reader.readexactly(REQUEST.size)
            except asyncio.IncompleteReadError:
                return  # the gateway closed its end
            seq, timeout, target_len, payload_len = REQUEST.unpack(head)
            target = (await reader.readexactly(target_len)).decode()
            payload = await reader.readexactly(payload_len)
            task = asyncio.create_task(relay.forward(seq, target, timeout, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await relay.close()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Greenroom's shadow relay (started by the gateway)"
    )
    parser.add_argument("--fd", type=int, required=True, help="the socketpair end to serve")
    parser.add_argument("--max-message-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when we stop
    limit = args.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.http2.bdp_probe", 0),
    ]
    asyncio.run(_relay_main(args.fd, options))


# ---- the gateway's side ---------------------------------------------------------------


class ShadowRelay:
    """Starts the relay process and sends it calls; restarts it if it exits."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.restarts = 0
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._seq = 0
        self._writer: asyncio.StreamWriter | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.relay", "--fd", str(theirs.fileno()),
                "--max-message-bytes", str(self.max_message_bytes),
                pass_fds=(theirs.fileno(),), start_new_session=True,
            )  # fmt: skip
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def call(self, target: str, payload: bytes, timeout: float) -> bytes:
        """The runner's reply; GreenroomError (via ``translate``) for a failed call."""
        writer = self._writer
        if writer is None or writer.is_closing():
            raise Unavailable("shadow relay is restarting")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        address = target.encode()
        writer.write(REQUEST.pack(seq, timeout, len(address), len(payload)) + address + payload)
        try:
            status, data = await asyncio.wait_for(future, timeout + GRACE_S)
        except TimeoutError:
            raise Unavailable("shadow relay did not answer in time") from None
        finally:
            self._pending.pop(seq, None)
        if status == 0:
            return data
        raise RelayedError(grpc.StatusCode(_CODES[status]), data.decode(errors="replace"))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                seq, status, length = REPLY.unpack(await reader.readexactly(REPLY.size))
                data = await reader.readexactly(length)
                future = self._pending.get(seq)
                if future is not None and not future.done():
                    future.set_result((status, data))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self._fail_pending("shadow relay exited")
        if not self._stopping:
            await self._restart()

    def _fail_pending(self, why: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable(why))
        self._pending.clear()

    async def _restart(self) -> None:
        await self._reap()
        await asyncio.sleep(RESTART_DELAY_S)
        if self._stopping:
            return
        self.restarts += 1
        log.warning("shadow relay exited; restarting", restarts=self.restarts)
        await self.start()

    async def _reap(self) -> None:
        if self._writer is not None:
            self._writer.close()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        self._fail_pending("gateway is shutting down")
        await self._reap()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


class RelayedError(GreenroomError):
    """A runner's failed answer to a relayed call, before the runner translates it."""

    def __init__(self, status: grpc.StatusCode, details: str) -> None:
        super().__init__(details or status.name)
        self.status = status
        self.details = details


_CODES = {code.value[0]: code.value for code in grpc.StatusCode}


if __name__ == "__main__":
    main()
