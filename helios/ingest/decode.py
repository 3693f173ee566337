"""Request body decoding: ``Content-Encoding`` with a bound on the decoded size.

Decoding streams with an early stop: output is produced a chunk at a time and
counted against ``limit`` (413 the moment it is passed); a body is never
decoded whole first. The decoded body goes into one buffer of its final size,
charged to the request's share of the ingest memory budget (``meter``, which
raises ``Unavailable`` when the node is busy) before it is allocated: growing
a buffer would copy it and briefly take twice the memory.

A truncated body is an error (400) and nothing of it is used: gzip and deflate
must reach the end of their stream (``eof``); every zstd frame must end.

zstd: python-zstandard's streaming reader returns a truncated frame's output
without an error, so the frames' block headers are walked first (no decoding;
``MAX_ZSTD_FRAMES`` frames and ``MAX_ZSTD_BLOCKS`` blocks at most) and every
frame must end. The decoded size is what the frames declare (zstd writes it in
the frame header when it knows it, and the decoder holds the frame to it), or,
if one does not, a first pass counts the output through a fixed 1 MiB buffer
(413 as soon as it passes ``limit``: a bomb costs no memory). The body is then
decoded straight into its buffer (``readinto``).
"""

from __future__ import annotations

import zlib
from typing import Iterator

import zstandard

from helios.errors import InvalidInput, PayloadTooLarge
from helios.ingest.budget import FREE, Meter

__all__ = ["MAX_ZSTD_BLOCKS", "MAX_ZSTD_FRAMES", "decode_body"]

CHUNK_BYTES = 1 << 20
MAX_ZSTD_FRAMES = 4096
MAX_ZSTD_BLOCKS = 1 << 20  # a block holds up to 128 KiB: 256 MiB takes 2,048 of them
_SKIPPABLE_LOW = 0x184D2A50
_MAGIC = (0xFD2FB528).to_bytes(4, "little")


def decode_body(body: bytes | bytearray, encoding: str | None, limit: int,
                meter: Meter | None = None) -> bytes | bytearray:
    """Undo ``gzip``, ``deflate`` or ``zstd``; refuse anything over ``limit`` bytes decoded.

    The decoded body is charged to ``meter`` (before it is allocated) and
    stays charged: the caller refunds it when it drops the body.
    """
    meter = meter or FREE
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        if len(body) > limit:
            raise PayloadTooLarge(_too_large(limit))
        return body
    if name in ("gzip", "x-gzip", "deflate"):
        wbits = 47 if name != "deflate" else 15  # 47: gzip or zlib header, detected
        return _inflate(body, wbits, limit, meter, members=name != "deflate")
    if name == "zstd":
        return _unzstd(body, limit, meter)
    raise InvalidInput(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or zstd")


def _too_large(limit: int) -> str:
    return f"the decoded body is larger than {limit} bytes (HELIOS_MAX_DECODED_BYTES)"


def _inflate(body: bytes | bytearray, wbits: int, limit: int, meter: Meter, *, members: bool) -> bytearray:
    """gzip (several members allowed, as RFC 1952 does) or zlib-wrapped deflate, to the end.

    Decoded into a buffer of the final size, so it is never grown (growing a
    large buffer copies it: twice the memory). The size is the gzip trailer's
    ISIZE when the body is one gzip member (it is then exact); otherwise, or if
    ISIZE was wrong, a first pass counts the output through a fixed buffer.
    """
    size = _gzip_isize(body) if members else None
    for counted in (False, True):
        if size is None or size > limit or counted:
            size = sum(len(chunk) for chunk in _inflate_chunks(body, wbits, limit, members=members))
        meter.charge(size)
        out = bytearray(size)
        produced = 0
        for chunk in _inflate_chunks(body, wbits, limit, members=members):
            if produced + len(chunk) > size:
                break  # ISIZE was wrong: count, then decode again
            out[produced : produced + len(chunk)] = chunk
            produced += len(chunk)
        else:
            if produced < size:  # several members: the last one's ISIZE was too large
                del out[produced:]
                meter.refund(size - produced)
            return out
        del out
        meter.refund(size)
    raise AssertionError("a counted size cannot be exceeded")


def _gzip_isize(body: bytes | bytearray) -> int | None:
    """The last gzip member's decoded size (mod 2^32) from its trailer, if this looks like gzip."""
    if len(body) < 18 or body[:2] != b"\x1f\x8b":
        return None
    return int.from_bytes(body[-4:], "little")


def _inflate_chunks(body: bytes | bytearray, wbits: int, limit: int, *, members: bool) -> Iterator[bytes]:
    """The decoded output in chunks of at most ``CHUNK_BYTES``; 413 past ``limit``; 400 if the
    stream is not valid, does not end, or is followed by anything but further gzip members."""
    inflater = zlib.decompressobj(wbits)
    pending: bytes | bytearray = body
    total = 0
    try:
        while True:
            chunk = inflater.decompress(pending, CHUNK_BYTES)
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(_too_large(limit))
                yield chunk
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


def _unzstd(body: bytes | bytearray, limit: int, meter: Meter) -> bytearray:
    declared = _zstd_frames(body)
    size = declared if declared is not None and declared <= limit else _zstd_size(body, limit)
    meter.charge(size)
    out = bytearray(size)
    view = memoryview(out)
    produced = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        while produced < size:
            count = reader.readinto(view[produced:])
            if not count:
                break
            produced += count
        extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"the body is not valid zstd data: {exc}") from None
    finally:
        view.release()
    if produced != size or extra:
        raise InvalidInput("the zstd body does not decode to the size its frames declare")
    return out


def _zstd_frames(body: bytes | bytearray) -> int | None:
    """Walk the frames and their block headers (no decoding): 400 unless every frame ends.

    Returns the decoded size the frames declare, or None if one does not
    declare it. python-zstandard's streaming reader returns what a truncated
    frame holds without an error, so this walk is what refuses a cut body.
    """
    position, frames, blocks, declared = 0, 0, 0, 0
    total = len(body)
    head = b""
    try:
        while position < total:
            frames += 1
            if frames > MAX_ZSTD_FRAMES:
                raise InvalidInput(f"the zstd body has more than {MAX_ZSTD_FRAMES} frames")
            head = bytes(body[position : position + 4])
            magic = int.from_bytes(head, "little")
            if total - position >= 8 and _SKIPPABLE_LOW <= magic <= _SKIPPABLE_LOW + 15:
                position += 8 + int.from_bytes(body[position + 4 : position + 8], "little")
                continue
            header = zstandard.frame_header_size(body[position : position + 18])
            params = zstandard.get_frame_parameters(body[position : position + header])
            if declared is not None:
                known = params.content_size != zstandard.CONTENTSIZE_UNKNOWN
                declared = declared + params.content_size if known else None
            position += header
            while True:
                if total - position < 3:
                    raise _Truncated
                word = int.from_bytes(body[position : position + 3], "little")
                kind, length = (word >> 1) & 3, word >> 3
                if kind == 3:
                    raise InvalidInput("the body is not valid zstd data: a reserved block type")
                position += 3 + (1 if kind == 1 else length)
                blocks += 1
                if blocks > MAX_ZSTD_BLOCKS:
                    raise InvalidInput(f"the zstd body has more than {MAX_ZSTD_BLOCKS} blocks")
                if word & 1:
                    break
            position += 4 if params.has_checksum else 0
        if position > total:
            raise _Truncated
    except zstandard.ZstdError as exc:
        if total - position < 18 and _MAGIC.startswith(head):
            raise InvalidInput("the zstd body is truncated: its last frame does not end") from None
        raise InvalidInput(f"the body is not valid zstd data: {exc}") from None
    except _Truncated:
        raise InvalidInput("the zstd body is truncated: its last frame does not end") from None
    return declared


class _Truncated(Exception):
    pass


def _zstd_size(body: bytes | bytearray, limit: int) -> int:
    """The decoded size, through a fixed buffer; 413 as soon as it passes ``limit``."""
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
