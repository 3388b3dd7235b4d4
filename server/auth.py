"""API keys: admin keys may do anything, read keys may only read. Both headers are declared so OpenAPI
documents them; keys are compared in constant time."""

from __future__ import annotations

import enum
import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.deps import SettingsDep
from server.errors import APIError


class Role(enum.IntEnum):
    reader = 1
    admin = 2


CHALLENGE = {"WWW-Authenticate": "Bearer"}  # a 401 says how to authenticate (RFC 9110)
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="admin or read-only API key")
_bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


def _matches(candidate: bytes, keys: list[str]) -> bool:
    # Compare against every key so the time taken does not depend on which key (if any) matched.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key.encode())
    return found


async def caller_role(
    s: SettingsDep,
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Role:
    if not s.auth_enabled:
        return Role.admin
    given = api_key if api_key is not None else (bearer.credentials if bearer is not None else None)
    if given is None:
        raise APIError(401, "unauthorized", "an API key is required (X-API-Key or Authorization: Bearer)", CHALLENGE)
    candidate = given.encode("utf-8", "surrogateescape")
    if _matches(candidate, s.admin_keys):
        return Role.admin
    if _matches(candidate, s.read_keys):
        return Role.reader
    raise APIError(401, "unauthorized", "the API key is not valid", CHALLENGE)


RoleDep = Annotated[Role, Depends(caller_role)]


async def require_reader(role: RoleDep) -> Role:
    return role


async def require_admin(role: RoleDep) -> Role:
    if role < Role.admin:
        raise APIError(403, "forbidden", "this API key may only read; changing the gallery needs an admin key")
    return role


Reader = Annotated[Role, Depends(require_reader)]
Admin = Annotated[Role, Depends(require_admin)]
