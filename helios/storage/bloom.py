"""A Bloom filter over a block's terms, for pruning before a scan.

Terms are the block's lower-cased ``_msg`` tokens and ``field\\0value`` pairs
of its other fields. A filter answers "maybe" or "certainly not"; a false
"maybe" costs a scan, a false "not" would lose rows, so the query side only
asks about terms it spells exactly as the block side does.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["TOKEN_SPLIT", "Bloom", "block_terms", "field_term"]

TOKEN_SPLIT = r"[^\p{L}\p{N}_]+"
_HEAD = struct.Struct("<BI")  # k, number of bits


def field_term(name: str, value: str) -> str:
    return f"{name}\x00{value}"


def _hashes(term: str) -> tuple[int, int]:
    digest = hashlib.blake2b(term.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1


class Bloom:
    def __init__(self, bits: bytearray, k: int) -> None:
        self.bits = bits
        self.k = k
        self.m = len(bits) * 8

    @classmethod
    def build(cls, terms: Iterable[str], count: int, false_positive_rate: float = 0.01) -> Bloom:
        m = max(64, int(-count * math.log(false_positive_rate) / (math.log(2) ** 2)))
        m = (m + 7) // 8 * 8
        k = max(1, min(12, round(m / max(1, count) * math.log(2))))
        bloom = cls(bytearray(m // 8), k)
        bits, size = bloom.bits, bloom.m
        for term in terms:
            h1, h2 = _hashes(term)
            for i in range(k):
                bit = (h1 + i * h2) % size
                bits[bit >> 3] |= 1 << (bit & 7)
        return bloom

    def may_contain(self, term: str) -> bool:
        h1, h2 = _hashes(term)
        bits, size = self.bits, self.m
        for i in range(self.k):
            bit = (h1 + i * h2) % size
            if not bits[bit >> 3] & (1 << (bit & 7)):
                return False
        return True

    def to_bytes(self) -> bytes:
        return _HEAD.pack(self.k, self.m) + bytes(self.bits)

    @classmethod
    def from_bytes(cls, data: bytes) -> Bloom:
        k, m = _HEAD.unpack_from(data)
        bits = bytearray(data[_HEAD.size :])
        if len(bits) * 8 != m or not 1 <= k <= 64:
            raise ValueError("corrupt bloom filter")
        return cls(bits, k)


def block_terms(table: pa.Table) -> list[str]:
    """Every distinct term of a block: message tokens and field=value pairs."""
    terms: list[str] = []
    if "_msg" in table.column_names and table.num_rows:
        tokens = pc.split_pattern_regex(pc.utf8_lower(table.column("_msg")), TOKEN_SPLIT)
        flat = pc.list_flatten(tokens)
        terms.extend(t for t in pc.unique(flat).to_pylist() if t)
    for name in table.column_names:
        if name in ("_time", "_msg"):
            continue
        for value in pc.unique(table.column(name)).to_pylist():
            if value is not None:
                terms.append(field_term(name, value))
    return terms
