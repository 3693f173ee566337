"""Datasets (list, per-dataset settings) and the cluster's state."""

from __future__ import annotations

from quart import Blueprint, Response

from helios.api.common import answer, json_body, node, principal, validate_dataset
from helios.control.objects import set_dataset

__all__ = ["bp"]

bp = Blueprint("cluster", __name__)


@bp.get("/api/v1/datasets")
async def datasets() -> Response:
    await principal("datasets.read")
    helios = node()
    stats = sorted(helios.engine.dataset_stats().values(), key=lambda s: s.name)
    return answer([{"name": s.name, "retention_days": helios.retention_days(s.name), "rows": s.rows,
                    "bytes": s.bytes, "partitions": s.partitions, "blocks": s.blocks} for s in stats])


@bp.put("/api/v1/datasets/<name>")
async def put_dataset(name: str) -> Response:
    who = await principal("datasets.write")
    validate_dataset(name)
    return answer(await set_dataset(node().control, name, await json_body(), who))


@bp.get("/api/v1/cluster")
async def cluster() -> Response:
    await principal("cluster.read")
    return answer(node().cluster())
