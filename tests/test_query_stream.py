"""A large answer is written as the client reads it: its first 8 MiB of JSON are encoded in the query's
slot, the rest a chunk at a time after the slot is free; a client that leaves stops the encoding."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from support import metric, wait_until
from test_store_faults import rows

ROWS = 40_000
WIDTH = 1000  # hex characters of padding: about 1 KB of JSON a row; 8 MiB ahead, and more than the
# loopback sockets' buffers hold (a few MB) left to encode as the client reads


def test_a_large_answer_streams_whole_and_a_leaving_client_stops_it(server_factory: Any) -> None:
    node = server_factory("solo", HELIOS_FLUSH_SECS="3600")
    lines = rows(ROWS, "big", width=WIDTH).splitlines(keepends=True)
    for start in range(0, ROWS, 5_000):
        assert node.ingest(b"".join(lines[start : start + 5_000])).status_code == 200

    answer = node.request("POST", "/api/v1/query", json={"q": "big", "limit": ROWS})
    assert answer.status_code == 200 and len(answer.content) > 32 << 20
    doc = answer.json()
    got = [row["_msg"].split(" ")[2] for row in doc["rows"]]
    assert got == [str(i) for i in reversed(range(ROWS))], "every row once, newest first"
    assert doc["stats"]["truncated"] is False
    assert metric(node, "helios_query_answers_streaming") == 0

    with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}, timeout=60) as client:
        with client.stream("POST", "/api/v1/query", json={"q": "big", "limit": ROWS}) as reply:
            assert reply.status_code == 200
            chunks = reply.iter_raw()  # kept: a dropped iterator closes the response (the client leaves)
            first = next(chunks)
            assert first.startswith(b'{"rows":[')
            # The client reads no more: the answer waits past its first 8 MiB, out of the query's slot.
            wait_until(lambda: metric(node, "helios_query_answers_streaming") == 1, what="the answer to stream")
            assert metric(node, "helios_query_threads_busy") == 0
    wait_until(lambda: metric(node, "helios_query_answers_streaming") == 0, what="the left answer to stop")
    small = node.query("big | stats count() as n")
    assert small["rows"] == [{"n": ROWS}]
    assert orjson.loads(node.request("POST", "/api/v1/query", json={"q": "big", "limit": 5}).content)["rows"][0][
        "_msg"].startswith(f"big row {ROWS - 1} ")
