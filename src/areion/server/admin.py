"""/v1/admin/keys: managing API keys over HTTP, behind an admin key.

    POST   /v1/admin/keys                {"tenant": ..., "name": ..., "rpm": ..., ...}
    GET    /v1/admin/keys[?tenant=T]     every key, revoked ones too; never a key itself
    DELETE /v1/admin/keys/{id or name}   revoke

Only a key listed in `auth.admin_keys` may call these; without admin keys the admin
API is off (404). A tenant key is refused (403), and an admin key is no tenant key:
it cannot call models. The new key is in the answer to POST, and nowhere else ever.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.control.keys import KeyRing, create_key, key_json, revoke_key
from areion.errors import AuthenticationError, RequestError
from areion.runtime import Runtime
from areion.server.schema import json_response, parse_body

__all__ = ["AdminApi", "AdminDisabledError", "AdminOnlyError", "bearer_key"]

log = logging.getLogger("areion.server.admin")


class AdminDisabledError(RequestError):
    """The config lists no admin keys."""

    status = 404
    code = "admin_disabled"


class AdminOnlyError(RequestError):
    """A tenant key asked for the admin API."""

    status = 403
    code = "admin_key_required"


class _CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tenant: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, min_length=1, max_length=64)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    priority: Literal["critical", "interactive", "batch"] | None = None
    models: list[str] | None = None


def bearer_key(header: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header value, or None."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


class AdminApi:
    """Handlers of /v1/admin/keys."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._keys: KeyRing = runtime.keys

    def routes(self) -> list[Route]:
        return [
            Route("/v1/admin/keys", self.create, methods=["POST"]),
            Route("/v1/admin/keys", self.list, methods=["GET"]),
            Route("/v1/admin/keys/{key}", self.revoke, methods=["DELETE"]),
        ]

    async def _authorize(self, request: Request) -> None:
        if not self._keys.admin_enabled:
            raise AdminDisabledError(
                "the admin API is off: list admin keys in the config (auth.admin_keys)"
            )
        key = bearer_key(request.headers.get("authorization", ""))
        if key is None:
            raise AuthenticationError("missing admin key: send 'Authorization: Bearer <key>'")
        if self._keys.is_admin(key):
            return
        try:
            await self._keys.identify(key)
        except AuthenticationError:
            raise AuthenticationError("invalid admin key") from None
        raise AdminOnlyError("a tenant key cannot use the admin API; use an admin key")

    async def create(self, request: Request) -> Response:
        await self._authorize(request)
        body = parse_body(_CreateBody, await request.body())
        key, record = await create_key(
            self.runtime.store,
            self.runtime.config,
            tenant=body.tenant,
            name=body.name,
            rpm=body.rpm,
            tpm=body.tpm,
            priority=body.priority,
            models=body.models,
        )
        self._keys.remember(record)
        log.info("API key %s (%s) created for tenant %s", record.key_id, record.name, record.tenant)
        return json_response({**key_json(record), "key": key}, 201)

    async def list(self, request: Request) -> Response:
        await self._authorize(request)
        tenant = request.query_params.get("tenant") or None
        records = await self.runtime.store.keys(tenant=tenant)
        return json_response({"object": "list", "data": [key_json(record) for record in records]})

    async def revoke(self, request: Request) -> Response:
        await self._authorize(request)
        record = await revoke_key(self.runtime.store, request.path_params["key"])
        self._keys.forget(record)
        log.info("API key %s (%s) of tenant %s revoked", record.key_id, record.name, record.tenant)
        return json_response(key_json(record))
