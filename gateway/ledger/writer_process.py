"""The ledger's writer as a process of its own, fed batches over a socket pair.

Why a process: in the gateway, the writer thread's work (parsing each reply, packing its
row, SQLAlchemy's executemany) holds the GIL the event loop needs; at concurrency 16 that
was about 43 µs of every request's 370 µs on the loop's critical path. Here the gateway
only pickles each batch of queued items (plain tuples: under a microsecond per item) and
writes it to a socket, and this process converts and writes it with the same
``BatchHandler`` the thread uses.

The wire, both ways: frames of ``<II`` (payload length, item count) then a pickle.
- gateway -> writer: first a ``WriterConfig``, then batches (lists of items), in order;
- writer -> gateway: one ``Outcome`` per batch, in the same order.

Lifetime: the writer ignores SIGINT and SIGTERM and ends when its socket reaches EOF,
after writing what it was sent. So a Ctrl-C to the terminal's process group, or a
SIGTERM to the gateway, still lets the gateway drain its queue into it; a gateway that
dies closes the socket, and the writer finishes its batch and exits. A writer that dies
loses the batches it had not answered for (counted as failed, with the reason); the
gateway starts another for the next batch.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from gateway import logs
from gateway.ledger.store import Store, is_transient
from gateway.ledger.writer import BatchHandler, BatchQueue, Bounds, Outcome, describe

log = structlog.get_logger(__name__)

HEADER = struct.Struct("<II")
# A writer that died sooner than this after its start is not restarted at once.
RESPAWN_BACKOFF_S = 1.0


@dataclass(frozen=True)
class WriterConfig:
    """What the writer process needs; every field must pickle (``prepare`` by name)."""

    url: str
    prepare: Callable[[Any], Any]
    retry_delays: Sequence[float]
    log_format: str = "console"
    log_level: str = "info"


def send_frame(conn: socket.socket, payload: bytes, count: int = 0) -> None:
    conn.sendall(HEADER.pack(len(payload), count) + payload)


def recv_frame(conn: socket.socket) -> tuple[bytes, int] | None:
    """The next frame's payload and count; None at a clean EOF between frames."""
    header = _recv_exactly(conn, HEADER.size)
    if header is None:
        return None
    size, count = HEADER.unpack(header)
    payload = _recv_exactly(conn, size)
    if payload is None:
        raise ConnectionError("the ledger writer's socket closed mid-frame")
    return payload, count


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if chunks:
                raise ConnectionError("the ledger writer's socket closed mid-frame")
            return None
        chunks += chunk
    return bytes(chunks)


class _Child:
    """One writer process, its socket and the thread reading its outcomes."""

    def __init__(self, config: bytes, settle: Callable[[Outcome | None, str | None], None]):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.ledger", "writer", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the gateway's stdout carries its LISTENING line
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = ours
        self.started = time.monotonic()
        self.lock = threading.Lock()  # a send and its count, against the reader's EOF
        self.sent = 0
        self.acked = 0
        self.dead = False
        self.closed = False  # by us (the ledger stopped), not by dying
        self._settle = settle
        self.reader = threading.Thread(target=self._read, name="ledger-writer-in", daemon=True)
        self.reader.start()
        with contextlib.suppress(OSError):  # a writer gone at once: the reader sees EOF
            send_frame(ours, config)

    def send(self, payload: bytes, count: int) -> str | None:
        """Ship one batch; the reason it could not be, or None."""
        with self.lock:
            if self.dead:
                return "the ledger writer process is gone"
            try:
                send_frame(self.conn, payload, count)
            except OSError as e:
                return describe(e)
            self.sent += 1
        return None

    def close(self) -> None:
        """No more batches: the writer finishes what it has and exits."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_WR)
        self.reader.join()
        self.proc.wait()

    def _read(self) -> None:
        try:
            while (frame := recv_frame(self.conn)) is not None:
                self._settle(pickle.loads(frame[0]), None)
                self.acked += 1
        except Exception as e:  # a broken stream: this writer cannot be trusted further
            log.warning("ledger writer process connection lost", error=describe(e))
            self.proc.kill()
        with self.lock:
            self.dead = True
            lost = self.sent - self.acked
        code = self.proc.wait()
        self.conn.close()
        if lost:
            error = f"the ledger writer process exited (code {code}) with batches unwritten"
            log.warning(error, batches=lost)
            for _ in range(lost):
                self._settle(None, error)


class ProcessWriter(BatchQueue):
    """The queue of ``BatchQueue``; its thread pickles each batch and ships it to the
    writer process, whose outcomes settle the batches as they come back."""

    def __init__(
        self, config: WriterConfig, bounds: Bounds, *, name: str = "ledger-writer-out"
    ) -> None:
        if ":memory:" in config.url or config.url in ("sqlite://", "sqlite:///"):
            raise ValueError("an in-memory SQLite ledger cannot be written by another process")
        try:
            self._config = pickle.dumps(config)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise ValueError(f"the ledger writer process needs an importable convert: {e}") from e
        super().__init__(bounds, name=name)
        self._child: _Child | None = None

    def start(self) -> None:
        """Start the writer process now, so that the first answers do not wait for its
        imports, then the thread that feeds it."""
        if not (self._thread is not None and self._thread.is_alive()):
            self._live_child()
        super().start()

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._ship(batch)
        if self._child is not None:
            self._child.close()

    def _ship(self, batch: list[Any]) -> None:
        try:
            payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # an item that cannot pickle loses only its batch
            self._settle(None, describe(e))
            return
        error = None
        for _ in range(2):  # this writer, or a new one if it is gone
            child = self._live_child()
            if child is None:
                error = error or "the ledger writer process could not start"
                break
            error = child.send(payload, len(batch))
            if error is None:
                return
            child.reader.join()  # it settles what that writer held, before this batch
        self._settle(None, error)

    def _live_child(self) -> _Child | None:
        child = self._child
        if child is not None and not child.dead:
            return child
        if child is not None and not child.closed:  # it died: restart, but not in a loop
            child.reader.join()
            wait = child.started + RESPAWN_BACKOFF_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            log.warning("restarting the ledger writer process", code=child.proc.returncode)
        try:
            self._child = _Child(self._config, self._settle)
        except OSError as e:
            log.warning("the ledger writer process could not start", error=describe(e))
            self._child = None
        return self._child

    @property
    def pid(self) -> int | None:
        """The writer process's pid (for memory reports and tests)."""
        child = self._child
        return None if child is None else child.proc.pid


def serve(conn: socket.socket) -> None:
    """The writer process's loop: a batch in, its outcome out, until EOF."""
    frame = recv_frame(conn)
    if frame is None:
        return
    config: WriterConfig = pickle.loads(frame[0])
    logs.configure(config.log_format, config.log_level)
    store = Store(config.url)
    handler: BatchHandler[Any] = BatchHandler(
        store.insert, config.prepare, is_transient=is_transient, retry_delays=config.retry_delays
    )
    try:
        while (frame := recv_frame(conn)) is not None:
            payload, count = frame
            try:
                batch = pickle.loads(payload)
            except Exception as e:
                outcome = Outcome(0, 0, count, describe(e), wrote=False)
            else:
                outcome = handler.handle(batch)
            send_frame(conn, pickle.dumps(outcome))
    finally:
        store.dispose()


def main(fd: int) -> None:
    """The process's entry (``python -m gateway.ledger writer FD``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = socket.socket(fileno=fd)
    try:
        serve(conn)
    except (BrokenPipeError, ConnectionError):
        pass  # the gateway is gone: nobody is left to tell
    finally:
        conn.close()
    sys.stdout.flush()
    os._exit(0)
