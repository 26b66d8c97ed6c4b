"""Bearer tokens: minting, hashing, parsing the Authorization header, and telling who a token is.

Tokens are stored only as SHA-256 hex digests and compared in constant time. Never log a token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from streams.tenants import TenantDirectory

# A fixed prefix lets secret scanners (and humans) recognise a leaked Laneway token.
TOKEN_PREFIX = "lw_"

# RFC 6750 §2.1: case-insensitive scheme, one or more spaces, then a b64token. Anything else
# (extra parameters, surrounding whitespace, a comma-separated list) is refused.
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9._~+/-]+=*)")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Plain SHA-256 without salt or a slow KDF is enough: tokens carry 256 random bits, so there
    # is no dictionary to defend against, unlike passwords.
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str | None, token_sha256: str | None) -> bool:
    """True if `token` hashes to `token_sha256` (constant-time); False if either is missing."""
    if not token or not token_sha256:
        return False
    return hmac.compare_digest(hash_token(token), token_sha256)


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None if absent or malformed."""
    if authorization_header is None:
        return None
    match = _BEARER.fullmatch(authorization_header)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who presented a valid token: the admin, or one tenant (`tenant_id` set)."""

    kind: Literal["admin", "tenant"]
    tenant_id: str | None = None

    def may_access(self, tenant_id: str) -> bool:
        """The "that tenant's token or admin" rule of the per-tenant endpoints."""
        return self.kind == "admin" or self.tenant_id == tenant_id


ADMIN = Principal(kind="admin")


def authenticate(
    token: str | None, directory: TenantDirectory, admin_token_sha256: str | None
) -> Principal | None:
    """The principal `token` belongs to, or None for a missing or unknown token.

    Views answer 401 for None and 403 when `principal.may_access(tenant_id)` is False, i.e. a
    valid token of another tenant. `admin_token_sha256` is None when no admin token is set.
    """
    if not token:
        return None
    if token_matches(token, admin_token_sha256):
        return ADMIN
    # This dict lookup is not constant time, but it is keyed by the token's SHA-256: timing can
    # reveal at most something about a digest the caller cannot steer, never the token itself.
    owner = directory.tenant_for_token_hash(hash_token(token))
    return None if owner is None else Principal(kind="tenant", tenant_id=owner)
