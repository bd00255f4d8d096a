"""The framed socket: ModelInfer between the gateway and a runner on the same host, without gRPC.

A gRPC call costs each side a few hundred microseconds of CPU in grpc's core (its poller
thread, HTTP/2 framing, the hand-off to Python), far more than a small model's own work;
a gateway forwarding every request over gRPC pays that twice per request. The framed
socket is a plain Unix stream socket carrying the same serialized V2 messages, one call at
a time per connection:

    request:  u32 length | u8 kind (1: ModelInfer) | ModelInferRequest bytes
    answer:   u32 length | u8 status (a gRPC status number; 0 is OK)
              | ModelInferResponse bytes when OK, else the error message (UTF-8)

(little-endian). The gateway keeps a pool of connections and sends a call on an idle one,
so a connection never has two calls in flight and needs no call ids; a call that it gives
up on (deadline, cancellation) closes its connection. Everything else a runner does
(health, metadata, streaming, calls from anyone but the gateway, tracing) stays on its
gRPC address; the framed socket only exists when the gateway asks for it
(``--framed-socket PATH``).

Here, the runner's side: an accept thread and one thread per connection, blocking in
``recv`` (which releases the GIL) and answering in that same thread, as a synchronous
gRPC handler would: the batcher (runners.batching) merges concurrent calls exactly as it
merges concurrent gRPC calls.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

HEADER = struct.Struct("<IB")
KIND_INFER = 1
STATUS_OK = 0
# Answers one request's bytes with (status number, body); never raises.
Answer = Callable[[bytes], tuple[int, bytes]]

__all__ = ["HEADER", "KIND_INFER", "STATUS_OK", "FramedServer"]


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None at end of stream (the peer closed, or we are stopping).

    Usually one ``recv`` with MSG_WAITALL, whose bytes are the result: no buffer to copy
    out of (a 1,000-row request is 32 kB). A signal can cut it short; the rest is then
    read into a buffer."""
    if size == 0:
        return b""
    first = conn.recv(size, socket.MSG_WAITALL)
    if len(first) == size:
        return first
    if not first:
        return None
    buffer = bytearray(size)
    buffer[: len(first)] = first
    view, got = memoryview(buffer), len(first)
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def _send(conn: socket.socket, code: int, body: bytes) -> None:
    """One answer, header and body in one ``sendmsg`` without joining them first."""
    header = HEADER.pack(len(body), code)
    sent = conn.sendmsg((header, body))
    if sent < len(header):  # cut short (a signal): the rest as sendall sends it
        conn.sendall(header[sent:])
        sent = len(header)
    if sent < len(header) + len(body):
        conn.sendall(memoryview(body)[sent - len(header) :])


class FramedServer:
    """The runner's framed socket: listens on a Unix socket path, one thread per connection."""

    def __init__(self, path: Path, answer: Answer, max_message_bytes: int) -> None:
        self.path = path
        self._answer = answer
        self._max = max_message_bytes
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        """Bind (replacing a stale socket file a killed runner left) and accept."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._listener.bind(str(self.path))
        self._listener.listen(128)
        threading.Thread(target=self._accept, name="framed-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed: stopping
                return
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                thread = threading.Thread(
                    target=self._serve, args=(conn,), name="framed-conn", daemon=True
                )
                self._connections.add(conn)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while (request := self._read(conn)) is not None:
                code, body = self._answer(request)
                _send(conn, code, body)
        except OSError:
            pass  # the gateway closed the connection (it gave up on a call), or we stop
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def _read(self, conn: socket.socket) -> bytes | None:
        header = _recv_exactly(conn, HEADER.size)
        if header is None:
            return None
        length, kind = HEADER.unpack(header)
        if kind != KIND_INFER or length > self._max:
            log.warning(
                "framed socket: malformed request; closing the connection", kind=kind, length=length
            )
            return None
        return _recv_exactly(conn, length)

    def stop(self, grace_s: float) -> None:
        """Stop accepting; calls being answered finish (within ``grace_s``), idle
        connections end at once."""
        with self._lock:
            self._stopping = True
            connections, threads = list(self._connections), list(self._threads)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # a blocked recv returns; answers still go out
        deadline = time.monotonic() + grace_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
