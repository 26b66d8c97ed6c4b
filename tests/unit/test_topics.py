"""Topic names and tenant ids."""

from __future__ import annotations

import pytest

from streams.topics import TopicNames, is_valid_tenant_id


def test_topic_layout_follows_the_contract() -> None:
    names = TopicNames()

    assert names.ingress == "laneway.ingress"
    assert names.out("st-marys") == "laneway.out.st-marys"
    assert names.dlq("st-marys") == "laneway.dlq.st-marys"


def test_unrouted_dlq_cannot_belong_to_any_tenant() -> None:
    suffix = TopicNames().dlq_unrouted.removeprefix("laneway.dlq.")

    assert not is_valid_tenant_id(suffix)


@pytest.mark.parametrize("tenant_id", ["st-marys", "a", "lab42", "x" * 64])
def test_valid_tenant_ids(tenant_id: str) -> None:
    assert is_valid_tenant_id(tenant_id)


@pytest.mark.parametrize(
    "tenant_id",
    ["", "-lead", "trail-", "Upper", "dot.ted", "under_score", "x" * 65, "sp ace", "é"],
)
def test_invalid_tenant_ids(tenant_id: str) -> None:
    assert not is_valid_tenant_id(tenant_id)
