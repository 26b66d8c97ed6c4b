"""HTTP ingest: `POST /api/tenants/{tenant_id}/messages` with the tenant's bearer token.

The body holds one or more ER7 messages (or an FHS/BHS batch). Its messages are checked and
written one after another, each as an ingress record of its own; after the first refused
message every later one is refused too (`an_earlier_message_was_refused`), so the accepted
ones are always a prefix of the body and a resend of the rest keeps the order. The answer
lists one result per message, in order, each with the ACK(s) its MSH-15/16 ask for (`ack`:
the first or null, `acks`: all of them, in sending order):

    202  every message accepted (durable in Kafka)
    207  the first messages accepted, the rest refused: see each result
    when no message was accepted, by the first refusal:
    403  a message claims the sender identity of another tenant (nothing is written)
    413  a message is larger than `max_message_bytes` (the reason names the limit), or the
         body is larger than the body limit
    503  the tenant is paused or Kafka is unavailable: retry after `Retry-After` seconds
    429  the tenant is above its hard rate ceiling (`ingest_ceiling_factor` x its contract):
         resend after `Retry-After` seconds
    422  the body or its first message is bad
    401/403/404/415  no token, another tenant's (or the admin) token, unknown tenant, not an
                     HL7 content type
What a sender gets in every case: docs/ingest.md.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from aiohttp import web
from faust.web import View

from agents.ingest.accept import Ingest, IngestResult
from agents.web.auth import Guard
from agents.web.common import ApiError, api_errors
from streams.app import LanewayApp
from streams.hl7 import Hl7Error

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
# The status of a body of which nothing was accepted, by the reasons of its refusals.
_NOTHING_ACCEPTED = (
    ("sender_of_another_tenant", 403),
    ("message_too_large", 413),
    ("broker_unavailable", 503),
    ("tenant_paused", 503),
    ("rate_ceiling", 429),
)


def install(app: LanewayApp, ingest: Ingest, guard: Guard) -> None:
    """Register the ingest view on `app`."""
    max_body = app.laneway.http_body_limit

    def body_too_large() -> ApiError:
        ingest.refusals["http", "body_too_large"] += 1
        return ApiError(413, "body_too_large", f"the body limit is {max_body} bytes")

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
                raise body_too_large()
            try:
                results = await ingest.from_http(tenant_id, await request.read())
            except web.HTTPRequestEntityTooLarge as error:
                raise body_too_large() from error
            except Hl7Error as error:
                raise ApiError(422, error.code, error.detail) from error
            return _answer(ingest, results)


def _answer(ingest: Ingest, results: list[IngestResult]) -> web.Response:
    now = datetime.now(UTC)
    accepted = sum(result.accepted for result in results)
    body = {
        "accepted": accepted,
        "rejected": len(results) - accepted,
        "results": [_result_view(ingest, result, now) for result in results],
    }
    if accepted:
        # Accepted messages are written: a status asking to retry the body would duplicate them.
        return web.json_response(body, status=202 if accepted == len(results) else 207)
    status = _status_of_refusal({result.reason for result in results})
    if status == 503:
        return web.json_response(body, status=503, headers={"Retry-After": RETRY_AFTER_S})
    if status == 429:
        waits = [result.retry_after_s for result in results if result.retry_after_s is not None]
        retry_after = str(max(1, math.ceil(max(waits))))
        return web.json_response(body, status=429, headers={"Retry-After": retry_after})
    return web.json_response(body, status=status)


def _status_of_refusal(reasons: set[str | None]) -> int:
    for reason, status in _NOTHING_ACCEPTED:
        if reason in reasons:
            return status
    return 422


def _result_view(ingest: Ingest, result: IngestResult, now: datetime) -> dict[str, object]:
    acks = [ack.payload.decode("utf-8", "replace") for ack in ingest.acks(result, now)]
    view: dict[str, object] = {
        "control_id": result.control_id or None,
        "status": "accepted" if result.accepted else "rejected",
        "ack": acks[0] if acks else None,
        "acks": acks,
    }
    if result.accepted:
        view["partition"], view["offset"] = result.partition, result.offset
    else:
        view["reason"] = result.reason
        view["message"] = result.error.message if result.error is not None else None
    return view
