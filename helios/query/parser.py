"""Parse one line of the query language into a ``Query``.

    query    := filter? ( "|" pipe )*
    filter   := and ( "OR" and )*
    and      := unary ( "AND"? unary )*
    unary    := ( "-" | "!" | "NOT" ) unary | primary
    primary  := "(" filter ")" | "*" | PHRASE | WORD | WORD "*" | FIELD ":" value
    value    := WORD | WORD "*" | "*" | PHRASE | "~" PHRASE | (">" | ">=" | "<" | "<=") NUMBER

Errors raise ``QuerySyntaxError`` with the 1-based column where parsing stopped.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import trio

from helios import timeutil
from helios.errors import QuerySyntaxError
from helios.query import ast

__all__ = ["MAX_QUERY_LENGTH", "parse"]

MAX_QUERY_LENGTH = 16_384
MAX_DEPTH = 64
# Regular expressions are compiled by each scan of each block (Arrow keeps no compiled pattern), and
# first here: a large Unicode class repeated (\pL{400}) takes 0.2 s to compile, where the usual
# patterns take microseconds and plausible Unicode ones ([\pL\pN_]{3,20}) about 10 ms. The time
# bound is wide, so that only absurd patterns meet it (a time is not the same twice).
MAX_PATTERNS = 32
MAX_COMPILE_S = 0.5  # all of a query's patterns together
_COMPILING = trio.CapacityLimiter(2)  # threads parsing texts with patterns (parse_async), at most
MAX_KEYS = 32  # fields to group or sort by: each is a column as long as the rows a part holds
MAX_AGGS = 64  # results of one stats or timechart: each is a column per part, too
PARSED_KEPT = 256  # queries remembered by their text (``parse``)…
PARSED_TEXT_CHARS = 1024  # …when it is this short at most: 256 KiB of texts at most
MAX_STEP_NS = 3650 * timeutil.DAY_NS  # a timechart step of at most ten years keeps bucket arithmetic in int64
_COUNT = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also accepts "²"
_SPECIAL = set("()|,:\"'")
_AGG_FUNCS = {"count", "count_distinct", "sum", "avg", "min", "max", "quantile", "median"}


@dataclass(frozen=True)
class Token:
    kind: str  # WORD STRING LPAREN RPAREN PIPE COMMA COLON MINUS CMP TILDE EOF
    text: str
    col: int  # 1-based


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    after_colon = False
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            after_colon = False
            continue
        start = i
        if ch in "\"'":
            quote, i, chars = ch, i + 1, []
            while i < n and text[i] != quote:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                    chars.append({"n": "\n", "t": "\t"}.get(text[i], text[i]))
                else:
                    chars.append(text[i])
                i += 1
            if i >= n:
                raise QuerySyntaxError("unterminated quoted string", start + 1)
            i += 1
            tokens.append(Token("STRING", "".join(chars), start + 1))
        elif ch in "()|,":
            kind = {"(": "LPAREN", ")": "RPAREN", "|": "PIPE", ",": "COMMA"}[ch]
            tokens.append(Token(kind, ch, start + 1))
            i += 1
        elif ch == ":":
            tokens.append(Token("COLON", ch, start + 1))
            i += 1
            after_colon = True
            continue
        elif after_colon and ch in "<>":
            op = text[i : i + 2] if text[i + 1 : i + 2] == "=" else ch
            tokens.append(Token("CMP", op, start + 1))
            i += len(op)
        elif after_colon and ch == "~":
            tokens.append(Token("TILDE", ch, start + 1))
            i += 1
        elif not after_colon and ch in "-!" and i + 1 < n and not text[i + 1].isspace() and text[i + 1] not in ")|,":
            tokens.append(Token("MINUS", ch, start + 1))
            i += 1
        else:
            while i < n and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            tokens.append(Token("WORD", text[start:i], start + 1))
        after_colon = False
    tokens.append(Token("EOF", "", n + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0
        self.patterns = 0  # regular expressions so far, and the seconds they took to compile
        self.compile_s = 0.0

    # -- helpers ----------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def error(self, message: str, token: Token | None = None) -> QuerySyntaxError:
        return QuerySyntaxError(message, (token or self.tok).col)

    def expect(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            found = "the end of the query" if self.tok.kind == "EOF" else repr(self.tok.text)
            raise self.error(f"expected {what}, found {found}")
        return self.advance()

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "WORD" and self.tok.text in words

    # -- filters ----------------------------------------------------------

    def parse_query(self) -> ast.Query:
        if self.tok.kind in ("PIPE", "EOF"):
            node: ast.Filter = ast.All()
        else:
            node = self.parse_or()
        pipes: list[ast.Pipe] = []
        while self.tok.kind == "PIPE":
            self.advance()
            pipes.append(self.parse_pipe())
        if self.tok.kind != "EOF":
            raise self.error(f"unexpected {self.tok.text!r}")
        return ast.Query(node, tuple(pipes))

    def parse_or(self) -> ast.Filter:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error("the query nests too deeply")
        children = [self.parse_and()]
        while self.is_word("OR"):
            self.advance()
            children.append(self.parse_and())
        self.depth -= 1
        children = [*dict.fromkeys(children)]  # a term again changes no row: `a OR a` is `a`
        return children[0] if len(children) == 1 else ast.Or(tuple(children))

    def starts_unary(self) -> bool:
        token = self.tok
        if token.kind in ("STRING", "LPAREN", "MINUS"):
            return True
        return token.kind == "WORD" and token.text != "OR"

    def parse_and(self) -> ast.Filter:
        children = [self.parse_unary()]
        while self.starts_unary():
            if self.is_word("AND"):
                self.advance()
            children.append(self.parse_unary())
        children = [*dict.fromkeys(children)]  # `a* a*` is `a*`: each term is looked up once
        return children[0] if len(children) == 1 else ast.And(tuple(children))

    def parse_unary(self) -> ast.Filter:
        if self.tok.kind == "MINUS" or self.is_word("NOT"):
            self.advance()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error("the query nests too deeply")
            child = self.parse_unary()
            self.depth -= 1
            return ast.Not(child)
        return self.parse_primary()

    def parse_primary(self) -> ast.Filter:
        token = self.tok
        if token.kind == "LPAREN":
            self.advance()
            node = self.parse_or()
            self.expect("RPAREN", "')'")
            return node
        if token.kind == "STRING":
            self.advance()
            if self.tok.kind == "COLON":
                self.advance()
                return self.parse_value(token.text, token)
            if not token.text:
                raise self.error("an empty phrase matches nothing useful; use * for every record", token)
            return ast.Phrase(token.text)
        if token.kind == "WORD":
            if token.text in ("AND", "OR", "NOT"):
                raise self.error(f"{token.text} needs a filter on its right", token)
            self.advance()
            if self.tok.kind == "COLON":
                self.advance()
                return self.parse_value(token.text, token)
            return self.word(token)
        if token.kind == "EOF":
            raise self.error("expected a filter, found the end of the query")
        raise self.error(f"unexpected {token.text!r}")

    def word(self, token: Token) -> ast.Filter:
        text = token.text
        if text == "*":
            return ast.All()
        prefix = text.endswith("*")
        core = text.rstrip("*") if prefix else text
        if not core or "*" in core:
            raise self.error("'*' may only end a word, as in err*", token)
        return ast.Word(core, prefix)

    def parse_value(self, field: str, field_token: Token) -> ast.Filter:
        if not field:
            raise self.error("a field name is empty", field_token)
        token = self.tok
        if token.kind == "CMP":
            self.advance()
            number_token = self.expect("WORD", "a number")
            try:
                number = float(number_token.text)
            except ValueError:
                raise self.error(f"{number_token.text!r} is not a number", number_token) from None
            if number != number:
                raise self.error("NaN is not a number to compare with", number_token)
            return ast.FieldCompare(field, token.text, number)
        if token.kind == "TILDE":
            self.advance()
            pattern = self.expect("STRING", 'a quoted regular expression, as in field:~"a.*b"')
            self.patterns += 1
            if self.patterns > MAX_PATTERNS:
                raise self.error(f"at most {MAX_PATTERNS} regular expressions in one query",
                                 pattern)
            self.compile_s += _check_regex(pattern.text, pattern.col)
            if self.compile_s > MAX_COMPILE_S:
                raise self.error(f"the regular expressions take more than {MAX_COMPILE_S:g} s to "
                                 "compile (large Unicode classes such as \\pL, repeated)", pattern)
            return ast.FieldRegex(field, pattern.text)
        if token.kind == "STRING":
            self.advance()
            return ast.FieldPhrase(field, token.text) if token.text else ast.FieldEq(field, "")
        if token.kind == "WORD":
            self.advance()
            if token.text == "*":
                return ast.FieldExists(field)
            if token.text.endswith("*") and "*" not in token.text[:-1]:
                return ast.FieldPrefix(field, token.text[:-1])
            return ast.FieldEq(field, token.text)
        raise self.error(f"expected a value for {field!r}")

    # -- pipes ------------------------------------------------------------

    def parse_pipe(self) -> ast.Pipe:
        name_token = self.expect("WORD", "a pipe name (fields, sort, limit, stats, timechart, top, where)")
        name = name_token.text.lower()
        if name in ("fields", "field"):
            return ast.Fields(tuple(self.name_list()))
        if name == "sort":
            return self.parse_sort()
        if name in ("limit", "head"):
            return ast.Limit(self.count("limit"))
        if name == "stats":
            aggs = self.agg_list(required=True)
            return ast.Stats(tuple(aggs), tuple(self.by_clause()))
        if name == "timechart":
            step_token = self.expect("WORD", "a step such as 1m or 1h")
            try:
                step = timeutil.parse_duration_ns(step_token.text)
            except ValueError as exc:
                raise self.error(str(exc), step_token) from None
            except OverflowError:  # float("9" * 400) is infinite
                step = MAX_STEP_NS + 1
            if step > MAX_STEP_NS:
                raise self.error("a timechart step is at most 3650d (ten years)", step_token)
            aggs = self.agg_list(required=False) or [ast.Agg("count", None, "count")]
            return ast.Timechart(step, tuple(aggs), tuple(self.by_clause()))
        if name == "top":
            count = 10
            if self.tok.kind == "WORD" and _COUNT.fullmatch(self.tok.text):
                count = self.count("top")
            if self.is_word("by"):
                self.advance()
            field = self.expect("WORD", "a field name").text
            return ast.Top(count, field)
        if name == "where":
            if self.tok.kind in ("PIPE", "EOF"):
                raise self.error("where needs a filter")
            return ast.Where(self.parse_or())
        raise self.error(f"unknown pipe {name_token.text!r}", name_token)

    def name_list(self) -> list[str]:
        parens = self.tok.kind == "LPAREN"
        if parens:
            self.advance()
        names = [self.expect("WORD", "a field name").text]
        while self.tok.kind == "COMMA":
            self.advance()
            names.append(self.expect("WORD", "a field name").text)
        if parens:
            self.expect("RPAREN", "')'")
        return names

    def parse_sort(self) -> ast.Sort:
        if self.is_word("by"):
            self.advance()
        parens = self.tok.kind == "LPAREN"
        if parens:
            self.advance()
        keys = [self.sort_key()]
        while self.tok.kind == "COMMA":
            self.advance()
            keys.append(self.sort_key())
        if parens:
            self.expect("RPAREN", "')'")
        if self.is_word("desc", "asc"):  # `sort by (a, b) desc` applies to every key
            descending = self.advance().text == "desc"
            keys = [(name, descending) for name, _ in keys]
        first = {name: descending for name, descending in reversed(keys)}  # a key again: no effect
        keys = [(name, first[name]) for name in dict.fromkeys(name for name, _ in keys)]
        if len(keys) > MAX_KEYS:
            raise self.error(f"at most {MAX_KEYS} fields to sort by")
        return ast.Sort(tuple(keys))

    def sort_key(self) -> tuple[str, bool]:
        descending = False
        if self.tok.kind == "MINUS":
            self.advance()
            descending = True
        name = self.expect("WORD", "a field to sort by").text
        if name.startswith("-") and len(name) > 1:
            name, descending = name[1:], True
        if self.is_word("desc", "asc") and self.tokens[self.pos + 1].kind in ("COMMA", "RPAREN"):
            descending = self.advance().text == "desc"
        return name, descending

    def count(self, what: str) -> int:
        token = self.expect("WORD", f"a whole number for {what}")
        if not _COUNT.fullmatch(token.text):
            raise self.error(f"{what} needs a whole number, not {token.text!r}", token)
        return int(token.text)

    def agg_list(self, *, required: bool) -> list[ast.Agg]:
        aggs: list[ast.Agg] = []
        if not (self.tok.kind == "WORD" and self.tok.text.lower() in _AGG_FUNCS):
            if required:
                raise self.error("stats needs a function: count, count_distinct, sum, avg, min, max, quantile")
            return aggs
        while True:
            start = self.tok
            agg = self.agg()
            if any(agg.name == other.name for other in aggs):
                raise self.error(f"two results are named {agg.name!r}; rename one with 'as'", start)
            aggs.append(agg)
            if len(aggs) > MAX_AGGS:
                raise self.error(f"at most {MAX_AGGS} results in one stats", start)
            if self.tok.kind != "COMMA":
                return aggs
            self.advance()

    def agg(self) -> ast.Agg:
        func_token = self.expect("WORD", "a function")
        func = func_token.text.lower()
        if func not in _AGG_FUNCS:
            raise self.error(f"unknown function {func_token.text!r}", func_token)
        self.expect("LPAREN", "'('")
        args: list[Token] = []
        while self.tok.kind != "RPAREN":
            args.append(self.expect("WORD", "a field name or ')'"))
            if self.tok.kind == "COMMA":
                self.advance()
            elif self.tok.kind != "RPAREN":
                raise self.error("expected ',' or ')'")
        self.advance()
        q: float | None = None
        if func == "median":
            func, q = "quantile", 0.5
        elif func == "quantile":
            if len(args) != 2:
                raise self.error("quantile takes a level and a field: quantile(0.9, duration)", func_token)
            try:
                q = float(args[0].text)
            except ValueError:
                q = -1.0
            if not 0.0 <= q <= 1.0:
                raise self.error("a quantile level is a number from 0 to 1", args[0])
            args = args[1:]
        field = args[0].text if args else None
        if len(args) > 1:
            raise self.error(f"{func} takes one field", args[1])
        if field == "*":
            field = None
        if field is None and func != "count":
            raise self.error(f"{func} needs a field", func_token)
        if func == "sum" and field == "_time":  # nanoseconds since 1970: six of them pass int64
            raise self.error("sum(_time) adds instants, which means nothing (and passes int64 "
                             "after six rows); use min, max or avg", func_token)
        text = ", ".join(t.text for t in args)
        name = f"{func_token.text.lower()}({'' if q is None or func_token.text.lower() == 'median' else f'{q:g}, '}{text})"
        if self.is_word("as"):
            self.advance()
            name = self.expect("WORD", "a result name").text
        return ast.Agg(func, field, name, q)

    def by_clause(self) -> list[str]:
        if not self.is_word("by"):
            return []
        start = self.advance()
        names = [*dict.fromkeys(self.name_list())]  # by (a, a) groups as by (a)
        if len(names) > MAX_KEYS:
            raise self.error(f"at most {MAX_KEYS} fields to group by", start)
        return names


def _check_regex(pattern: str, col: int) -> float:
    """Compile ``pattern`` as queries will (Arrow's RE2); the seconds it took."""
    began = time.perf_counter()
    try:
        pc.match_substring_regex(pa.array([""]), pattern)
        return time.perf_counter() - began
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise QuerySyntaxError(f"invalid regular expression: {exc}", col) from None


def parse(text: str) -> ast.Query:
    """The query of ``text``. Recent texts' queries are remembered (``PARSED_KEPT``): a query is
    immutable (frozen dataclasses of tuples) and depends on its text alone, and dashboards,
    monitors and people refreshing a search send the same texts again (0.15–0.2 ms a parse on an
    idle node)."""
    if len(text) > MAX_QUERY_LENGTH:
        raise QuerySyntaxError(f"the query is longer than {MAX_QUERY_LENGTH} characters", MAX_QUERY_LENGTH)
    if len(text) > PARSED_TEXT_CHARS:
        return _parse(text)
    return _parse_kept(text)


async def parse_async(text: str) -> ast.Query:
    """``parse`` from the event loop: a text with a regular expression is parsed in a worker thread
    (RE2 compiles each pattern: up to ``MAX_COMPILE_S`` for a query's), on at most two threads of
    their own (ingest's threads are not taken); any other here (~0.2 ms, nothing when remembered),
    so no query text stalls other requests."""
    if "~" not in text:
        return parse(text)
    return await trio.to_thread.run_sync(parse, text, limiter=_COMPILING)


def _parse(text: str) -> ast.Query:
    return _fold_where(_Parser(text).parse_query())


# Errors are not remembered (lru_cache keeps no exception): a bad text is parsed again.
_parse_kept = functools.lru_cache(maxsize=PARSED_KEPT)(_parse)


def _fold_where(query: ast.Query) -> ast.Query:
    """``F | where G | …`` is ``F and G | …``: a ``where`` right after the filter is part of it.

    Row for row the same (both are ``filters.mask`` over the same rows, and a ``dataset:`` term
    reads the row's dataset either way), but the token index, the pruning and the reading of only
    the needed columns then see it: ``* | where latency:>100 | stats count()`` over 10 M rows
    gathered every column of every row (7 s over HTTP), where ``latency:>100 | stats count()``
    takes 0.2 s.

    The filters are joined as the children of one ``and``, never one ``and`` inside another: the
    filter stays as deep as the deepest of them (``MAX_DEPTH``), however many ``where`` follow (a
    chain of 2,000 made the recursive walks of the filter overflow Python's stack)."""
    pipes = query.pipes
    terms = [] if isinstance(query.filter, ast.All) else [query.filter]
    while pipes and isinstance(pipes[0], ast.Where):
        more = pipes[0].filter
        if not isinstance(more, ast.All):
            terms.extend(more.children if isinstance(more, ast.And) else (more,))
        pipes = pipes[1:]
    if pipes is query.pipes:
        return query
    terms = [*dict.fromkeys(terms)]
    condition = ast.All() if not terms else terms[0] if len(terms) == 1 else ast.And(tuple(terms))
    return ast.Query(condition, pipes)
