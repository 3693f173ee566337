"""Time: nanoseconds since the epoch (UTC) everywhere inside the node.

Parsing and formatting of columns is vectorised with pyarrow; the scalar
helpers serve request parameters.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from helios.errors import InvalidInput

__all__ = [
    "DAY_NS",
    "TIME_TYPE",
    "day_of",
    "day_name",
    "floor_div",
    "format_column",
    "format_ns",
    "now_ns",
    "parse_column",
    "parse_duration_ns",
    "parse_instant",
]

DAY_NS = 86_400 * 1_000_000_000
TIME_TYPE = pa.timestamp("ns", tz="UTC")
_NAIVE = pa.timestamp("ns")  # the same instants without a zone: cast to text as they are
_DIGITS = r"^-?[0-9]+$"
_HAS_ZONE = r"(?i)(z|[+-][0-9]{2}:?[0-9]{2})$"
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d|w)$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000, "d": DAY_NS, "w": 7 * DAY_NS}


def now_ns() -> int:
    return time.time_ns()


def day_of(ns: int) -> int:
    """The UTC day number (days since 1970-01-01) holding ``ns``."""
    return ns // DAY_NS


def floor_div(ns: pa.Array | pa.ChunkedArray, step: int) -> pa.Array | pa.ChunkedArray:
    """Integer ``floor(ns / step)`` for an int64 column (exact, unlike a float division)."""
    quotient = pc.divide(ns, step)  # truncates toward zero
    behind = pc.and_(pc.less(ns, 0), pc.not_equal(pc.multiply(quotient, step), ns))
    return pc.subtract(quotient, behind.cast(pa.int64()))


def day_name(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")


def day_number(name: str) -> int:
    """The inverse of ``day_name``."""
    return int(datetime.strptime(name, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()) // 86_400


def format_ns(ns: int) -> str:
    """RFC 3339 with nanoseconds: ``2024-05-01T12:00:00.123456789Z``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def format_column(times: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """RFC 3339 text in UTC with all nine digits of nanoseconds: ``2026-01-02T03:04:05.000000000Z``.

    A cast to text of the times without their zone, ``T`` put between date and time: a fifth of the
    time of ``strftime``, which looks the zone up for every value (0.4 ms for a 100-row answer)."""
    text = times.cast(TIME_TYPE).cast(_NAIVE).cast(pa.string())
    joined = pc.replace_substring(text, " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(joined, "Z", "")


def parse_column(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Strings (RFC 3339, or integer nanoseconds as digits) to timestamps.

    A timestamp without a zone offset is taken as UTC. Raises ValueError on
    any value that is neither; the caller locates it for its error message.
    """
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64()).cast(TIME_TYPE)
    if pa.types.is_timestamp(values.type):
        return values.cast(TIME_TYPE) if values.type.tz else pc.assume_timezone(values, "UTC").cast(TIME_TYPE)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        raise ValueError(f"_time must be RFC 3339 text or integer nanoseconds, not {values.type}")
    values = values.cast(pa.string())
    digits = pc.match_substring_regex(values, _DIGITS)
    try:
        as_int = pc.if_else(digits, values, None).cast(pa.int64()).cast(TIME_TYPE)
        text = pc.utf8_upper(pc.if_else(digits, None, values))
        zoned = pc.match_substring_regex(text, _HAS_ZONE)
        text = pc.if_else(zoned, text, pc.binary_join_element_wise(text, "Z", ""))
        as_text = text.cast(TIME_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(str(exc)) from None
    return pc.if_else(digits, as_int, as_text)


def parse_instant(value: object, what: str) -> int | None:
    """A request's ``from``/``to``: RFC 3339 text or integer nanoseconds; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be RFC 3339 text or integer nanoseconds")
    if isinstance(value, int):
        return _int64(value, what)
    if isinstance(value, str):
        if re.fullmatch(r"-?[0-9]+", value):
            if len(value.lstrip("-").lstrip("0")) > 19:  # past int64 (and Python's digit limit)
                raise InvalidInput(f"{what}: {value[:40]!r} is outside the range of int64 "
                                   "nanoseconds")
            return _int64(int(value), what)
        try:
            parsed = parse_column(pa.array([value], pa.string()))
        except ValueError:
            raise InvalidInput(f"{what}: {value!r} is not RFC 3339 text or integer nanoseconds") from None
        return int(parsed.cast(pa.int64())[0].as_py())
    raise InvalidInput(f"{what} must be RFC 3339 text or integer nanoseconds")


def _int64(ns: int, what: str) -> int:
    if not -(1 << 63) <= ns < (1 << 63):
        raise InvalidInput(f"{what}: {ns} is outside the range of int64 nanoseconds")
    return ns


def parse_duration_ns(text: str) -> int:
    """``5m``, ``1h``, ``30s``, ``1.5d`` to nanoseconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h or 1d")
    ns = int(float(match.group(1)) * _UNIT_NS[match.group(2)])
    if ns <= 0:
        raise ValueError("a duration must be positive")
    return ns
