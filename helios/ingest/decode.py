"""Request body decoding: ``Content-Encoding`` with a bound on the decoded size.

Decoding streams with an early stop: output is produced a chunk at a time, each
chunk charged to the request's share of the ingest memory budget (``charge``,
which raises ``Unavailable`` when the node is busy) and counted against
``limit`` (413 the moment it is passed). A body is never decoded whole first.

A truncated body is an error (400) and nothing of it is used: gzip and deflate
must reach the end of their stream (``eof``); every zstd frame must end.

zstd takes two passes, because python-zstandard's streaming reader returns a
truncated frame's output without an error: pass 1 streams the output through a
fixed 1 MiB buffer, counting it (early stop at ``limit``; no memory kept); pass
2 decodes frame by frame into a buffer of exactly that size, and each frame
must end (``decompressobj().eof``). Pass 2 feeds its input in slices that start
small and double, so finding where each frame ends costs O(body), and it
refuses more than ``MAX_ZSTD_FRAMES`` frames.
"""

from __future__ import annotations

import zlib
from typing import Callable

import zstandard

from helios.errors import InvalidInput, PayloadTooLarge

__all__ = ["Charge", "MAX_ZSTD_FRAMES", "decode_body"]

Charge = Callable[[int], None]
CHUNK_BYTES = 1 << 20
MAX_ZSTD_FRAMES = 4096
_FIRST_SLICE_BYTES = 4096


def _no_charge(nbytes: int) -> None:
    return None


def decode_body(body: bytes | bytearray, encoding: str | None, limit: int,
                charge: Charge = _no_charge) -> bytes | bytearray:
    """Undo ``gzip``, ``deflate`` or ``zstd``; refuse anything over ``limit`` bytes decoded."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        if len(body) > limit:
            raise PayloadTooLarge(_too_large(limit))
        return body
    if name in ("gzip", "x-gzip", "deflate"):
        wbits = 47 if name != "deflate" else 15  # 47: gzip or zlib header, detected
        return _inflate(body, wbits, limit, charge, members=name != "deflate")
    if name == "zstd":
        return _unzstd(body, limit, charge)
    raise InvalidInput(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or zstd")


def _too_large(limit: int) -> str:
    return f"the decoded body is larger than {limit} bytes (HELIOS_MAX_DECODED_BYTES)"


def _inflate(body: bytes | bytearray, wbits: int, limit: int, charge: Charge, *, members: bool) -> bytearray:
    """gzip (several members allowed, as RFC 1952 does) or zlib-wrapped deflate, to the end."""
    out = bytearray()
    inflater = zlib.decompressobj(wbits)
    pending: bytes | bytearray | memoryview = body
    try:
        while True:
            chunk = inflater.decompress(pending, CHUNK_BYTES)
            if chunk:
                if len(out) + len(chunk) > limit:
                    raise PayloadTooLarge(_too_large(limit))
                charge(len(chunk))
                out += chunk
            pending = inflater.unconsumed_tail
            if inflater.eof:
                rest = inflater.unused_data
                if not rest:
                    break
                if not members:
                    raise InvalidInput("the body has data after the end of its deflate stream")
                inflater, pending = zlib.decompressobj(wbits), rest
            elif not pending and not chunk:
                break  # every byte used and no more output: the stream did not end
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid gzip/deflate data: {exc}") from None
    if not inflater.eof:
        raise InvalidInput("the gzip/deflate body is truncated: its stream does not end")
    return out


def _unzstd(body: bytes | bytearray, limit: int, charge: Charge) -> bytearray:
    size = _zstd_size(body, limit)
    charge(size)
    out = bytearray(size)
    view = memoryview(body)
    produced = offset = frames = 0
    decompressor = zstandard.ZstdDecompressor()
    try:
        while offset < len(view):
            frames += 1
            if frames > MAX_ZSTD_FRAMES:
                raise InvalidInput(f"the zstd body has more than {MAX_ZSTD_FRAMES} frames")
            frame = decompressor.decompressobj()
            step = _FIRST_SLICE_BYTES
            while not frame.eof and offset < len(view):
                piece = view[offset : offset + step]
                data = frame.decompress(piece)
                if produced + len(data) > size:  # pass 1 saw less: never write past the buffer
                    raise InvalidInput("the zstd body decodes differently on a second read")
                out[produced : produced + len(data)] = data
                produced += len(data)
                offset += len(piece) - (len(frame.unused_data) if frame.eof else 0)
                step = min(step * 2, CHUNK_BYTES)
            if not frame.eof:
                raise InvalidInput("the zstd body is truncated: its last frame does not end")
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"the body is not valid zstd data: {exc}") from None
    if produced != size:
        raise InvalidInput("the zstd body decodes differently on a second read")
    return out


def _zstd_size(body: bytes | bytearray, limit: int) -> int:
    """Pass 1: the decoded size, through a fixed buffer; 413 as soon as it passes ``limit``."""
    buffer = bytearray(min(CHUNK_BYTES, limit + 1))
    size = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        while True:
            count = reader.readinto(buffer)
            if not count:
                return size
            size += count
            if size > limit:
                raise PayloadTooLarge(_too_large(limit))
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"the body is not valid zstd data: {exc}") from None
