"""Admin API: onboard, inspect, change, pause, resume and offboard tenants (admin token).

POST   /api/tenants                       201 with the tenant and its token (shown once)
GET    /api/tenants                       every tenant
GET    /api/tenants/{tenant_id}           one tenant
PATCH  /api/tenants/{tenant_id}           change fields (merge)
DELETE /api/tenants/{tenant_id}           offboard: ingest stops at once; topics age out
POST   /api/tenants/{tenant_id}/pause     ingest answers AR / 503 until resumed
POST   /api/tenants/{tenant_id}/resume
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from faust.web import View
from pydantic import ValidationError

from agents.mirror import MirrorUnavailable
from agents.registry import TenantRegistry
from agents.web_auth import ApiError, Guard, validation_error
from streams.app import LanewayApp
from streams.auth import hash_token, new_token
from streams.tenants import SenderIdentity, TenantPatch, TenantRecord, TenantSpec

# Offboarded tenants' topics are not deleted by the API: they keep their data for this long
# (Kafka retention), so downstream teams can finish reading. README documents it.
OUTPUT_RETENTION_MS = 7 * 24 * 3600 * 1000

Handler = Callable[..., Awaitable[web.Response]]


def api_errors(handler: Handler) -> Handler:
    """Turn ApiError and registry outages into JSON answers."""

    async def wrapped(view: View, request: web.Request, **match: str) -> web.Response:
        try:
            return await handler(view, request, **match)
        except ApiError as error:
            return error.response()
        except MirrorUnavailable:
            return ApiError(503, "registry_unavailable", "tenant registry unavailable").response()

    return wrapped


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from error
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def install(app: LanewayApp, registry: TenantRegistry, guard: Guard) -> None:
    """Register the admin views on `app`."""
    topics = app.topic_names

    def existing(tenant_id: str) -> TenantRecord:
        record = registry.directory.get(tenant_id)
        if record is None:
            raise ApiError(404, "unknown_tenant", "no such tenant")
        return record

    # Every read-check-write of a tenant record holds this lock. The check (free id, identities
    # that overlap no other tenant's) and the save are separate awaits (topic creation, the
    # registry write): without it two concurrent requests could both pass the check and both
    # save, or a PATCH could resurrect a tenant deleted meanwhile. It serializes the writers of
    # one worker; two workers can still race (README, "Sender identities").
    registry_lock = asyncio.Lock()

    def refuse_sender_conflicts(tenant_id: str, senders: list[SenderIdentity]) -> None:
        conflicts = registry.directory.sender_conflicts(tenant_id, senders)
        if conflicts:
            # Only the admin reaches this API, so naming the other tenant leaks nothing.
            overlaps = [
                {
                    **_identity_view(c.identity),
                    "conflicts_with": {"tenant": c.owner, **_identity_view(c.claimed)},
                }
                for c in conflicts
            ]
            raise ApiError(
                409,
                "sender_taken",
                "sender identity overlaps one of another tenant: a message could match both",
                senders=overlaps,
            )

    async def create_topics(tenant_id: str) -> None:
        await asyncio.gather(
            *(
                app.create_topic(name, partitions=1, config={"retention.ms": OUTPUT_RETENTION_MS})
                for name in (topics.out(tenant_id), topics.dlq(tenant_id))
            )
        )

    async def save(record: TenantRecord, status: int = 200, **extra: Any) -> web.Response:
        await registry.save(record)
        return web.json_response({**record.public_view(), **extra}, status=status)

    @app.page("/api/tenants")
    class Tenants(View):
        @api_errors
        async def get(self, request: web.Request) -> web.Response:
            await guard.admin(request)
            views = [record.public_view() for record in registry.directory.all()]
            return web.json_response({"tenants": sorted(views, key=lambda v: v["id"])})

        @api_errors
        async def post(self, request: web.Request) -> web.Response:
            await guard.admin(request)
            try:
                spec = TenantSpec.model_validate(await json_body(request))
            except ValidationError as error:
                raise validation_error(error) from error
            async with registry_lock:
                if registry.directory.get(spec.id) is not None:
                    raise ApiError(409, "tenant_exists", "a tenant with this id exists")
                refuse_sender_conflicts(spec.id, spec.senders)
                await create_topics(spec.id)
                token = new_token()
                record = TenantRecord.create(spec, hash_token(token), _now())
                return await save(record, status=201, token=token)

    @app.page("/api/tenants/{tenant_id}")
    class Tenant(View):
        @api_errors
        async def get(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.admin(request)
            return web.json_response(existing(tenant_id).public_view())

        @api_errors
        async def patch(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.admin(request)
            existing(tenant_id)  # 404 before 422
            try:
                patch = TenantPatch.model_validate(await json_body(request))
            except ValidationError as error:
                raise validation_error(error) from error
            async with registry_lock:
                # Read under the lock: a concurrent PATCH's version must not be overwritten.
                record = existing(tenant_id)
                try:
                    spec = patch.apply(record)
                except ValidationError as error:
                    raise validation_error(error) from error
                refuse_sender_conflicts(tenant_id, spec.senders)
                return await save(record.revise(spec, _now()))

        @api_errors
        async def delete(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.admin(request)
            async with registry_lock:
                existing(tenant_id)
                await registry.delete(tenant_id)
            return web.Response(status=204)

    def pause_view(paused: bool) -> type[View]:
        class PauseOrResume(View):
            @api_errors
            async def post(self, request: web.Request, tenant_id: str) -> web.Response:
                await guard.admin(request)
                async with registry_lock:
                    record = existing(tenant_id)
                    spec = TenantPatch(paused=paused).apply(record)
                    return await save(record.revise(spec, _now()))

        return PauseOrResume

    @app.page("/api/tenants/{tenant_id}/token")
    class Token(View):
        @api_errors
        async def post(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.admin(request)
            async with registry_lock:
                record = existing(tenant_id)
                token = new_token()
                rotated = record.revise(record, _now()).model_copy(
                    update={"token_sha256": hash_token(token)}
                )
                return await save(rotated, token=token)

    app.page("/api/tenants/{tenant_id}/pause", name="pause")(pause_view(True))
    app.page("/api/tenants/{tenant_id}/resume", name="resume")(pause_view(False))


def _identity_view(identity: SenderIdentity) -> dict[str, Any]:
    return identity.model_dump(mode="json")


def _now() -> datetime:
    return datetime.now(UTC)
