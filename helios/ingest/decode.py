"""Request body decoding: Content-Encoding with a bound on the decoded size."""

from __future__ import annotations

import zlib

import zstandard

from helios.errors import InvalidInput, PayloadTooLarge

__all__ = ["decode_body"]


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``gzip``, ``deflate`` or ``zstd``; refuse anything over ``limit`` bytes decoded."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        data = body
    elif name in ("gzip", "x-gzip", "deflate"):
        wbits = 47 if name != "deflate" else 15  # 47: gzip or zlib header, detected
        data = _inflate(body, wbits, limit)
    elif name == "zstd":
        data = _unzstd(body, limit)
    else:
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or zstd")
    if len(data) > limit:
        raise PayloadTooLarge(f"the decoded body is larger than {limit} bytes")
    return data


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
        if len(data) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the decoded body is larger than {limit} bytes")
        data += inflater.flush()
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid gzip/deflate data: {exc}") from None
    if not inflater.eof:
        raise InvalidInput("the gzip/deflate body is truncated")
    return data


def _unzstd(body: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    try:
        data = reader.read(limit + 1)
        chunks = [data]
        while data and sum(map(len, chunks)) <= limit:
            data = reader.read(limit + 1)
            chunks.append(data)
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"the body is not valid zstd data: {exc}") from None
    out = b"".join(chunks)
    if len(out) > limit:
        raise PayloadTooLarge(f"the decoded body is larger than {limit} bytes")
    return out
