"""HTTP ingest: `POST /api/tenants/{tenant_id}/messages` with the tenant's bearer token.

The body holds one or more ER7 messages (or an FHS/BHS batch). Each message is checked and
written on its own; the answer lists one result per message, in order:

    202  every message accepted (durable in Kafka)
    207  some accepted, some rejected: see each result
    422  no message accepted: the body or every message is bad
    503  the tenant is paused or Kafka is unavailable: retry after `Retry-After` seconds
    429  the tenant is above its hard rate ceiling (`ingest_ceiling_factor` x its contract):
         the refused messages may be resent after `Retry-After` seconds
    401/403/404/413/415  no token, another tenant's (or the admin) token, unknown tenant,
                         body too large, not an HL7 content type
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from aiohttp import web
from faust.web import View

from agents.admin_api import api_errors
from agents.ingest import Ingest, IngestResult
from agents.web_auth import ApiError, Guard
from streams.app import LanewayApp
from streams.hl7 import Hl7Error, split_batch

HL7_CONTENT_TYPES = frozenset(
    (
        "application/hl7-v2",
        "application/hl7-v2+er7",
        "x-application/hl7-v2+er7",
        "text/plain",
        "application/octet-stream",
    )
)
RETRY_AFTER_S = "1"
_UNAVAILABLE = frozenset(("broker_unavailable", "tenant_paused"))


def install(app: LanewayApp, ingest: Ingest, guard: Guard) -> None:
    """Register the ingest view on `app`."""
    max_body = app.laneway.http_max_body_bytes

    @app.page("/api/tenants/{tenant_id}/messages")
    class Messages(View):
        @api_errors
        async def post(self, request: web.Request, tenant_id: str) -> web.Response:
            principal = await guard.tenant_or_admin(request, tenant_id)
            if principal.kind != "tenant":
                raise ApiError(403, "forbidden", "ingest takes the tenant's own token")
            if request.content_type not in HL7_CONTENT_TYPES:
                raise ApiError(
                    415, "unsupported_media_type", "send ER7 as application/hl7-v2 or text/plain"
                )
            if request.content_length is not None and request.content_length > max_body:
                raise ApiError(413, "body_too_large", f"the body limit is {max_body} bytes")
            try:
                messages = split_batch(await request.read())
            except web.HTTPRequestEntityTooLarge as error:
                raise ApiError(
                    413, "body_too_large", f"the body limit is {max_body} bytes"
                ) from error
            except Hl7Error as error:
                raise ApiError(422, error.code, error.detail) from error
            results = [await ingest.for_tenant(tenant_id, raw) for raw in messages]
            return _answer(ingest, results)


def _answer(ingest: Ingest, results: list[IngestResult]) -> web.Response:
    now = datetime.now(UTC)
    accepted = sum(result.accepted for result in results)
    body = {
        "accepted": accepted,
        "rejected": len(results) - accepted,
        "results": [_result_view(ingest, result, now) for result in results],
    }
    if any(result.reason in _UNAVAILABLE for result in results):
        return web.json_response(body, status=503, headers={"Retry-After": RETRY_AFTER_S})
    waits = [result.retry_after_s for result in results if result.retry_after_s is not None]
    if waits:
        retry_after = str(max(1, math.ceil(max(waits))))
        return web.json_response(body, status=429, headers={"Retry-After": retry_after})
    if accepted == len(results):
        return web.json_response(body, status=202)
    return web.json_response(body, status=207 if accepted else 422)


def _result_view(ingest: Ingest, result: IngestResult, now: datetime) -> dict[str, object]:
    ack = ingest.ack(result, now)
    view: dict[str, object] = {
        "control_id": result.control_id or None,
        "status": "accepted" if result.accepted else "rejected",
        "ack": ack.decode("utf-8", "replace") if ack is not None else None,
    }
    if not result.accepted:
        view["reason"] = result.reason
        view["message"] = result.error.message if result.error is not None else None
    return view
