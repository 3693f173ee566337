"""A filter answered from a block's token index: the rows it picks, exactly or as candidates.

``hits(node, tokens, dataset)`` gives a ``Hit`` — sorted row ids (``None``: every row) and whether they
are exactly the matching rows — or ``None`` when the index cannot narrow the rows (the block is then
scanned). A hit is exact *over the sure rows* only: the index leaves out rows whose ``_msg`` is not
ASCII (``TokenIndex.unsure``), and the caller always checks those by scanning. So the semantics stay
DESIGN section 7's, whatever Unicode case folding does.

- a word that is one token (``error``, ``err*``) is a term (or a prefix range) lookup: exact;
- a word with separators (``foo-bar``) and a phrase pick candidate rows from their whole tokens (and
  a prefix range for a phrase's last token), checked by scanning the candidates only;
- ``field:value`` on an indexed (low-cardinality string) field is a term lookup: exact;
- ``AND`` intersects, ``OR`` unites, ``NOT`` complements an exact hit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from helios.query import ast
from helios.query.cancel import Check, never
from helios.storage.tokens import TokenIndex, field_term

__all__ = ["Hit", "filter_columns", "hits", "may_match_tokens"]

_TOKEN = re.compile(r"[a-z0-9_]+")
_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class Hit:
    rows: np.ndarray | None  # sorted distinct row ids; None: every row
    exact: bool


def _is_word(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _intersect(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return np.intersect1d(a, b, assume_unique=True)


def _constraints(text: str, phrase: bool, prefix: bool) -> list[tuple[str, bool]] | None:
    """The (token, is_prefix) lookups a matching row's message must satisfy; None: the text is not ASCII.

    A word's tokens are all whole, except an open last one (``prefix``). A phrase's token is whole
    when text surrounds it on both sides, a prefix when only its left side is closed, and says nothing
    when its left side may be the middle of a longer token.
    """
    if not text.isascii():
        return None
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text.lower())]
    found = []
    for i, (token, start, end) in enumerate(tokens):
        left = not phrase or start > 0
        right = end < len(text) or (not phrase and not prefix)
        if i == len(tokens) - 1 and prefix and not phrase and end == len(text):
            right = False
        if left:
            found.append((token, not right))
    return found


def hits(node: ast.Filter, tokens: TokenIndex, dataset: str, check: Check = never) -> Hit | None:
    """The rows of the block that ``node`` may match (``Hit``), or None when the index cannot tell.

    Each token is looked up once however often the filter names it (a query may name ``a*`` a
    thousand times, and a prefix over a large vocabulary takes a while), and ``check`` is called
    before each lookup, so a query's deadline stops a long run of them."""
    return _hits(node, tokens, dataset, {}, check)


def _hits(node: ast.Filter, tokens: TokenIndex, dataset: str,
          seen: dict[tuple[str, bool], np.ndarray], check: Check) -> Hit | None:
    if isinstance(node, ast.All):
        return Hit(None, True)
    if isinstance(node, (ast.Word, ast.Phrase)):
        phrase = isinstance(node, ast.Phrase)
        found = _constraints(node.text, phrase, getattr(node, "prefix", False))
        if not found:
            return None
        rows: np.ndarray | None = None
        for token, open_right in dict.fromkeys(found):
            if (token, open_right) not in seen:
                check()
                seen[token, open_right] = tokens.prefix(token) if open_right else tokens.term(token)
            rows = _intersect(rows, seen[token, open_right])
            if rows is not None and len(rows) == 0:
                break
        exact = not phrase and len(found) == 1 and found[0][0] == node.text.lower()
        return Hit(rows, exact)
    if isinstance(node, ast.FieldEq):
        if node.field == "dataset":
            return Hit(None if node.value == dataset else _EMPTY, True)
        if node.value == "":
            return None
        if node.field not in tokens.columns:
            return Hit(_EMPTY, True)
        if node.field in tokens.fields:
            check()
            return Hit(tokens.term(field_term(node.field, node.value)), True)
        return None
    if isinstance(node, ast.And):
        parts = [_hits(child, tokens, dataset, seen, check) for child in node.children]
        known = [p for p in parts if p is not None]
        if not known:
            return None
        rows = None
        for part in known:
            rows = _intersect(rows, part.rows)
        return Hit(rows, len(known) == len(parts) and all(p.exact for p in known))
    if isinstance(node, ast.Or):
        parts = [_hits(child, tokens, dataset, seen, check) for child in node.children]
        if any(p is None for p in parts):
            return None
        if any(p.rows is None for p in parts):  # type: ignore[union-attr]
            return Hit(None, all(p.exact for p in parts))  # type: ignore[union-attr]
        rows = parts[0].rows  # type: ignore[union-attr]
        for part in parts[1:]:
            rows = np.union1d(rows, part.rows)  # type: ignore[union-attr]
        return Hit(rows, all(p.exact for p in parts))  # type: ignore[union-attr]
    if isinstance(node, ast.Not):
        inner = _hits(node.child, tokens, dataset, seen, check)
        if inner is None or not inner.exact:
            return None
        if inner.rows is None:
            return Hit(_EMPTY, True)
        return Hit(np.setdiff1d(np.arange(tokens.rows, dtype=np.int64), inner.rows, assume_unique=True), True)
    return None


def may_match_tokens(node: ast.Filter, tokens: TokenIndex) -> bool:
    """False only if no row can match a word, phrase or ``field:value`` leaf (cheap: term presence)."""
    if isinstance(node, (ast.Word, ast.Phrase)):
        if len(tokens.unsure):
            return True
        found = _constraints(node.text, isinstance(node, ast.Phrase), getattr(node, "prefix", False))
        if not found:
            return True
        return all(tokens.has_prefix(t) if open_right else tokens.has_term(t) for t, open_right in found)
    if isinstance(node, ast.FieldEq) and node.value != "" and node.field in tokens.fields:
        return tokens.has_term(field_term(node.field, node.value))
    return True


def filter_columns(node: ast.Filter) -> set[str]:
    """The block columns a filter reads."""
    if isinstance(node, (ast.And, ast.Or)):
        return set().union(*(filter_columns(child) for child in node.children))
    if isinstance(node, ast.Not):
        return filter_columns(node.child)
    if isinstance(node, (ast.Word, ast.Phrase)):
        return {"_msg"}
    field = getattr(node, "field", None)
    return {field} if field and field != "dataset" else set()
