"""The syntax tree of a query: filters, then pipes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Agg", "All", "And", "FieldCompare", "FieldEq", "FieldExists", "FieldPhrase", "FieldPrefix",
    "FieldRegex", "Fields", "Filter", "Limit", "Not", "Or", "Phrase", "Pipe", "Query", "Sort",
    "Stats", "Timechart", "Top", "Where", "Word",
]


class Filter:
    """Base of filter nodes."""


@dataclass(frozen=True)
class All(Filter):
    pass


@dataclass(frozen=True)
class Word(Filter):
    """``_msg`` holds ``text`` at token boundaries, case-insensitively (``prefix``: open on the right)."""

    text: str
    prefix: bool = False


@dataclass(frozen=True)
class Phrase(Filter):
    text: str


@dataclass(frozen=True)
class FieldEq(Filter):
    field: str
    value: str


@dataclass(frozen=True)
class FieldPhrase(Filter):
    field: str
    text: str


@dataclass(frozen=True)
class FieldRegex(Filter):
    field: str
    pattern: str


@dataclass(frozen=True)
class FieldCompare(Filter):
    field: str
    op: str  # one of > >= < <=
    number: float


@dataclass(frozen=True)
class FieldPrefix(Filter):
    field: str
    prefix: str


@dataclass(frozen=True)
class FieldExists(Filter):
    field: str


@dataclass(frozen=True)
class Not(Filter):
    child: Filter


@dataclass(frozen=True)
class And(Filter):
    children: tuple[Filter, ...]


@dataclass(frozen=True)
class Or(Filter):
    children: tuple[Filter, ...]


class Pipe:
    """Base of pipe stages."""


@dataclass(frozen=True)
class Fields(Pipe):
    names: tuple[str, ...]


@dataclass(frozen=True)
class Sort(Pipe):
    keys: tuple[tuple[str, bool], ...]  # (field, descending)


@dataclass(frozen=True)
class Limit(Pipe):
    count: int


@dataclass(frozen=True)
class Agg:
    func: str  # count count_distinct sum avg min max quantile
    field: str | None
    name: str
    q: float | None = None


@dataclass(frozen=True)
class Stats(Pipe):
    aggs: tuple[Agg, ...]
    by: tuple[str, ...]


@dataclass(frozen=True)
class Timechart(Pipe):
    step_ns: int
    aggs: tuple[Agg, ...]
    by: tuple[str, ...]


@dataclass(frozen=True)
class Top(Pipe):
    count: int
    field: str


@dataclass(frozen=True)
class Where(Pipe):
    filter: Filter


@dataclass(frozen=True)
class Query:
    filter: Filter
    pipes: tuple[Pipe, ...]
