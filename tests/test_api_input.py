"""Bad input gets a clear 4xx and changes nothing; auth is required everywhere but health checks."""

from __future__ import annotations

import gzip
import json

import jwt
import pytest
import zstandard

from support import Record, Server, ndjson


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, records: list[Record]) -> Server:
    data_dir = tmp_path_factory.mktemp("input") / "node"
    data_dir.mkdir()
    server = Server(data_dir, {"HELIOS_MAX_BODY_BYTES": str(1 << 20),
                               "HELIOS_MAX_DECODED_BYTES": str(4 << 20)}).start()
    reply = server.ingest(ndjson(records[:500]), dataset="base")
    assert reply.status_code == 200
    yield server
    server.kill()


def total(node: Server) -> int:
    return sum(d["rows"] for d in node.datasets().values())


BAD_BODIES = [
    (b'{"_msg": "ok"}\n{"_msg": broken}\n', 2),
    (b'{"_msg": "ok"}\n\n[1, 2]\n', 3),
    (b'"just a string"\n', 1),
    (b'{"_msg": "a"}\n{"_msg": "b"}\n{"_msg": "c", "_time": "yesterday"}\n', 3),
    (b'{"_msg": "a", "_time": 1.5}\n', 1),
    (b'{"_msg": "a", "_time": true}\n', 1),
    (b'{"_msg": "ok"}\n{"dataset": "x"}\n', 2),
    (b'{"_msg": "ok"}\n{"": 1}\n', 2),
    (b'{"_msg": "ok"}\n{"_msg": "unterminated\n', 2),
    (b'{"a": 1}\n{"a": "mixed types are fine"}\n{"b": \xff}\n', 3),
    (b'null\n', 1),  # pyarrow 26 crashes on a body that starts with a null line
    (b'{"_msg": "ok"}\nnull\n{"_msg": "ok"}\n', 2),  # pyarrow reads a null line as an empty record
    (b'  null  \n{"a": 1}\n', 1),
]


@pytest.mark.parametrize("body,line", BAD_BODIES)
def test_malformed_line_rejects_whole_request(node: Server, body: bytes, line: int) -> None:
    before = total(node)
    reply = node.ingest(body, dataset="bad")
    assert reply.status_code == 400, reply.text
    doc = reply.json()
    assert doc["line"] == line and doc["error"]
    assert total(node) == before
    assert "bad" not in node.datasets()


@pytest.mark.parametrize("name", ["../x", "Upper", "a" * 65, "", "-lead", "sp ace", "dot.ted"])
def test_bad_dataset_name(node: Server, name: str) -> None:
    before = total(node)
    reply = node.ingest(b'{"_msg": "x"}\n', dataset=name)
    assert reply.status_code == 400
    assert "dataset" in reply.json()["error"]
    assert total(node) == before


def test_oversize_body_is_413(node: Server) -> None:
    before = total(node)
    body = b'{"_msg": "' + b"x" * (1 << 20) + b'"}\n'
    reply = node.ingest(body, dataset="big")
    assert reply.status_code == 413
    assert "error" in reply.json()
    bomb = gzip.compress(b'{"_msg": "y"}\n' * (400_000))  # ~5.6 MB decoded, small compressed
    assert len(bomb) < (1 << 20)
    reply = node.ingest(bomb, dataset="big", headers={"Content-Encoding": "gzip"})
    assert reply.status_code == 413
    assert total(node) == before


def test_compressed_bodies(node: Server, records: list[Record]) -> None:
    body = ndjson(records[1000:1100])
    assert node.ingest(gzip.compress(body), dataset="gz", headers={"Content-Encoding": "gzip"}).json() == {"ingested": 100}
    assert node.ingest(zstandard.ZstdCompressor().compress(body), dataset="zs",
                       headers={"Content-Encoding": "zstd"}).json() == {"ingested": 100}
    reply = node.ingest(b"not gzip", dataset="gz", headers={"Content-Encoding": "gzip"})
    assert reply.status_code == 400
    reply = node.ingest(body, dataset="gz", headers={"Content-Encoding": "br"})
    assert reply.status_code == 400
    assert node.count("*", dataset="gz") == 100 and node.count("*", dataset="zs") == 100


def test_text_plain_and_flattening(node: Server) -> None:
    reply = node.ingest(b"first line\r\nsecond line\n\n   \nthird\n", dataset="txt", content_type="text/plain")
    assert reply.json() == {"ingested": 3}
    assert node.count("line", dataset="txt") == 2
    doc = {"_msg": "nested", "a": {"b": {"c": 1}, "d": "x"}, "l": [1, 2], "t": True, "f": 2.5,
           "_time": "2024-05-01T12:00:00.123456789+02:00"}
    assert node.ingest(json.dumps(doc).encode(), dataset="flat").json() == {"ingested": 1}
    row = node.query("*", dataset="flat")["rows"][0]
    assert row["a.b.c"] == "1" and row["a.d"] == "x" and row["l"] == "[1,2]"
    assert row["t"] == "true" and row["f"] == "2.5"
    assert row["_time"] == "2024-05-01T10:00:00.123456789Z"
    assert node.count("a.b.c:1", dataset="flat") == 1
    assert node.ingest(b'{"_msg": "bad utf8 \xff"}\n', dataset="flat").status_code == 400
    assert node.ingest(b"bad \xff utf8\n", dataset="flat", content_type="text/plain").json()["line"] == 1


def test_missing_time_gets_ingest_time(node: Server) -> None:
    reply = node.ingest(b'{"_msg": "no time here"}\n', dataset="now")
    assert reply.status_code == 200
    rows = node.query("*", dataset="now")["rows"]
    assert rows[0]["_time"].startswith("20") and rows[0]["_msg"] == "no time here"


@pytest.mark.parametrize("doc,column", [
    ({"q": "(error"}, 7),
    ({"q": 'service:"x'}, 9),
    ({"q": "error | frobnicate"}, 9),
    ({"q": "x:~\"(\""}, 4),
    ({"q": "a:>b"}, 4),
])
def test_query_syntax_errors_name_the_column(node: Server, doc: dict, column: int) -> None:
    reply = node.request("POST", "/api/v1/query", json=doc)
    assert reply.status_code == 400
    assert reply.json()["column"] == column


@pytest.mark.parametrize("doc", [
    {}, {"q": 5}, {"q": "*", "limit": -1}, {"q": "*", "limit": "many"}, {"q": "*", "from": "soon"},
    {"q": "*", "dataset": "../etc"}, {"q": "*", "dataset": []}, {"q": "*", "from": 10, "to": 5},
])
def test_query_bad_requests(node: Server, doc: dict) -> None:
    reply = node.request("POST", "/api/v1/query", json=doc)
    assert reply.status_code == 400
    assert reply.json()["error"]


def test_query_body_must_be_json_object(node: Server) -> None:
    for body in (b"not json", b"[1]", b""):
        reply = node.request("POST", "/api/v1/query", content=body)
        assert reply.status_code == 400


def test_auth_required(node: Server) -> None:
    assert node.request("GET", "/healthz", token=None).status_code == 200
    assert node.request("GET", "/readyz", token=None).status_code == 200
    for method, path in [("POST", "/api/v1/ingest"), ("POST", "/api/v1/query"), ("GET", "/api/v1/datasets"),
                         ("GET", "/metrics"), ("GET", "/api/openapi.json")]:
        assert node.request(method, path, token=None).status_code == 401
        assert node.request(method, path, token="garbage").status_code == 401
    forged = jwt.encode({"sub": "admin", "role": "admin", "iat": 1, "exp": 2**31}, "w" * 32, algorithm="HS256")
    assert node.request("GET", "/api/v1/datasets", token=forged).status_code == 401
    unsigned = jwt.encode({"sub": "admin", "role": "admin", "iat": 1, "exp": 2**31}, None, algorithm="none")
    assert node.request("GET", "/api/v1/datasets", token=unsigned).status_code == 401
    before = total(node)
    assert node.ingest(b'{"_msg": "x"}\n', dataset="noauth", token=None).status_code == 401
    assert total(node) == before


def test_login_failures(node: Server) -> None:
    url = "/api/v1/auth/login"
    assert node.request("POST", url, token=None, json={"username": "admin", "password": "nope"}).status_code == 401
    assert node.request("POST", url, token=None, json={"username": "ghost", "password": "nope"}).status_code == 401
    assert node.request("POST", url, token=None, json={"username": "admin"}).status_code == 400
    assert node.request("POST", url, token=None, content=b"{").status_code == 400
    good = node.request("POST", url, token=None, json={"username": "admin", "password": "test-admin-password"})
    assert good.status_code == 200 and set(good.json()) == {"token", "expires_at"}


def test_unknown_endpoint_is_json_404(node: Server) -> None:
    reply = node.request("GET", "/api/v1/nothing")
    assert reply.status_code == 404 and reply.json()["error"]


def test_metrics_and_openapi(node: Server) -> None:
    text = node.request("GET", "/metrics").text
    assert "helios_ingested_rows_total" in text
    spec = node.request("GET", "/api/openapi.json").json()
    assert "/api/v1/query" in spec["paths"]
