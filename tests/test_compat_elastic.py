"""Elasticsearch bulk under /es, driven by the real elasticsearch-py client and its bulk helper."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from elasticsearch import AuthenticationException, Elasticsearch, helpers

from support import Server

ROWS = 300


def ingest_token(server: Server, role: str = "ingest") -> str:
    return server.api_token(role, f"shipper {role}")


def all_rows(server: Server, dataset: str) -> list[dict[str, Any]]:
    return server.query("*", dataset=dataset, limit=100_000)["rows"]


def documents(count: int) -> list[dict[str, Any]]:
    return [{"_index": "shop", "_source": {
        "@timestamp": f"2023-11-14T22:{i // 60 % 60:02d}:{i % 60:02d}.{i:03d}Z",
        "message": f"order {i} placed",
        "service": {"name": "checkout", "version": "1.2"},
        "http.status_code": 200 + i % 3,
        "k8s-pod": f"pod-{i % 4}",
        "tags": ["web", "eu"],
        "dataset": "from-the-shipper",
        "latency": i / 4,
    }} for i in range(count)]


def test_bulk_helper_stores_every_document_once_with_its_fields(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    es = Elasticsearch(f"{server.url}/es", basic_auth=("helios", token), request_timeout=60)
    info = es.info()  # the client refuses a server without X-Elastic-Product: Elasticsearch
    assert info["version"]["number"].startswith("8.")
    ok, errors = helpers.bulk(es, documents(ROWS), chunk_size=70)
    assert ok == ROWS and errors == []

    rows = all_rows(server, "shop")
    assert len(rows) == ROWS
    by_msg = {row["_msg"]: row for row in rows}
    assert set(by_msg) == {f"order {i} placed" for i in range(ROWS)}  # each exactly once
    row = by_msg["order 61 placed"]
    assert row["_time"] == "2023-11-14T22:01:01.061000000Z"
    assert row["service.name"] == "checkout" and row["service.version"] == "1.2"
    assert row["http.status_code"] == "201" and row["k8s-pod"] == "pod-1" and row["latency"] == "15.25"
    assert orjson.loads(row["tags"]) == ["web", "eu"]
    assert row["_dataset"] == "from-the-shipper" and row["dataset"] == "shop"
    # Field names as shippers send them are queryable, bare or quoted.
    assert server.count("service.name:checkout", dataset="shop") == ROWS
    assert server.count('"k8s-pod":"pod-1"', dataset="shop") == ROWS // 4
    assert server.count("http.status_code:>=202", dataset="shop") == ROWS // 3

    # Bearer auth, POST with plain NDJSON, an index in the path, epoch-millis @timestamp.
    body = b'{"create": {}}\n{"@timestamp": 1700000000123, "message": "plain post"}\n'
    reply = server.request("POST", "/es/plain/_bulk", token=token, content=body,
                           headers={"Content-Type": "application/x-ndjson"})
    assert reply.status_code == 200 and reply.headers["X-Elastic-Product"] == "Elasticsearch"
    assert reply.json()["errors"] is False and reply.json()["items"][0]["create"]["status"] == 201
    assert [r["_time"] for r in all_rows(server, "plain")] == ["2023-11-14T22:13:20.123000000Z"]


def test_dataset_override_dots_in_index_names_and_per_item_errors(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    body = b"\n".join([
        b'{"index": {"_index": "vector-2024.05.01"}}', b'{"message": "dotted index"}',
        b'{"update": {"_index": "x", "_id": "1"}}', b'{"doc": {"a": 1}}',
        b'{"delete": {"_index": "x", "_id": "1"}}',
        b'{"index": {"_index": "Bad Name"}}', b'{"message": "bad index"}',
        b'{"index": {"_index": "ok"}}', b"this is not json",
        b'{"index": {"_index": "ok"}}', b'{"@timestamp": "yesterday-ish", "message": "bad time"}',
        b'{"index": {"_index": "ok"}}', b'{"message": "fine", "@timestamp": "2023-11-14T22:13:20Z"}',
    ]) + b"\n"
    reply = server.request("PUT", "/es/_bulk", token=token, content=body,
                           headers={"Content-Type": "application/vnd.elasticsearch+x-ndjson; compatible-with=9"})
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["errors"] is True and set(doc) >= {"took", "errors", "items"}
    statuses = [next(iter(item.items())) for item in doc["items"]]
    assert [(action, body["status"]) for action, body in statuses] == [
        ("index", 201), ("update", 400), ("delete", 400), ("index", 400), ("index", 400), ("index", 400),
        ("index", 201)]
    assert statuses[4][1]["error"]["type"] == "document_parsing_exception"
    assert [r["_msg"] for r in all_rows(server, "vector-2024-05-01")] == ["dotted index"]
    assert [r["_msg"] for r in all_rows(server, "ok")] == ["fine"]

    reply = server.request("POST", "/es/_bulk?dataset=forced", token=token,
                           content=b'{"index": {"_index": "ignored"}}\n{"message": "m"}\n',
                           headers={"Content-Type": "application/json", "X-Helios-Dataset": "other"})
    assert reply.status_code == 200 and reply.json()["items"][0]["index"]["status"] == 201
    assert [r["_msg"] for r in all_rows(server, "forced")] == ["m"]


def test_bad_bulk_requests_get_elasticsearch_errors_and_change_nothing(server_factory: Any) -> None:
    server = server_factory()
    token = ingest_token(server)
    pid = server.proc.pid
    es = Elasticsearch(f"{server.url}/es", bearer_auth=token, request_timeout=60)
    assert helpers.bulk(es, documents(50))[0] == 50
    ndjson = {"Content-Type": "application/x-ndjson"}

    cases = [
        (b'not json at all\n{"message": "x"}\n', ndjson, 400),  # an action line that is not JSON
        (b'{"frobnicate": {}}\n{"message": "x"}\n', ndjson, 400),  # an unknown action
        (b'{"index": {"_index": "shop"}}\n', ndjson, 400),  # an action without its source line
        (b'{"index": {"_index": "shop"}}\n{"message": "x"}\n', {"Content-Type": "text/plain"}, 406),
        (b'{"index": {"_index": "shop"}}\n{"message": "x"}\n', {}, 406),
    ]
    for body, headers, status in cases:
        reply = server.request("POST", "/es/_bulk", token=token, content=body, headers=headers)
        assert reply.status_code == status, (body, reply.text)
        error = reply.json()
        assert error["status"] == status and error["error"]["type"] and error["error"]["reason"]
        assert reply.headers["X-Elastic-Product"] == "Elasticsearch"
    # A bad action after good ones: the whole request is refused, its good documents too.
    mixed = b'{"index": {"_index": "shop"}}\n{"message": "good"}\n[1, 2]\n{"message": "x"}\n'
    assert server.request("POST", "/es/_bulk", token=token, content=mixed, headers=ndjson).status_code == 400

    for credential, status in [(None, 401), ("hlt_0123456789abcdef_wrong", 401),
                               (ingest_token(server, "viewer"), 403)]:
        reply = server.request("POST", "/es/_bulk", token=credential, content=b'{"index": {}}\n{}\n',
                               headers=ndjson)
        assert reply.status_code == status and reply.json()["error"]["type"] == "security_exception"
    with pytest.raises(AuthenticationException):
        Elasticsearch(f"{server.url}/es", basic_auth=("helios", "not-a-token")).info()

    assert server.proc.poll() is None and server.proc.pid == pid
    assert len(all_rows(server, "shop")) == 50 and server.count("good", dataset="shop") == 0
    metrics = server.request("GET", "/metrics").text
    assert 'helios_compat_rows_total{protocol="elastic"} 50' in metrics
    assert 'helios_compat_dropped_total{protocol="elastic",reason="rejected"}' in metrics
