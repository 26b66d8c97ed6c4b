"""Admin API: onboard, inspect, change, pause, resume and offboard tenants (admin token).

POST   /api/tenants                       201 with the tenant and its token (shown once)
GET    /api/tenants                       every tenant, and the retired ids
GET    /api/tenants/{tenant_id}           one tenant (410 with the marker if retired)
PATCH  /api/tenants/{tenant_id}           change fields (merge)
DELETE /api/tenants/{tenant_id}           offboard: ingest stops at once; the id is retired
POST   /api/tenants/{tenant_id}/purge     delete a retired tenant's topics, then free its id
POST   /api/tenants/{tenant_id}/pause     ingest answers AR / 503 until resumed
POST   /api/tenants/{tenant_id}/resume

A deleted tenant leaves a `RetiredTenant` marker: the id is no tenant for anything, and POST
with it answers 409 `tenant_id_retired` until a purge has deleted the old tenant's topics (so a
new tenant of that id never inherits its events, DLQ or replay position) and the marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code
from faust.web import View
from mode import Service
from pydantic import ValidationError

from agents.state.mirror import MirrorUnavailable
from agents.state.registry import TenantRegistry
from agents.state.topic_admin import UNKNOWN_TOPIC_OR_PARTITION, existing_topics, started_admin
from agents.web.auth import Guard
from agents.web.common import ApiError, api_errors, json_body, validation_error
from streams.app import LanewayApp
from streams.auth import hash_token, new_token
from streams.tenants import RetiredTenant, SenderIdentity, TenantPatch, TenantRecord, TenantSpec

# How long a purge waits for the broker to stop listing the deleted topics.
PURGE_TIMEOUT_S = 30.0
PURGE_POLL_S = 0.2
REGISTRY_CATCH_UP_S = 5.0

T = TypeVar("T")


class TenantTopics(Service):
    """A tenant's own topics (out, dlq): which of them exist, deleting them.

    Onboarding creates neither: the publisher creates each with its first record
    (`agents.state.publisher`), so a tenant may have one, both or none. Its admin client starts
    on first use: purges are rare next to the stream.
    """

    def __init__(self, app: LanewayApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self._client: AIOKafkaAdminClient | None = None
        self._starting = asyncio.Lock()

    def names(self, tenant_id: str) -> list[str]:
        topics = self.app.topic_names
        return [topics.out(tenant_id), topics.dlq(tenant_id)]

    async def existing(self, tenant_id: str) -> list[str]:
        """The tenant's topics the broker lists."""
        return sorted(await existing_topics(await self._admin(), self.names(tenant_id)))

    async def delete(self, tenant_id: str) -> list[str]:
        """Delete the tenant's topics and wait until the broker lists none of them; the names
        deleted. TimeoutError if the broker still lists one after PURGE_TIMEOUT_S."""
        doomed = await self.existing(tenant_id)
        if doomed:
            response = await (await self._admin()).delete_topics(doomed)
            for _, code in response.topic_error_codes:
                if code not in (0, UNKNOWN_TOPIC_OR_PARTITION):  # gone already is fine
                    raise for_code(code)("deleting a tenant topic failed")
        async with asyncio.timeout(PURGE_TIMEOUT_S):
            # Deletion completes in the background: poll the broker, which pushes nothing.
            while True:
                if not await self.existing(tenant_id):
                    return doomed
                await asyncio.sleep(PURGE_POLL_S)

    async def _admin(self) -> AIOKafkaAdminClient:
        async with self._starting:
            if self._client is None:
                self._client = await started_admin(
                    self.app.laneway.bootstrap_servers, self.app.topic_names.tenants
                )
        return self._client

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.close()


def _retired_error(retired: RetiredTenant, status: int, code: str, message: str) -> ApiError:
    return ApiError(
        status,
        code,
        f"{message}; purge it first: POST /api/tenants/{retired.id}/purge deletes the old "
        "tenant's topics and frees the id",
        retired=retired.public_view(),
    )


def install(app: LanewayApp, registry: TenantRegistry, guard: Guard) -> None:
    """Register the admin views on `app`."""
    tenant_topics = TenantTopics(app)
    app.add_service(tenant_topics)

    def existing(tenant_id: str) -> TenantRecord:
        record = registry.directory.get(tenant_id)
        if record is not None:
            return record
        retired = registry.directory.retired(tenant_id)
        if retired is not None:
            raise _retired_error(retired, 410, "tenant_retired", "this tenant was deleted")
        raise ApiError(404, "unknown_tenant", "no such tenant")

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

    def refuse_used_id(tenant_id: str) -> None:
        """409 unless the id is free: no tenant and no retired marker."""
        if registry.directory.get(tenant_id) is not None:
            raise ApiError(409, "tenant_exists", "a tenant with this id exists")
        retired = registry.directory.retired(tenant_id)
        if retired is not None:
            raise _retired_error(retired, 409, "tenant_id_retired", "a deleted tenant had this id")

    async def save(
        record: TenantRecord | RetiredTenant, status: int = 200, **extra: Any
    ) -> web.Response:
        await registry.save(record)
        return web.json_response({**record.public_view(), **extra}, status=status)

    @app.page("/api/tenants")
    class Tenants(View):
        @api_errors
        async def get(self, request: web.Request) -> web.Response:
            await guard.admin(request)
            views = [record.public_view() for record in registry.directory.all()]
            retired = [marker.public_view() for marker in registry.directory.all_retired()]
            return web.json_response(
                {
                    "tenants": sorted(views, key=lambda v: v["id"]),
                    "retired": sorted(retired, key=lambda v: v["id"]),
                }
            )

        @api_errors
        async def post(self, request: web.Request) -> web.Response:
            await guard.admin(request)
            try:
                spec = TenantSpec.model_validate(await json_body(request))
            except ValidationError as error:
                raise validation_error(error) from error
            async with registry_lock:
                refuse_used_id(spec.id)
                refuse_sender_conflicts(spec.id, spec.senders)
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
                await registry.save(existing(tenant_id).retire(_now()))
            return web.Response(status=204)

    @app.page("/api/tenants/{tenant_id}/purge")
    class Purge(View):
        @api_errors
        async def post(self, request: web.Request, tenant_id: str) -> web.Response:
            """Delete a retired tenant's topics, then its marker: the id is free again. Also
            deletes the topics left behind by a tenant deleted before markers existed."""
            await guard.admin(request)
            # Under the lock for its whole length, deletion included: a POST of this id on this
            # worker must not create topics that the purge then deletes.
            async with registry_lock:
                # A tenant onboarded on another worker a moment ago must not look unknown here.
                if not await registry.caught_up(REGISTRY_CATCH_UP_S):
                    raise MirrorUnavailable("tenant registry not caught up")
                if registry.directory.get(tenant_id) is not None:
                    message = "only a deleted tenant can be purged: DELETE it first"
                    raise ApiError(409, "tenant_not_retired", message)
                retired = registry.directory.retired(tenant_id)
                deleted = await broker_call(tenant_topics.delete(tenant_id))
                if retired is None and not deleted:
                    raise ApiError(404, "unknown_tenant", "no such tenant")
                if retired is not None:
                    await registry.forget(tenant_id)
            return web.json_response({"id": tenant_id, "purged": True, "deleted_topics": deleted})

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


async def broker_call(call: Awaitable[T]) -> T:
    """Await a call of the tenant topics' admin client; 503 if Kafka fails or is too slow."""
    try:
        return await call
    except (TimeoutError, KafkaError, OSError) as error:
        raise ApiError(
            503, "broker_unavailable", f"Kafka did not complete the request: {type(error).__name__}"
        ) from error


def _identity_view(identity: SenderIdentity) -> dict[str, Any]:
    return identity.model_dump(mode="json")


def _now() -> datetime:
    return datetime.now(UTC)
