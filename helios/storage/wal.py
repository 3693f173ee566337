"""Write-ahead log with group commit.

Records reach disk here before an ingest is acknowledged. The log is a
sequence of numbered segment files ``<seq>.wal``; each holds frames::

    u32 length | u32 checksum(length field + payload) | payload

The length field's top bit says which checksum: set, CRC-32C (``crc32c.py``:
the CPU's crc32 instruction, 8 GB/s here); clear, zlib's CRC-32 (2 GB/s here;
every frame before session 14, and a node built without the C extension). A
payload is one ingest request: ``u16 len | dataset | Arrow IPC stream``. The
stream is uncompressed, unless a quarter of the table's cells are null: then
its buffers are compressed with LZ4 (Arrow IPC body compression: the offsets
and validity bits of sparse columns, mostly zeros, shrink to almost nothing).
Each IPC message names its codec, so frames written with zstd (before session
13) or LZ4 read the same way. A segment lives until its rows are in blocks.

A frame is at most ``max_frame_bytes`` (1 GiB) long, on both sides: ``append``
refuses a longer payload with ``PayloadTooLarge`` before anything is queued or
written, and replay treats a longer length as a torn tail. So nothing is ever
acknowledged that replay would refuse, and the u32 length can never overflow.

Group commit: requests queue their frames; one committer task writes every
queued frame with one ``write`` and one ``fdatasync``, applies each (puts the
rows in the memtable) and only then wakes the requests, so a request is
answered after its rows are durable *and* visible. ``lock`` is held from the
write until the rows are applied; the flusher takes it to swap the memtable
and rotate the segment in one step, so every segment up to a cut holds
exactly the rows of the memtable frozen at that cut.

Recovery reads the segments in order and stops a segment at its first frame
that is short or fails its checksum: that is a torn tail, and it is cut off
(truncated) so that later appends never follow garbage.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc
import trio

from helios import log
from helios.errors import PayloadTooLarge, Unavailable
from helios.storage import crc32c
from helios.storage.fsutil import FILE_MODE, fsync_dir

__all__ = ["MAX_FRAME_BYTES", "Wal", "decode_payload", "encode_payload"]

_HEADER = struct.Struct("<II")
_LEN = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 30  # the one cap on a payload, for appending and for replay (u32 length)
MAX_QUEUED_BYTES = 256 << 20  # backpressure bound on frames waiting for the committer
_FRAME_IN_THREAD_BYTES = 1 << 20  # checksum larger payloads in a worker thread
_SPARSE = ipc.IpcWriteOptions(compression="lz4")  # see the module docstring
_DENSE = ipc.IpcWriteOptions(compression=None)
_CRC32C = 1 << 31  # the length field's top bit: the frame's checksum is CRC-32C, not zlib's CRC-32
_log = log.get("helios.wal")


def encode_payload(dataset: str, table: pa.Table) -> bytes:
    """One request's rows as a payload. CPU work (compression): large tables belong in a worker thread."""
    return _encode(dataset, table, 0).to_pybytes()


def _encode(dataset: str, table: pa.Table, reserve: int) -> pa.Buffer:
    """The payload after ``reserve`` zero bytes (room for a frame's header), in one buffer."""
    name = dataset.encode()
    sink = pa.BufferOutputStream()
    sink.write(bytes(reserve) + struct.pack("<H", len(name)) + name)
    options = _SPARSE if 4 * sum(column.null_count for column in table.columns) > table.num_rows * table.num_columns \
        else _DENSE
    with ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode_payload(payload: bytes) -> tuple[str, pa.Table]:
    (size,) = struct.unpack_from("<H", payload)
    dataset = payload[2 : 2 + size].decode()
    table = ipc.open_stream(pa.py_buffer(payload)[2 + size :]).read_all()
    return dataset, table


def _header(payload: bytes | memoryview) -> bytes:
    if crc32c.NATIVE:
        field = len(payload) | _CRC32C
        return _HEADER.pack(field, crc32c.crc32c(payload, crc32c.crc32c(_LEN.pack(field))))
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(_LEN.pack(len(payload)))))


def _frame(payload: bytes) -> bytes:
    return _header(payload) + payload


def _intact(field: int, payload: bytes, checksum: int) -> bool:
    check = crc32c.crc32c if field & _CRC32C else zlib.crc32
    return check(payload, check(_LEN.pack(field))) == checksum


def _segment_name(seq: int) -> str:
    return f"{seq:016d}.wal"


@dataclass
class _Pending:
    frame: bytes | pa.Buffer
    apply: Callable[[], None]
    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class Wal:
    def __init__(self, directory: Path, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync) -> None:
        """``run_sync`` runs the blocking writes off the event loop (a seam for the fuzzer)."""
        assert 0 < max_frame_bytes <= MAX_FRAME_BYTES, "a frame length is a u32 and replay caps it"
        self.directory = directory
        self.max_frame_bytes = max_frame_bytes
        self._run_sync = run_sync
        self.lock = trio.Lock()
        self._queue: list[_Pending] = []
        self._queued_bytes = 0
        self._wakeup = trio.Event()
        self._space = trio.Event()
        self._fd: int | None = None
        self._seq = 0
        self._offset = 0
        self._broken: str | None = None
        self._closed = False
        self.bytes_written = 0
        self.commits = 0

    # -- recovery ---------------------------------------------------------

    def segments(self) -> list[int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        return sorted(int(p.stem) for p in self.directory.glob("*.wal") if p.stem.isdigit())

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(segment, payload)`` for every intact frame; cut torn tails."""
        for seq in self.segments():
            path = self.directory / _segment_name(seq)
            data = path.read_bytes()
            offset = 0
            while offset < len(data):
                if len(data) - offset < _HEADER.size:
                    break
                field, checksum = _HEADER.unpack_from(data, offset)
                length = field & ~_CRC32C
                end = offset + _HEADER.size + length
                if length > self.max_frame_bytes or end > len(data):
                    break
                payload = data[offset + _HEADER.size : end]
                if not _intact(field, payload, checksum):
                    break
                yield seq, payload
                offset = end
            if offset < len(data):
                log.log(_log, logging.WARNING, "cut a torn write-ahead log tail",
                        segment=seq, kept_bytes=offset, cut_bytes=len(data) - offset)
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
                    os.fsync(handle.fileno())

    def start(self) -> None:
        """Open a fresh segment after every existing one; call after ``replay``."""
        existing = self.segments()
        self._open_segment((existing[-1] if existing else 0) + 1)

    def _open_segment(self, seq: int) -> None:
        path = self.directory / _segment_name(seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        fsync_dir(self.directory)
        self._seq = seq
        self._offset = 0

    @property
    def current_segment(self) -> int:
        return self._seq

    # -- appending --------------------------------------------------------

    def frame(self, payload: bytes) -> bytes:
        """``payload`` as a frame (length, checksum) for ``append_frame``. Raises
        ``PayloadTooLarge`` for a payload over ``max_frame_bytes``: replay would refuse it.
        CPU work (crc32) that touches no state: large payloads are framed in a worker thread."""
        self._check_size(len(payload))
        return _frame(payload)

    def frame_table(self, dataset: str, table: pa.Table) -> pa.Buffer:
        """``frame(encode_payload(dataset, table))`` without copying the payload: it is encoded
        after room for the header, which is written in place (a request's payload is megabytes)."""
        buffer = _encode(dataset, table, _HEADER.size)
        view = memoryview(buffer).cast("B")
        payload = view[_HEADER.size :]
        self._check_size(len(payload))
        view[: _HEADER.size] = _header(payload)
        return buffer

    def _check_size(self, size: int) -> None:
        if size > self.max_frame_bytes:
            raise PayloadTooLarge(f"the request's write-ahead log record would be {size} bytes, "
                                  f"over its {self.max_frame_bytes}-byte limit: send fewer rows per request")

    async def append(self, payload: bytes, apply: Callable[[], None]) -> None:
        """Make ``payload`` durable, run ``apply``, then return (group commit).

        Raises ``PayloadTooLarge`` (nothing written) for a payload over
        ``max_frame_bytes``: replay would refuse it.
        """
        if len(payload) > _FRAME_IN_THREAD_BYTES:
            frame = await trio.to_thread.run_sync(self.frame, payload)
        else:
            frame = self.frame(payload)
        await self.append_frame(frame, apply)

    async def append_frame(self, frame: bytes | pa.Buffer, apply: Callable[[], None]) -> None:
        """``append`` of a payload already framed by ``frame`` (in the caller's worker thread)."""
        if self._closed:
            raise Unavailable("the node is shutting down")
        if self._broken:
            raise Unavailable(f"the write-ahead log is unavailable: {self._broken}")
        while self._queued_bytes > MAX_QUEUED_BYTES:
            await self._space.wait()
        pending = _Pending(frame, apply)
        self._queue.append(pending)
        self._queued_bytes += len(frame)
        self._wakeup.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer: one write and one fdatasync for every queued frame."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._queue:
                    batch, self._queue = self._queue, []
                    self._queued_bytes = 0
                    self._space.set()
                    self._space = trio.Event()
                    await self._commit(batch)
        finally:
            self._closed = True
            for pending in self._queue:
                pending.error = Unavailable("the node is shutting down")
                pending.done.set()

    async def _commit(self, batch: list[_Pending]) -> None:
        frames = [p.frame for p in batch]
        async with self.lock:
            try:
                await self._run_sync(self._write, frames)
            except OSError as exc:
                error = Unavailable(f"could not write the write-ahead log: {exc.strerror}")
                for pending in batch:
                    pending.error = error
                    pending.done.set()
                return
            for pending in batch:
                pending.apply()
        self.commits += 1
        for pending in batch:
            pending.done.set()

    def _write(self, frames: list[bytes | pa.Buffer]) -> None:
        """Append ``frames`` (each written as it is: no joined copy), then one fdatasync."""
        assert self._fd is not None, "start() before appending"
        start = self._offset
        size = 0
        try:
            for frame in frames:
                view = memoryview(frame)
                size += len(view)
                while view:
                    view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
        except OSError as exc:
            try:  # never leave a partial frame for later frames to follow
                os.ftruncate(self._fd, start)
                os.fdatasync(self._fd)
            except OSError:
                self._broken = exc.strerror or str(exc)
            raise
        self._offset = start + size
        self.bytes_written += size

    # -- rotation and reclamation (call with ``lock`` held) ----------------

    def rotate(self) -> int:
        """Close the current segment and open the next; returns the closed one."""
        closed = self._seq
        if self._fd is not None:
            os.close(self._fd)
        self._open_segment(closed + 1)
        return closed

    def delete_through(self, seq: int) -> None:
        """Remove every segment numbered ``seq`` or lower (their rows are in blocks)."""
        for old in self.segments():
            if old <= seq and old != self._seq:
                (self.directory / _segment_name(old)).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
