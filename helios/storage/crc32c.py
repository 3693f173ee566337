"""CRC-32C (Castagnoli): the checksum of the write-ahead log's frames (``helios.storage.wal``).

``crc32c(data, value=0)`` continues a checksum as ``zlib.crc32`` does. ``_crc32c`` (C, built by
``setup.py`` where a C compiler is found) computes it with the CPU's crc32 instruction (about
8 GB/s here; ``zlib.crc32`` does 2 GB/s, and a WAL frame of uncompressed Arrow is 200 bytes a
row). Without the extension, ``NATIVE`` is False: the WAL then writes frames checksummed with
``zlib.crc32``, as before session 14, and only reads CRC-32C frames (a WAL written by a node
that had the extension), with the slow pure-Python tables below.
"""

from __future__ import annotations

try:
    from helios.storage import _crc32c
except ImportError:  # not built (no C compiler at install)
    _crc32c = None

__all__ = ["HARDWARE", "NATIVE", "crc32c"]

NATIVE = _crc32c is not None
HARDWARE = bool(_crc32c and _crc32c.HARDWARE)
_POLY = 0x82F63B78  # Castagnoli, reflected


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c_python(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """The same checksum one byte at a time (a few MB/s): replay's fallback, and the tests' reference."""
    crc = value ^ 0xFFFFFFFF
    table = _TABLE
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF


crc32c = _crc32c.crc32c if _crc32c is not None else crc32c_python
