"""Bearer tokens: minting, hashing, constant-time comparison, header parsing, principals."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from unittest.mock import patch

import pytest

from streams.auth import (
    ADMIN,
    TOKEN_PREFIX,
    Principal,
    authenticate,
    bearer_token,
    hash_token,
    new_token,
    token_matches,
)
from streams.tenants import TenantDirectory, TenantRecord, TenantSpec

ADMIN_TOKEN = "lw_admin-secret"
ST_MARYS_TOKEN = "lw_st-marys-secret"
LAB_TOKEN = "lw_lab-secret"


def test_new_tokens_are_prefixed_random_and_header_safe() -> None:
    tokens = {new_token() for _ in range(100)}

    assert len(tokens) == 100
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        assert len(token) == len(TOKEN_PREFIX) + 43  # 32 random bytes in URL-safe base64
        assert bearer_token(f"Bearer {token}") == token


def test_hash_is_sha256_hex() -> None:
    assert hash_token("lw_abc") == hashlib.sha256(b"lw_abc").hexdigest()


def test_token_matches_its_hash_only() -> None:
    stored = hash_token(ST_MARYS_TOKEN)

    assert token_matches(ST_MARYS_TOKEN, stored)
    assert not token_matches(LAB_TOKEN, stored)
    assert not token_matches(ST_MARYS_TOKEN + "x", stored)


@pytest.mark.parametrize(
    ("token", "stored"), [(None, hash_token("")), ("", hash_token("")), ("x", ""), ("x", None)]
)
def test_missing_token_or_hash_never_matches(token: str | None, stored: str | None) -> None:
    assert not token_matches(token, stored)


def test_comparison_is_constant_time() -> None:
    stored = hash_token(ST_MARYS_TOKEN)

    with patch("streams.auth.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        assert token_matches(ST_MARYS_TOKEN, stored)

    compare.assert_called_once_with(stored, stored)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc", "abc"),
        ("Bearer a.b-c_d~e+f/g==", "a.b-c_d~e+f/g=="),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearerabc", None),
        ("Basic abc", None),
        ("Token abc", None),
        (" Bearer abc", None),
        ("Bearer abc ", None),
        ("Bearer\tabc", None),
        ("Bearer abc def", None),
        ("Bearer abc, Bearer def", None),
        ("Bearer =abc", None),
        ("Bearer a=b", None),
        ("Bearer abc\n", None),
    ],
)
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.fixture
def directory() -> TenantDirectory:
    directory = TenantDirectory()
    created = datetime(2024, 5, 1, tzinfo=UTC)
    for tenant_id, token in (("st-marys", ST_MARYS_TOKEN), ("lab42", LAB_TOKEN)):
        spec = TenantSpec(id=tenant_id, name=tenant_id)
        directory.apply(tenant_id, TenantRecord.create(spec, hash_token(token), created))
    return directory


def test_admin_token_identifies_the_admin(directory: TenantDirectory) -> None:
    principal = authenticate(ADMIN_TOKEN, directory, hash_token(ADMIN_TOKEN))

    assert principal == ADMIN == Principal(kind="admin")
    assert principal.may_access("st-marys")
    assert principal.may_access("lab42")


def test_tenant_token_identifies_its_tenant(directory: TenantDirectory) -> None:
    principal = authenticate(ST_MARYS_TOKEN, directory, hash_token(ADMIN_TOKEN))

    assert principal == Principal(kind="tenant", tenant_id="st-marys")
    assert principal.may_access("st-marys")


def test_another_tenants_token_is_valid_but_not_allowed(directory: TenantDirectory) -> None:
    principal = authenticate(LAB_TOKEN, directory, hash_token(ADMIN_TOKEN))

    # Not None (that would be 401): the view answers 403 for st-marys.
    assert principal == Principal(kind="tenant", tenant_id="lab42")
    assert not principal.may_access("st-marys")


@pytest.mark.parametrize("token", [None, "", "lw_unknown", ADMIN_TOKEN + "x"])
def test_unknown_or_missing_token_is_nobody(directory: TenantDirectory, token: str | None) -> None:
    assert authenticate(token, directory, hash_token(ADMIN_TOKEN)) is None


def test_without_an_admin_token_nobody_is_admin(directory: TenantDirectory) -> None:
    assert authenticate(ADMIN_TOKEN, directory, None) is None
    assert authenticate(ST_MARYS_TOKEN, directory, None) == Principal(
        kind="tenant", tenant_id="st-marys"
    )


def test_admin_check_is_constant_time(directory: TenantDirectory) -> None:
    with patch("streams.auth.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        authenticate(ST_MARYS_TOKEN, directory, hash_token(ADMIN_TOKEN))

    compare.assert_called_once_with(hash_token(ST_MARYS_TOKEN), hash_token(ADMIN_TOKEN))


def test_deleted_tenants_token_stops_working(directory: TenantDirectory) -> None:
    directory.apply("lab42", None)

    assert authenticate(LAB_TOKEN, directory, hash_token(ADMIN_TOKEN)) is None
