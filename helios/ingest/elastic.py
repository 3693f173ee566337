"""Elasticsearch bulk API → rows, and the answers the 8.x/9.x clients and Beats read.

Contract (``POST``/``PUT /es/_bulk`` and ``/es/{index}/_bulk``):

- The body is NDJSON: an action line, then (for ``index``, ``create``,
  ``update``) a source line. ``index`` and ``create`` store the document;
  ``update`` and ``delete`` are answered per item with a 400 error
  (HeliosLogs is append-only). An action line that is not a JSON object
  with one known action rejects the whole request (400, the ES error shape)
  and stores nothing; a source line that is not a JSON object is an item
  error (400 ``document_parsing_exception``), as Elasticsearch answers it.
- Dataset: the caller's override (``?dataset=`` / ``X-Helios-Dataset``),
  else the action's ``_index``, else the ``{index}`` of the path; a ``.`` in
  an index name becomes ``-`` (``vector-2024.05.01`` → ``vector-2024-05-01``);
  a name that is still not a dataset name is an item error.
- Document: ``@timestamp`` → ``_time`` (RFC 3339, or epoch milliseconds as
  Elasticsearch reads a number); ``message`` → ``_msg``; nested objects
  flattened with dots, arrays as JSON text (as ``/api/v1/ingest``).
- The answer: ``{"took", "errors", "items": [{action: {"_index", "_id",
  "status", "result" | "error", ...}}]}``, one item per action, in order.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from helios import names, timeutil
from helios.errors import IngestError, InvalidInput
from helios.ingest import shipper

__all__ = ["BULK_MEDIA_TYPES", "ES_VERSION", "BulkPlan", "error_body", "info", "parse_bulk"]

ES_VERSION = "8.19.0"  # what GET /es/ reports: official clients and Beats check the major version
BULK_MEDIA_TYPES = frozenset({"application/json", "application/x-ndjson",
                              "application/vnd.elasticsearch+json", "application/vnd.elasticsearch+x-ndjson"})
_ACTIONS = ("index", "create", "update", "delete")


def info(node_id: str, cluster_uuid: str) -> dict[str, Any]:
    """The document of ``GET /``, shaped as Elasticsearch's (clients read ``version.number``)."""
    return {
        "name": node_id,
        "cluster_name": "helioslogs",
        "cluster_uuid": cluster_uuid,
        "version": {"number": ES_VERSION, "build_flavor": "default", "build_type": "docker",
                    "build_hash": "helioslogs", "build_date": "2025-01-01T00:00:00.000Z",
                    "build_snapshot": False, "lucene_version": "9.12.0",
                    "minimum_wire_compatibility_version": "7.17.0",
                    "minimum_index_compatibility_version": "7.0.0"},
        "tagline": "You Know, for Search",
    }


def error_body(kind: str, reason: str, status: int) -> dict[str, Any]:
    """Elasticsearch's error shape for a whole request."""
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


@dataclass
class BulkPlan:
    """A parsed bulk request: one answer item per action, rows to store per dataset."""

    items: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[str, list[shipper.Row]] = field(default_factory=dict)
    row_items: dict[str, list[int]] = field(default_factory=dict)  # dataset → item index of each row

    @property
    def errors(self) -> bool:
        return any(next(iter(item.values()))["status"] >= 300 for item in self.items)

    def fail(self, index: int, status: int, kind: str, reason: str) -> None:
        body = next(iter(self.items[index].values()))
        body["status"] = status
        body["error"] = {"type": kind, "reason": reason}
        body.pop("result", None)

    def tables(self, now_ns: int) -> dict[str, pa.Table]:
        """Rows → a normalised table per dataset; a document whose ``_time`` will not parse fails alone."""
        out: dict[str, pa.Table] = {}
        for dataset, rows in self.rows.items():
            items = self.row_items[dataset]
            try:
                table = shipper.to_table(rows, now_ns)
            except IngestError:
                keep = []
                for row, item in zip(rows, items):
                    try:
                        timeutil.parse_instant(row.get("_time"), "@timestamp")
                        keep.append(row)
                    except InvalidInput as exc:
                        self.fail(item, 400, "document_parsing_exception", f"failed to parse field [@timestamp]: {exc}")
                table = shipper.to_table(keep, now_ns)
            out[dataset] = table
        return out


def parse_bulk(body: bytes, path_index: str | None, override: str | None) -> BulkPlan:
    """Parse a bulk body. InvalidInput (whole request, nothing stored) for a bad action line."""
    plan = BulkPlan()
    lines = body.split(b"\n")
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        if not line.strip():
            continue
        action, meta = _action(line, number)
        doc_line: bytes | None = None
        if action != "delete":
            while number < len(lines) and not lines[number].strip():
                number += 1
            if number >= len(lines):
                raise InvalidInput(f"line {number}: the {action} action has no source line after it")
            doc_line = lines[number]
            number += 1
        _item(plan, action, meta, doc_line, path_index, override)
    if not plan.items:
        raise InvalidInput("Validation Failed: 1: no requests added;")
    return plan


def _action(line: bytes, number: int) -> tuple[str, dict[str, Any]]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"line {number}: the action line is not JSON: {exc}") from None
    if not isinstance(doc, dict) or len(doc) != 1:
        raise InvalidInput(f"line {number}: Malformed action/metadata line, expected one of "
                           f"[{', '.join(_ACTIONS)}]")
    action, meta = next(iter(doc.items()))
    if action not in _ACTIONS:
        raise InvalidInput(f"line {number}: Malformed action/metadata line, expected one of "
                           f"[{', '.join(_ACTIONS)}] but found [{action}]")
    if not isinstance(meta, dict):
        raise InvalidInput(f"line {number}: the metadata of [{action}] must be an object")
    return action, meta


def _item(plan: BulkPlan, action: str, meta: dict[str, Any], doc_line: bytes | None,
          path_index: str | None, override: str | None) -> None:
    index = meta.get("_index") or path_index
    doc_id = meta.get("_id")
    doc_id = str(doc_id) if doc_id is not None else secrets.token_urlsafe(15)
    body: dict[str, Any] = {"_index": index, "_id": doc_id, "_version": 1, "result": "created",
                            "_shards": {"total": 1, "successful": 1, "failed": 0},
                            "_seq_no": len(plan.items), "_primary_term": 1, "status": 201}
    plan.items.append({action: body})
    position = len(plan.items) - 1
    if action in ("update", "delete"):
        plan.fail(position, 400, "illegal_argument_exception",
                  f"HeliosLogs is append-only: [{action}] is not supported; use index or create")
        return
    dataset = override or _dataset_of(index)
    if dataset is None:
        reason = ("index is missing" if not index else
                  f"invalid index name [{index}]: a dataset name is 1-64 of a-z 0-9 _ - "
                  "starting with a letter or digit ('.' becomes '-')")
        plan.fail(position, 400, "invalid_index_name_exception" if index else "action_request_validation_exception",
                  reason)
        return
    try:
        doc = orjson.loads(doc_line or b"")
        if not isinstance(doc, dict):
            raise InvalidInput("the source is not a JSON object")
        row = _row(doc)
    except (orjson.JSONDecodeError, InvalidInput) as exc:
        plan.fail(position, 400, "document_parsing_exception", f"failed to parse the document: {exc}")
        return
    plan.rows.setdefault(dataset, []).append(row)
    plan.row_items.setdefault(dataset, []).append(position)


def _dataset_of(index: object) -> str | None:
    if not isinstance(index, str):
        return None
    name = index.replace(".", "-")
    return name if names.DATASET.ok(name) else None


def _row(doc: dict[str, Any]) -> shipper.Row:
    shipper.check_depth(doc)
    row: shipper.Row = {}
    stamp = doc.pop("@timestamp", None)
    message = doc.pop("message", None)
    if stamp is not None:
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float, str)):
            raise InvalidInput("@timestamp must be a date string or epoch milliseconds")
        if isinstance(stamp, str) and stamp.isdigit():
            stamp = int(stamp)
        if isinstance(stamp, float) and not math.isfinite(stamp):
            raise InvalidInput("@timestamp is not a finite number")
        row["_time"] = shipper.time_ns(int(stamp * 1_000_000)) if isinstance(stamp, (int, float)) else stamp
    if isinstance(message, str):
        row["_msg"] = message
    elif message is not None:
        doc["message"] = message  # an object or number stays a field of that name
    shipper.flatten_into(row, "", doc)
    return row
