"""What every Laneway view shares: JSON errors, request bodies, response helpers.

Kept free of the services behind the views, so that a view module imports only what it serves.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from faust.web import View
from pydantic import ValidationError

from agents.state.mirror import MirrorUnavailable

Handler = Callable[..., Awaitable[web.Response]]


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def response(self) -> web.Response:
        body = {"error": self.code, "message": self.message, **self.extra}
        headers = {"WWW-Authenticate": 'Bearer realm="laneway"'} if self.status == 401 else None
        return web.json_response(body, status=self.status, headers=headers)


def validation_error(error: ValidationError) -> ApiError:
    """422 naming every bad field by its dotted path, e.g. `senders.0.application`."""
    problems = [
        {"field": ".".join(str(part) for part in item["loc"]) or "body", "message": item["msg"]}
        for item in error.errors(include_url=False, include_input=False)
    ]
    fields = ", ".join(problem["field"] for problem in problems)
    return ApiError(422, "invalid_field", f"invalid value for: {fields}", problems=problems)


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
    """The request's body as a JSON object; 400 if it is not one."""
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from error
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def no_store(handler: Handler) -> Handler:
    """Stats and the dashboard are per-user data: no cache (browser or proxy) may keep them."""

    async def wrapped(view: View, request: web.Request, **match: str) -> web.Response:
        response = await handler(view, request, **match)
        response.headers["Cache-Control"] = "no-store"
        return response

    return wrapped


def json_response(body: Mapping[str, Any]) -> web.Response:
    # orjson: /api/stats for 1,000 tenants is ~1 MB of JSON, every dashboard refresh.
    return web.Response(body=orjson.dumps(body), content_type="application/json")
