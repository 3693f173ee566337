"""Input fuzzing with hypothesis: the query parser, the ingest parsers and the HTTP API never crash on bad input.

Bad input must end in the project's own 4xx errors (``InvalidInput`` and its
kinds, ``PayloadTooLarge``), never in another exception, and over HTTP never
in a 5xx; a node that was fuzzed still answers and still holds exactly what
it held.
"""

from __future__ import annotations

import json
import string
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helios.errors import InvalidInput, PayloadTooLarge
from helios.ingest.decode import decode_body
from helios.ingest.records import parse_ndjson, parse_text
from helios.query.parser import parse
from support import Server

QUICK = settings(max_examples=300, deadline=None, database=None)

# Pieces of the query language, so generated queries reach deep into the parser.
TOKENS = ["error", "*", "err*", '"connection reset"', "level:ERROR", "size:>10", "size:<=3.5", "host:~\"web-[0-9]\"",
          "NOT", "OR", "AND", "-", "(", ")", "|", "stats", "count()", "count(f)", "avg(size)", "quantile(0.9, x)",
          "by", "(host)", "as", "n", "sort", "by (_time desc)", "limit", "10", "fields", "a,", "b", "timechart",
          "5m", "top", "3", "host", "where", "n:>1", ",", "median(x)", "dataset:d", "field:\"\"", "''", "\\", "\x00"]


@given(st.text(max_size=200))
@QUICK
def test_query_parser_on_any_text(text: str) -> None:
    try:
        parse(text)
    except InvalidInput:
        pass


@given(st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join))
@QUICK
def test_query_parser_on_query_shaped_text(text: str) -> None:
    try:
        parse(text)
    except InvalidInput:
        pass


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10)
RECORDS = st.dictionaries(st.sampled_from(["_msg", "_time", "level", "host", "a.b", "", "dataset", "n", "é"])
                          | st.text(max_size=6), JSON_VALUES, max_size=6)


@given(st.binary(max_size=400))
@QUICK
def test_ingest_parsers_on_any_bytes(body: bytes) -> None:
    for parser in (parse_ndjson, parse_text):
        try:
            table = parser(body, 1)
        except InvalidInput:
            continue
        assert table.num_rows >= 0 and "_time" in table.column_names


@given(st.lists(RECORDS | JSON_VALUES, max_size=8))
@QUICK
def test_ingest_parser_on_json_shaped_lines(lines: list[Any]) -> None:
    body = b"\n".join(json.dumps(line).encode() for line in lines)  # stdlib: integers of any size
    try:
        table = parse_ndjson(body, 1)
    except InvalidInput:
        return
    assert table.num_rows == sum(1 for line in lines if isinstance(line, dict))


@given(st.binary(max_size=200), st.sampled_from(["gzip", "deflate", "zstd", "br", "identity", "GZIP", "x"]))
@QUICK
def test_content_decoding_on_any_bytes(body: bytes, encoding: str) -> None:
    try:
        decode_body(body, encoding, 1 << 20)
    except (InvalidInput, PayloadTooLarge):
        pass


# -- the HTTP API ---------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Server:
    data_dir = tmp_path_factory.mktemp("fuzz") / "node"
    data_dir.mkdir()
    server = Server(data_dir, {"HELIOS_MAX_BODY_BYTES": str(1 << 16)}).start()
    assert server.ingest(b'{"_msg": "seed row", "host": "web-1"}\n', dataset="keep").status_code == 200
    yield server
    server.kill()


def _operations(node: Server) -> list[tuple[str, str]]:
    spec = node.request("GET", "/api/openapi.json").json()
    return sorted((method.upper(), path) for path, ops in spec["paths"].items() for method in ops)


SEGMENTS = st.sampled_from(["000000000000", "admin", "keep", "x" * 70, "%00", "..", "a b", "é", "0" * 16, "-1"])
PARAMS = st.dictionaries(st.sampled_from(["dataset", "q", "limit", "from", "to", "version", "kind", "x"]),
                         st.text(string.printable, max_size=12), max_size=3)
BODIES = st.one_of(
    st.none(), st.binary(max_size=60),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["q", "dataset", "from", "to", "limit", "username", "password", "role", "name",
                                     "title", "panels", "version", "retention_days", "condition", "webhook",
                                     "default_retention_days", "expires_days", "query", "schedule"]),
                    JSON_VALUES, max_size=5).map(lambda v: json.dumps(v).encode()))


def test_http_api_never_answers_5xx_on_bad_input(node: Server) -> None:
    operations = _operations(node)
    assert len(operations) > 20
    admin = node.token
    seen_statuses: set[int] = set()

    @given(st.sampled_from(operations), SEGMENTS, PARAMS, BODIES,
           st.sampled_from(["application/json", "application/x-ndjson", "text/plain", "application/xml"]))
    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def one(operation: tuple[str, str], segment: str, params: dict[str, str], body: bytes | None,
            content_type: str) -> None:
        method, path = operation
        path = path.replace("{name}", segment).replace("{id}", segment)
        if method == "DELETE" and path.startswith(("/api/v1/users/admin",)):
            return  # the last admin cannot be deleted anyway (409); keep the fixture's login working
        # A live tail streams until its client leaves: take its answer's status, then leave.
        with httpx.stream(method, f"{node.url}{path}", params=params, content=body,
                          headers={"Authorization": f"Bearer {admin}", "Content-Type": content_type},
                          timeout=30) as reply:
            text = reply.read().decode(errors="replace") if path != "/api/v1/tail" else ""
        seen_statuses.add(reply.status_code)
        assert reply.status_code < 500, (method, path, params, body, text)

    one()
    assert node.request("GET", "/healthz", token=None).status_code == 200
    assert node.count(dataset="keep") >= 1  # still serving queries
    assert seen_statuses & {400, 404} and seen_statuses & {200, 201}
