"""The filesystem / NFS backend.

Create-if-absent, the compare-and-swap primitive, is ``link(2)``::

    write tmp → fsync → close → link(tmp, final) → fsync(dir) → unlink(tmp)

``link`` fails with EEXIST when the name exists, atomically, on local
filesystems and on NFS (the server serialises it). On NFS a retransmitted
``link`` whose first attempt succeeded also answers EEXIST; then the temporary
file has two links (``st_nlink == 2``), which tells us we won. No lock files
(a crash would strand them), no ``O_EXCL`` on the final name (readers would
see a partial file), no ``rename`` (it replaces: no CAS).

Plain ``put`` (blocks, hints) is tmp → fsync → rename → fsync(dir).

Temporary files live in one folder, ``<root>/.tmp/`` (the same filesystem, so
``link`` and ``rename`` work; no key can start with ``.``, so it never shows in
a listing). A writer removes its own; a crash strands one, and any writer
sweeps the folder of files older than ``STALE_TMP_S`` now and then (every
``SWEEP_EVERY_S``), so the store never accumulates them.

NFS mounts: use ``hard`` (never ``soft``: a soft timeout can report failure
for a write that landed) and ``lookupcache=positive`` (a cached negative
lookup could hide a peer's new manifest version), e.g.
``mount -t nfs4 -o hard,lookupcache=positive server:/export /mnt/helios-shared``.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from pathlib import Path

import trio

from backends.base import (Conflict, Invalid, NotFound, ObjectInfo, RequestCounters, Unavailable,
                           check_key, check_prefix, check_range)

__all__ = ["FsBackend"]

TMP_DIR = ".tmp"
STALE_TMP_S = 3600.0  # a write holds its temporary file for moments; an hour-old one was stranded by a crash
SWEEP_EVERY_S = 600.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(directory: Path, data: bytes) -> Path:
    tmp = directory / f"{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


class FsBackend:
    name = "fs"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.counters = RequestCounters()
        self._tmp = self.root / TMP_DIR
        self._swept_at = -SWEEP_EVERY_S  # monotonic; the first write sweeps

    def _tmp_file(self, data: bytes) -> Path:
        if time.monotonic() - self._swept_at >= SWEEP_EVERY_S:
            self._swept_at = time.monotonic()
            self.sweep_tmp()
        return _write_tmp(self._tmp, data)

    def sweep_tmp(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove temporary files stranded by crashed writers; returns how many."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        horizon = time.time() - older_than_s
        removed = 0
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                try:
                    if entry.stat().st_mtime < horizon:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except (NotFound, Conflict, Invalid):
            raise
        except FileNotFoundError as exc:
            raise NotFound(str(exc.filename)) from None
        except OSError as exc:
            self.counters.add("errors")
            raise Unavailable(f"shared store at {self.root}: {exc.strerror or exc}") from None

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        self.counters.add("GET")
        return await self._run(path.read_bytes)

    @staticmethod
    def _read_range(path: Path, start: int, length: int) -> bytes:
        with open(path, "rb") as file:
            file.seek(start)
            return file.read(length)  # a regular file: everything up to ``length`` that exists

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(key)
        check_range(start, length)
        if length == 0:
            return b""
        self.counters.add("GET")
        return await self._run(self._read_range, path, start, length)

    def _put(self, path: Path, data: bytes) -> None:
        tmp = self._tmp_file(data)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.counters.add("PUT")
        await self._run(self._put, path, data)

    def _create(self, path: Path, data: bytes) -> None:
        tmp = self._tmp_file(data)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, path)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                if os.stat(tmp).st_nlink != 2:  # 2: a retransmitted link that had succeeded
                    self.counters.add("conflicts")
                    raise Conflict(str(path)) from None
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    async def create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.counters.add("PUT")
        await self._run(self._create, path, data)

    def _list(self, prefix: str, start_after: str, limit: int) -> list[ObjectInfo]:
        """Walk only the directory the prefix names, depth first in key order, and stop at ``limit``.

        Entries of one directory are visited sorted by ``name`` for files and
        ``name + "/"`` for directories, which is exactly the order of the keys
        beneath them; a subtree is entered only if some key in it can start
        with ``prefix`` and sort after ``start_after``. So a page costs the
        directories on its path, never the whole store.
        """
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        out: list[ObjectInfo] = []

        def wanted(key_prefix: str) -> bool:
            """May a key starting with ``key_prefix`` (a directory's, ending in "/") be listed?"""
            if not (key_prefix.startswith(prefix) or prefix.startswith(key_prefix)):
                return False
            return start_after.startswith(key_prefix) or key_prefix > start_after

        def walk(directory: str, rel: str) -> None:
            try:
                with os.scandir(directory) as scan:
                    entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                               for e in scan if not e.name.startswith(".")]
            except (FileNotFoundError, NotADirectoryError):
                return
            entries.sort(key=lambda pair: pair[0])
            for name, entry in entries:
                if len(out) >= limit:
                    return
                key = rel + name
                if name.endswith("/"):
                    if wanted(key):
                        walk(entry.path, key)
                elif key.startswith(prefix) and key > start_after:
                    try:
                        out.append(ObjectInfo(key, entry.stat(follow_symlinks=False).st_size))
                    except FileNotFoundError:
                        continue

        top = self.root / base if base else self.root
        if self.root.exists() and not self.root.is_dir():  # e.g. an unmounted path replaced by a file
            raise NotADirectoryError(errno.ENOTDIR, "the store root is not a directory", str(self.root))
        walk(str(top), base)
        return out

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        check_prefix(prefix)
        self.counters.add("LIST")
        return await self._run(self._list, prefix, start_after, limit)

    def _delete(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        self.counters.add("DELETE")
        await self._run(self._delete, path)

    async def aclose(self) -> None:
        return None
