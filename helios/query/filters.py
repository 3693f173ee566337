"""Filters: vectorised row masks (pyarrow.compute) and block pruning.

``mask(node, table, dataset)`` gives a null-free boolean array over the
table's rows. ``may_match(node, index, dataset)`` answers False only when no
row of a block can match: a false True costs a scan, a false False would
lose rows, so every rule here is conservative.
"""

from __future__ import annotations

import re
import string
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helios import timeutil
from helios.query import ast
from helios.query.cancel import Check, never
from helios.query.lookup import may_match_tokens
from helios.storage.blocks import BlockIndex
from helios.storage.bloom import field_term

__all__ = ["contains", "mask", "may_match", "numeric"]

_WORDCHAR = re.compile(r"[^\W]", re.UNICODE)  # letters, digits, underscore
_TOKENS = re.compile(r"[^\W]+", re.UNICODE)
_BOUNDARY_LEFT = r"(?:^|[^\p{L}\p{N}_])"
_BOUNDARY_RIGHT = r"(?:$|[^\p{L}\p{N}_])"
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_INTEGER = r"^[+-]?[0-9]{1,18}$"
_PUNCT = set(string.punctuation)
_CMP = {">": pc.greater, ">=": pc.greater_equal, "<": pc.less, "<=": pc.less_equal}


def _re2_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _PUNCT else ch for ch in text)


def _is_wordchar(ch: str) -> bool:
    return bool(_WORDCHAR.match(ch))


def word_pattern(text: str, prefix: bool) -> str:
    left = _BOUNDARY_LEFT if _is_wordchar(text[0]) else ""
    right = _BOUNDARY_RIGHT if (not prefix and _is_wordchar(text[-1])) else ""
    return left + _re2_escape(text) + right


def _column(table: pa.Table, field: str, dataset: str | None) -> Any:
    if field in table.column_names:
        return table.column(field)
    if field == "dataset" and dataset is not None:
        return pa.repeat(dataset, table.num_rows)
    return None


def _as_text(column: Any) -> Any:
    kind = column.type
    if pa.types.is_string(kind):
        return column
    if pa.types.is_timestamp(kind):
        return timeutil.format_column(column)
    return column.cast(pa.string())


def numeric(column: Any) -> Any:
    """A column as numbers: int64 when every number in it is whole, else float64; text that is not a number is null."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return column
    if pa.types.is_boolean(kind) or pa.types.is_null(kind):
        return column.cast(pa.int64())
    if pa.types.is_timestamp(kind):
        return column.cast(pa.int64())
    cast = _cast_numbers(column.cast(pa.string()))
    return cast if cast is not None else by_expressions(column)


def by_expressions(column: Any) -> Any:
    """``numeric`` of text by the language's rule itself: trimmed, ``_NUMBER`` is a number,
    int64 when every number matches ``_INTEGER``, else float64."""
    text = pc.utf8_trim_whitespace(column.cast(pa.string()))
    is_number = pc.match_substring_regex(text, _NUMBER)
    valid = pc.if_else(is_number, text, None)
    is_integer = pc.match_substring_regex(valid, _INTEGER)
    if pc.all(pc.or_(pc.is_null(valid), is_integer)).as_py() is not False:
        return pc.utf8_ltrim(valid, characters="+").cast(pa.int64())  # the cast refuses "+5"
    return valid.cast(pa.float64())


def _cast_numbers(text: Any) -> Any | None:
    """``numeric`` of text that Arrow's casts decide alone (the usual number field), else None.

    The regular expressions take ~1.1 s for 10 M values; this ~0.15 s for digits, ~0.3 s for
    fractions. Text that is all ASCII digits, none over 18 long, is whole (int64). Text that reads
    as float64 with every number finite and one at least not whole has a value that is not whole
    (a point or a negative exponent): float64. Anything else (signs, blanks, junk, an empty value,
    ``nan``, whole numbers written ``5.0``): None, and the expressions decide, as before. A failing
    int64 cast is not tried: Arrow took 4 s to refuse 10 M fractions. tests/test_quantiles.py pins
    this to ``by_expressions``.
    """
    if pc.all(pc.ascii_is_decimal(text)).as_py() is True:  # ascii_is_decimal("") is False
        return text.cast(pa.int64()) if pc.max(pc.binary_length(text)).as_py() <= 18 else None
    try:
        numbers = text.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if pc.all(pc.is_finite(numbers)).as_py() is not True:
        return None
    return numbers if pc.any(pc.not_equal(pc.floor(numbers), numbers)).as_py() is True else None


def _false(n: int) -> pa.Array:
    return pa.repeat(False, n)


def _scatter(n: int, rows: Any, values: Any) -> pa.Array:
    """A boolean array of ``n`` rows: ``values`` at ``rows``, False elsewhere."""
    result = np.zeros(n, dtype=bool)
    result[rows.to_numpy()[np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)]] = True
    return pa.array(result)


def contains(msg: Any, text: str) -> Any:
    """Rows whose text holds ``text``, case-insensitively (RE2's case folding), nulls False.

    For ASCII ``text`` the ASCII rows are checked by a plain substring search of their ASCII-lowered
    text (several times faster than a case-insensitive search) and only the other rows by RE2."""
    if isinstance(msg, pa.ChunkedArray):
        msg = msg.combine_chunks()
    if not text.isascii():
        return pc.fill_null(pc.match_substring(msg, text, ignore_case=True), False)
    hit = pc.fill_null(pc.match_substring(pc.ascii_lower(msg), text.lower()), False)
    other = pc.indices_nonzero(pc.fill_null(pc.invert(pc.string_is_ascii(msg)), False))
    if len(other) == 0:
        return hit
    folded = pc.fill_null(pc.match_substring(msg.take(other), text, ignore_case=True), False)
    return pc.or_(hit, _scatter(len(msg), other, folded))


def mask(node: ast.Filter, table: pa.Table, dataset: str | None = None, check: Check = never) -> Any:
    """Rows of ``table`` that ``node`` matches, as a null-free boolean array.

    ``check`` is called before every leaf term is evaluated, so a query of
    thousands of terms can be stopped between two of them.
    """
    n = table.num_rows
    if isinstance(node, ast.All):
        return pa.repeat(True, n)
    if isinstance(node, ast.And):
        result = mask(node.children[0], table, dataset, check)
        for child in node.children[1:]:
            result = pc.and_(result, mask(child, table, dataset, check))
        return result
    if isinstance(node, ast.Or):
        result = mask(node.children[0], table, dataset, check)
        for child in node.children[1:]:
            result = pc.or_(result, mask(child, table, dataset, check))
        return result
    if isinstance(node, ast.Not):
        return pc.invert(mask(node.child, table, dataset, check))
    check()
    if isinstance(node, ast.Word):
        msg = _column(table, "_msg", dataset)
        if msg is None:
            return _false(n)
        if isinstance(msg, pa.ChunkedArray):
            msg = msg.combine_chunks()
        candidates = pc.indices_nonzero(contains(msg, node.text))  # a plain search first, then the regex
        if len(candidates) == 0:
            return _false(n)
        pattern = word_pattern(node.text, node.prefix)
        return _scatter(n, candidates, pc.fill_null(
            pc.match_substring_regex(msg.take(candidates), pattern, ignore_case=True), False))
    if isinstance(node, ast.Phrase):
        msg = _column(table, "_msg", dataset)
        if msg is None:
            return _false(n)
        return contains(msg, node.text)
    column = _column(table, node.field, dataset)  # type: ignore[attr-defined]
    if isinstance(node, ast.FieldEq):
        if column is None:
            return pa.repeat(node.value == "", n)
        hit = pc.equal(_as_text(column), node.value)
        if node.value == "":
            return pc.fill_null(hit, True)
        return pc.fill_null(hit, False)
    if column is None:
        return _false(n)
    if isinstance(node, ast.FieldPhrase):
        hit = pc.match_substring(_as_text(column), node.text, ignore_case=True)
    elif isinstance(node, ast.FieldRegex):
        hit = pc.match_substring_regex(_as_text(column), node.pattern)
    elif isinstance(node, ast.FieldPrefix):
        hit = pc.starts_with(_as_text(column), node.prefix)
    elif isinstance(node, ast.FieldExists):
        hit = pc.and_(pc.is_valid(column), pc.not_equal(_as_text(column), ""))
    elif isinstance(node, ast.FieldCompare):
        hit = _CMP[node.op](numeric(column), node.number)
    else:
        raise AssertionError(f"unknown filter node {node!r}")
    return pc.fill_null(hit, False)


def may_match(node: ast.Filter, index: BlockIndex | None, dataset: str) -> bool:
    """False only if no row of the block (described by ``index``) can match ``node``."""
    if isinstance(node, ast.And):
        return all(may_match(child, index, dataset) for child in node.children)
    if isinstance(node, ast.Or):
        return any(may_match(child, index, dataset) for child in node.children)
    if isinstance(node, ast.Not):
        return not isinstance(node.child, ast.All)
    if isinstance(node, ast.All):
        return True
    field = getattr(node, "field", None)
    if field == "dataset":
        if isinstance(node, ast.FieldEq):
            return node.value == dataset
        return True
    if index is None:
        return True
    if index.tokens is not None:
        if field is not None and field not in index.columns:
            return isinstance(node, ast.FieldEq) and node.value == ""
        return may_match_tokens(node, index.tokens)
    if isinstance(node, (ast.Word, ast.Phrase)):
        if index.bloom is None or not node.text.isascii():  # lower() may split a non-ASCII letter ("İ")
            return True
        tokens = _TOKENS.findall(node.text.lower())
        if isinstance(node, ast.Word):
            whole = tokens[:-1] if node.prefix and _is_wordchar(node.text[-1]) else tokens
        else:  # a phrase's first and last tokens may be parts of longer tokens
            whole = tokens[1 if _is_wordchar(node.text[0]) else 0 :]
            whole = whole[: -1 if whole and _is_wordchar(node.text[-1]) else None]
        return all(index.bloom.may_contain(t) for t in whole if t.isascii())
    if field not in index.columns:
        return isinstance(node, ast.FieldEq) and node.value == ""
    if isinstance(node, ast.FieldEq) and node.value != "" and index.bloom is not None:
        return index.bloom.may_contain(field_term(field, node.value))
    return True
