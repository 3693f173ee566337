"""Small durable-file helpers: every write that must survive a crash goes through here.

Everything under a node's data directory is private to the user running it:
the directory and every folder in it are 0700, every file 0600 (log rows,
WAL frames, manifests and the control-plane mirror are all user data).
``secure_data_dir`` makes it so at start-up, also for a directory made
earlier with looser modes; files are created with ``FILE_MODE``, and
``helios serve`` sets its umask to 077 so that folders and files made by
libraries are private as well.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "UMASK", "fsync_dir", "secure_data_dir", "write_atomic"]

FILE_MODE = 0o600
DIR_MODE = 0o700
UMASK = 0o077


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600): tmp → fsync → rename → fsync(dir).

    Readers see the old bytes or the new ones, never a mixture; after return
    the new bytes survive a crash. (Local files only: this is not a
    compare-and-swap, and the shared store never uses it as one.)
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def secure_data_dir(root: Path, examples: int = 5) -> tuple[int, list[str]]:
    """Create ``root`` (0700) or tighten it: no folder or file under it keeps group or other bits.

    ``root`` may be a symbolic link to the real directory; links inside it
    are neither followed nor changed. Returns how many modes were changed
    (0 for a directory this version made) and the first ``examples`` paths.
    """
    root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    changed: list[str] = []
    count = 0
    if stat.S_IMODE(os.stat(root).st_mode) != DIR_MODE:
        os.chmod(root, DIR_MODE)
        count, changed = 1, [str(root)]
    for directory, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
                continue
            os.chmod(path, DIR_MODE if stat.S_ISDIR(info.st_mode) else stat.S_IMODE(info.st_mode) & 0o700)
            count += 1
            if len(changed) < examples:
                changed.append(path)
    return count, changed
