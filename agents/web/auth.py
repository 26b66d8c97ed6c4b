"""Bearer-token checks: who may call which of Laneway's views."""

from __future__ import annotations

import asyncio

from aiohttp import web

from agents.state.registry import TenantRegistry
from agents.web.common import ApiError
from streams.auth import Principal, authenticate, bearer_token, hash_token

REGISTRY_WAIT_S = 10.0


class Guard:
    """Decides who may call what: the admin token, or a tenant's own token for its resources."""

    def __init__(self, registry: TenantRegistry, admin_token: str | None) -> None:
        self._registry = registry
        self._admin_token_sha256 = hash_token(admin_token) if admin_token else None

    async def principal(self, request: web.Request) -> Principal:
        # Until the registry has read the tenant topic, "unknown token" could be wrong.
        try:
            await asyncio.wait_for(self._registry.ready.wait(), REGISTRY_WAIT_S)
        except TimeoutError as error:
            raise ApiError(503, "starting", "the tenant registry is loading") from error
        token = bearer_token(request.headers.get("Authorization"))
        principal = authenticate(token, self._registry.directory, self._admin_token_sha256)
        if principal is None:
            raise ApiError(401, "unauthorized", "a valid bearer token is required")
        return principal

    async def admin(self, request: web.Request) -> Principal:
        principal = await self.principal(request)
        if principal.kind != "admin":
            raise ApiError(403, "forbidden", "this endpoint needs the admin token")
        return principal

    async def tenant_or_admin(self, request: web.Request, tenant_id: str) -> Principal:
        """That tenant's token or the admin token; 404 only after authorisation (no probing)."""
        principal = await self.principal(request)
        if not principal.may_access(tenant_id):
            raise ApiError(403, "forbidden", "this token does not belong to this tenant")
        if self._registry.directory.get(tenant_id) is None:
            raise ApiError(404, "unknown_tenant", "no such tenant")
        return principal
