"""Dashboards and monitors (one set of routes for both), cluster settings, and the audit log.

Every route names one permission of ``helios.control.auth.PERMISSIONS``:
``<kind>.read`` / ``<kind>.write`` for dashboards and monitors. Creates answer
201; changes carry the ``version`` the caller read; deletes answer
``{"deleted": id}``.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from helios.api.common import answer, json_body, node, principal, whole_number
from helios.api.users import version_arg
from helios.control.objects import RESOURCES, Settings

__all__ = ["MAX_AUDIT", "bp"]

bp = Blueprint("resources", __name__)
MAX_AUDIT = 10_000
KIND = "/api/v1/<any(" + ", ".join(RESOURCES) + "):kind>"


@bp.get(KIND)
async def list_objects(kind: str) -> Response:
    await principal(f"{kind}.read")
    resource = RESOURCES[kind]
    return answer([resource.view(o) for o in node().control.list(resource.kind)])


@bp.post(KIND)
async def create_object(kind: str) -> Response:
    who = await principal(f"{kind}.write")
    resource = RESOURCES[kind]
    return answer(resource.created_view(await resource.create(node().control, await json_body(), who)), 201)


@bp.get(KIND + "/<object_id>")
async def get_object(kind: str, object_id: str) -> Response:
    await principal(f"{kind}.read")
    resource = RESOURCES[kind]
    return answer(resource.view(resource.get(node().control, object_id)))


@bp.put(KIND + "/<object_id>")
async def update_object(kind: str, object_id: str) -> Response:
    who = await principal(f"{kind}.write")
    body = await json_body()
    resource = RESOURCES[kind]
    return answer(resource.view(await resource.update(node().control, object_id, body, who)))


@bp.delete(KIND + "/<object_id>")
async def delete_object(kind: str, object_id: str) -> Response:
    who = await principal(f"{kind}.write")
    await RESOURCES[kind].delete(node().control, object_id, version_arg(), who)
    return answer({"deleted": object_id})


@bp.get("/api/v1/settings")
async def get_settings() -> Response:
    await principal("settings.read")
    return answer(Settings.view(node().control))


@bp.put("/api/v1/settings")
async def put_settings() -> Response:
    who = await principal("settings.write")
    control = node().control
    await Settings.update(control, await json_body(), who)
    return answer(Settings.view(control))


@bp.get("/api/v1/audit")
async def audit() -> Response:
    await principal("audit.read")
    limit = whole_number(request.args.get("limit"), "limit", 1, MAX_AUDIT, default=100)
    kind = request.args.get("kind")
    entries = [e for e in reversed(node().control.audit) if kind is None or e.kind == kind]
    return answer([e.to_json() for e in entries[:limit]])
