"""Tenant models, the sender index and the tenant directory."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streams import tenants as tenants_module
from streams.tenants import (
    DEFAULT_BURST,
    DEFAULT_RATE_PER_S,
    LaneSettings,
    Peer,
    RetiredTenant,
    SenderConflict,
    SenderIdentity,
    SenderIndex,
    TenantDirectory,
    TenantPatch,
    TenantRecord,
    TenantSpec,
    TenantSummary,
    identities_overlap,
    stored_from_json,
)

EXAMPLE_BODY: dict[str, Any] = {
    "id": "st-marys",
    "name": "St Mary's",
    "senders": [{"application": "EPIC", "facility": "STMARYS"}],
    "rate_per_s": 50,
    "burst": 100,
}
CREATED = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
UPDATED = datetime(2024, 5, 2, 9, 30, tzinfo=UTC)
PEER = IPv4Address("10.1.2.3")


def body(**overrides: Any) -> dict[str, Any]:
    return {**EXAMPLE_BODY, **overrides}


def sender(
    application: str = "", facility: str = "", networks: tuple[str, ...] = ()
) -> SenderIdentity:
    return SenderIdentity(application=application, facility=facility, networks=list(networks))


def record(tenant_id: str, *senders: SenderIdentity, token_digit: str = "a") -> TenantRecord:
    return record_with_hash(tenant_id, list(senders), token_digit * 64)


def record_with_hash(
    tenant_id: str, senders: list[SenderIdentity], token_sha256: str
) -> TenantRecord:
    spec = TenantSpec(id=tenant_id, name=tenant_id, senders=senders)
    return TenantRecord.create(spec, token_sha256, CREATED)


def only_error(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[tuple[int | str, ...], str]:
    (error,) = exc.value.errors()
    return error["loc"], error["msg"]


# --- TenantSpec -------------------------------------------------------------------------------


def test_the_documented_example_body_validates_from_json() -> None:
    spec = TenantSpec.model_validate_json(json.dumps(EXAMPLE_BODY))

    assert spec.id == "st-marys"
    assert spec.senders == [SenderIdentity(application="EPIC", facility="STMARYS")]
    assert (spec.rate_per_s, spec.burst, spec.paused) == (50.0, 100, False)
    assert (spec.lane.pinned, spec.output.mode, spec.output.mask) == ("auto", "full", [])


def test_defaults_for_a_minimal_http_only_tenant() -> None:
    spec = TenantSpec.model_validate({"id": "lab42", "name": "Lab 42"})

    assert spec.senders == []
    assert (spec.rate_per_s, spec.burst) == (DEFAULT_RATE_PER_S, DEFAULT_BURST)


def test_networks_accept_host_bits_and_both_ip_versions() -> None:
    spec = TenantSpec.model_validate(
        body(senders=[{"facility": "LAB", "networks": ["10.1.2.3/24", "2001:db8::7/64"]}])
    )

    assert spec.senders[0].networks == [IPv4Network("10.1.2.0/24"), IPv6Network("2001:db8::/64")]


def test_name_is_trimmed() -> None:
    assert TenantSpec.model_validate(body(name="  St Mary's ")).name == "St Mary's"


@pytest.mark.parametrize(
    ("overrides", "loc", "message"),
    [
        ({"id": "St_Marys"}, ("id",), "lower-case"),
        ({"id": ""}, ("id",), "lower-case"),
        ({"name": ""}, ("name",), "at least 1"),
        ({"name": "   "}, ("name",), "at least 1"),
        ({"name": "x" * 201}, ("name",), "at most 200"),
        ({"senders": [{}]}, ("senders", 0), "'application' (MSH-3) or 'facility'"),
        ({"senders": [{"application": "", "facility": ""}]}, ("senders", 0), "'application'"),
        ({"senders": [{"application": "EP^IC"}]}, ("senders", 0, "application"), "delimiters"),
        ({"senders": [{"facility": "A|B"}]}, ("senders", 0, "facility"), "delimiters"),
        (
            {"senders": [{"facility": "LAB", "networks": ["10.0.0.0/8", "10.0.0.0/33"]}]},
            ("senders", 0, "networks", 1),
            "does not appear to be",
        ),
        (
            {"senders": [{"facility": "LAB", "networks": [5]}]},
            ("senders", 0, "networks", 0),
            "CIDR string",
        ),
        (
            {"senders": [{"application": "EPIC", "facilty": "STMARYS"}]},
            ("senders", 0, "facilty"),
            "Extra inputs",
        ),
        (
            {"senders": [{"application": "EPIC"}, {"application": "EPIC", "networks": []}]},
            ("senders",),
            "sender 1 repeats",
        ),
        ({"colour": "blue"}, ("colour",), "Extra inputs"),
        ({"rate_per_s": -1}, ("rate_per_s",), "greater than 0"),
        ({"rate_per_s": 0}, ("rate_per_s",), "greater than 0"),
        ({"rate_per_s": float("inf")}, ("rate_per_s",), "finite"),
        ({"burst": 0}, ("burst",), "greater than or equal to 1"),
        ({"output": {"mask": ["dob"]}}, ("output", "mask", 0), "'birth_date'"),
        ({"output": {"mode": "slim"}}, ("output", "mode"), "'thin'"),
        ({"output": {"mask_method": "rot13"}}, ("output", "mask_method"), "'drop'"),
        ({"lane": {"pinned": "mine"}}, ("lane", "pinned"), "'dedicated'"),
        ({"lane": {"pinned": "dedicated", "dedicated_lane": -1}}, ("lane", "dedicated_lane"), ""),
        ({"lane": {"dedicated_lane": 2}}, ("lane",), "'dedicated_lane' can only be set"),
    ],
)
def test_each_invalid_field_is_named(
    overrides: dict[str, Any], loc: tuple[int | str, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        TenantSpec.model_validate(body(**overrides))

    assert only_error(exc)[0] == loc
    assert message in only_error(exc)[1]


def test_a_dedicated_lane_can_be_pinned() -> None:
    lane = {"pinned": "dedicated", "dedicated_lane": 2}

    assert TenantSpec.model_validate(body(lane=lane)).lane.dedicated_lane == 2


# --- TenantPatch ------------------------------------------------------------------------------


def stored_spec() -> TenantSpec:
    return TenantSpec.model_validate(
        body(output={"mode": "full", "mask": ["ssn", "phone"], "mask_method": "drop"})
    )


def test_patch_changes_only_the_fields_it_names() -> None:
    before = stored_spec()

    after = TenantPatch.model_validate({"rate_per_s": 75, "paused": True}).apply(before)

    assert (after.rate_per_s, after.paused) == (75.0, True)
    assert after.model_dump(exclude={"rate_per_s", "paused"}) == before.model_dump(
        exclude={"rate_per_s", "paused"}
    )


def test_patch_merges_nested_objects_so_masking_survives_a_mode_change() -> None:
    after = TenantPatch.model_validate({"output": {"mode": "thin"}}).apply(stored_spec())

    assert after.output.model_dump() == {
        "mode": "thin",
        "mask": ["ssn", "phone"],
        "mask_method": "drop",
    }


def test_patch_replaces_lists_whole() -> None:
    patch = TenantPatch.model_validate({"senders": [{"facility": "LAB"}]})

    assert patch.apply(stored_spec()).senders == [SenderIdentity(facility="LAB")]


def test_empty_patch_is_a_no_op() -> None:
    assert TenantPatch.model_validate({}).apply(stored_spec()) == stored_spec()


def test_patch_judges_the_lane_rule_after_merging() -> None:
    pinned = TenantSpec.model_validate(body(lane={"pinned": "dedicated", "dedicated_lane": 1}))
    move = TenantPatch.model_validate({"lane": {"dedicated_lane": 3}})

    assert move.apply(pinned).lane.model_dump() == {"pinned": "dedicated", "dedicated_lane": 3}
    with pytest.raises(ValidationError) as exc:
        move.apply(stored_spec())
    assert only_error(exc)[0] == ("lane",)


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"id": "other"}, ("id",)),
        ({"rate_per_s": -5}, ("rate_per_s",)),
        ({"senders": [{"networks": ["10.0.0.0/8"]}]}, ("senders", 0)),
        ({"output": {"mask": ["everything"]}}, ("output", "mask", 0)),
    ],
)
def test_invalid_patch_names_the_field(patch: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    with pytest.raises(ValidationError) as exc:
        TenantPatch.model_validate(patch)

    assert only_error(exc)[0] == loc


def test_null_cannot_clear_a_required_field() -> None:
    with pytest.raises(ValidationError) as exc:
        TenantPatch.model_validate({"rate_per_s": None}).apply(stored_spec())

    assert only_error(exc)[0] == ("rate_per_s",)


def test_patch_applies_to_a_stored_record() -> None:
    stored = TenantRecord.create(stored_spec(), "a" * 64, CREATED)

    after = TenantPatch.model_validate({"name": "Renamed"}).apply(stored)

    assert type(after) is TenantSpec
    assert (after.id, after.name) == ("st-marys", "Renamed")


# --- TenantRecord -----------------------------------------------------------------------------


def test_create_starts_at_version_one() -> None:
    created = TenantRecord.create(stored_spec(), "a" * 64, CREATED)

    assert created.version == 1
    assert created.created_at == created.updated_at == "2024-05-01T08:00:00+00:00"
    assert created.token_sha256 == "a" * 64


def test_revise_bumps_version_and_keeps_identity_fields() -> None:
    created = TenantRecord.create(stored_spec(), "a" * 64, CREATED)
    renamed = TenantPatch.model_validate({"name": "Renamed"}).apply(created)

    revised = created.revise(renamed, UPDATED)

    assert (revised.version, revised.name) == (2, "Renamed")
    assert (revised.created_at, revised.token_sha256) == (created.created_at, "a" * 64)
    assert revised.updated_at == "2024-05-02T09:30:00+00:00"


def test_revise_refuses_another_tenants_spec() -> None:
    created = TenantRecord.create(stored_spec(), "a" * 64, CREATED)

    with pytest.raises(ValueError, match="other"):
        created.revise(TenantSpec(id="other", name="Other"), UPDATED)


def test_public_view_hides_the_token_hash_and_is_json_ready() -> None:
    spec = TenantSpec.model_validate(
        body(senders=[{"application": "EPIC", "networks": ["10.0.0.0/8"]}])
    )
    view = TenantRecord.create(spec, "a" * 64, CREATED).public_view()

    assert "token_sha256" not in view
    assert "a" * 64 not in json.dumps(view)
    assert view["senders"] == [{"application": "EPIC", "facility": "", "networks": ["10.0.0.0/8"]}]
    assert view["version"] == 1


def test_repr_does_not_show_the_token_hash() -> None:
    assert "a" * 64 not in repr(TenantRecord.create(stored_spec(), "a" * 64, CREATED))


def test_json_round_trip() -> None:
    spec = TenantSpec.model_validate(
        body(
            senders=[{"facility": "LAB", "networks": ["10.0.0.0/8", "2001:db8::/32"]}],
            lane={"pinned": "dedicated", "dedicated_lane": 0},
            output={"mode": "thin", "mask": ["ssn"]},
            paused=True,
        )
    )
    stored = TenantRecord.create(spec, "b" * 64, CREATED)

    assert TenantRecord.from_json(stored.to_json()) == stored


@pytest.mark.parametrize("token_sha256", ["lw_not-a-hash", "A" * 64, "a" * 63])
def test_record_only_stores_a_sha256_hex_digest(token_sha256: str) -> None:
    with pytest.raises(ValidationError) as exc:
        TenantRecord.create(stored_spec(), token_sha256, CREATED)

    assert only_error(exc)[0] == ("token_sha256",)


# --- SenderIndex ------------------------------------------------------------------------------


@pytest.fixture
def layered_index() -> SenderIndex:
    index = SenderIndex()
    index.put("pair", [sender("EPIC", "STMARYS")])
    index.put("app-only", [sender(application="CERNER")])
    index.put("facility-only", [sender(facility="LAB")])
    return index


@pytest.mark.parametrize(
    ("application", "facility", "tenant"),
    [
        ("EPIC", "STMARYS", "pair"),
        ("CERNER", "OTHER", "app-only"),
        ("CERNER", "", "app-only"),
        ("EPIC", "LAB", "facility-only"),
        ("", "LAB", "facility-only"),
        ("EPIC", "OTHER", None),
        ("OTHER", "STMARYS", None),
        ("", "", None),
        ("epic", "stmarys", None),  # case-sensitive
        ("EPIC ", "STMARYS", None),  # no trimming either
    ],
)
def test_each_identity_shape_matches_its_messages(
    layered_index: SenderIndex, application: str, facility: str, tenant: str | None
) -> None:
    assert layered_index.resolve(application, facility, PEER) == tenant


def test_overlapping_identities_of_two_tenants_route_to_nobody() -> None:
    # Only a race between two workers' onboardings can store these; the message is refused.
    index = SenderIndex()
    index.put("application", [sender(application="CERNER")])
    index.put("facility", [sender(facility="LAB")])

    assert index.resolve("CERNER", "LAB", PEER) is None
    assert index.resolve("CERNER", "OTHER", PEER) == "application"
    assert index.resolve("OTHER", "LAB", PEER) == "facility"


def test_pair_identity_does_not_match_another_facility() -> None:
    index = SenderIndex()
    index.put("pair", [sender("EPIC", "STMARYS")])

    assert index.resolve("EPIC", "OTHER", PEER) is None
    assert index.resolve("OTHER", "STMARYS", PEER) is None


def test_networks_restrict_the_peer() -> None:
    index = SenderIndex()
    index.put("t", [sender("EPIC", networks=("10.1.0.0/16", "2001:db8::/32"))])

    assert index.resolve("EPIC", "", IPv4Address("10.1.200.7")) == "t"
    assert index.resolve("EPIC", "", IPv6Address("2001:db8::1")) == "t"
    assert index.resolve("EPIC", "", IPv4Address("10.2.0.1")) is None
    assert index.resolve("EPIC", "", None) is None


def test_ipv4_mapped_peer_of_a_dual_stack_listener_matches_an_ipv4_network() -> None:
    index = SenderIndex()
    index.put("t", [sender("EPIC", networks=("10.1.0.0/16",))])

    assert index.resolve("EPIC", "", ip_address("::ffff:10.1.2.3")) == "t"
    assert index.resolve("EPIC", "", ip_address("::ffff:10.9.2.3")) is None


def test_networks_separate_two_tenants_with_the_same_values() -> None:
    index = SenderIndex()
    index.put("north", [sender("EPIC", "STMARYS", networks=("10.1.0.0/16",))])
    index.put("south", [sender(application="EPIC", networks=("192.168.0.0/16",))])

    assert index.resolve("EPIC", "STMARYS", IPv4Address("10.1.0.1")) == "north"
    assert index.resolve("EPIC", "STMARYS", IPv4Address("192.168.0.1")) == "south"
    assert index.resolve("EPIC", "STMARYS", IPv4Address("172.16.0.1")) is None
    assert index.resolve("EPIC", "OTHER", IPv4Address("10.1.0.1")) is None


def test_several_identities_of_one_tenant_may_match() -> None:
    index = SenderIndex()
    index.put("t", [sender("EPIC", "STMARYS", networks=("10.1.0.0/16",)), sender("EPIC")])

    assert index.resolve("EPIC", "STMARYS", IPv4Address("10.1.0.1")) == "t"
    assert index.resolve("EPIC", "STMARYS", IPv4Address("192.168.0.1")) == "t"


def test_changing_senders_drops_stale_keys() -> None:
    index = SenderIndex()
    index.put("t", [sender("EPIC", "STMARYS"), sender(facility="LAB")])

    index.put("t", [sender("EPIC", "STMARYS")])

    assert index.resolve("EPIC", "STMARYS", PEER) == "t"
    assert index.resolve("ANY", "LAB", PEER) is None
    assert len(index) == 1
    assert index.conflicts("other", [sender(facility="LAB")]) == []


def test_changing_networks_of_a_kept_key_takes_effect() -> None:
    index = SenderIndex()
    index.put("t", [sender("EPIC", networks=("10.0.0.0/8",))])

    index.put("t", [sender("EPIC", networks=("192.168.0.0/16",))])

    assert index.resolve("EPIC", "", IPv4Address("10.0.0.1")) is None
    assert index.resolve("EPIC", "", IPv4Address("192.168.0.1")) == "t"


def test_remove_forgets_the_tenant_and_leaves_others() -> None:
    index = SenderIndex()
    index.put("a", [sender("EPIC")])
    index.put("b", [sender("CERNER")])

    index.remove("a")
    index.remove("never-added")

    assert index.resolve("EPIC", "", PEER) is None
    assert index.resolve("CERNER", "", PEER) == "b"
    assert len(index) == 1


def test_conflicts_name_the_overlapping_identity_and_its_owner() -> None:
    index = SenderIndex()
    held = sender("EPIC", "STMARYS")
    index.put("a", [held, sender(facility="LAB", networks=("10.0.0.0/8",))])
    taken = sender("EPIC", "STMARYS", networks=("10.0.0.0/8",))

    found = index.conflicts("b", [taken, sender("CERNER", "OTHER"), sender(facility="LAB2")])

    assert found == [SenderConflict(taken, "a", held)]
    assert index.conflicts("a", [sender("EPIC", "STMARYS"), sender(facility="LAB")]) == []


# Each row: an identity held by tenant "a", one that tenant "b" asks for, and whether they overlap.
_OVERLAPS = [
    (sender("X", "F"), sender("X", "F"), True),
    (sender("X", "F"), sender("X"), True),
    (sender("X", "F"), sender(facility="F"), True),
    (sender("X"), sender(facility="F"), True),  # a message from X at F matches both
    (sender(facility="F"), sender("X"), True),
    (sender("X"), sender("X"), True),
    (sender(facility="F"), sender(facility="F"), True),
    (sender("X", "F"), sender("X", "G"), False),
    (sender("X", "F"), sender("Y", "F"), False),
    (sender("X", "F"), sender("Y"), False),
    (sender("X", "F"), sender(facility="G"), False),
    (sender("X"), sender("Y"), False),
    (sender(facility="F"), sender(facility="G"), False),
    (sender("X", networks=("10.0.0.0/8",)), sender("X", networks=("192.168.0.0/16",)), False),
    (sender("X", networks=("10.0.0.0/8",)), sender("X", networks=("10.1.0.0/16",)), True),
    (sender("X", networks=("10.0.0.0/8",)), sender(facility="F"), True),  # no networks: all
    (
        sender("X", networks=("10.0.0.0/8", "2001:db8::/32")),
        sender(facility="F", networks=("2001:db8:1::/48",)),
        True,
    ),
    (sender("X", networks=("10.0.0.0/8",)), sender("X", networks=("::ffff:0:0/96",)), False),
    (sender("X", "F", networks=("10.0.0.0/8",)), sender("X", networks=("10.2.3.0/24",)), True),
]


@pytest.mark.parametrize(("held", "asked", "overlap"), _OVERLAPS)
def test_overlap_rule(held: SenderIdentity, asked: SenderIdentity, overlap: bool) -> None:
    index = SenderIndex()
    index.put("a", [held])

    assert identities_overlap(held, asked) is overlap
    assert identities_overlap(asked, held) is overlap
    assert index.conflicts("b", [asked]) == ([SenderConflict(asked, "a", held)] if overlap else [])


def test_a_contested_key_routes_to_nobody_until_resolved() -> None:
    index = SenderIndex()
    index.put("a", [sender("EPIC", "STMARYS")])
    index.put("b", [sender("EPIC", "STMARYS")])

    assert index.resolve("EPIC", "STMARYS", PEER) is None
    index.remove("a")
    assert index.resolve("EPIC", "STMARYS", PEER) == "b"


_VALUES = st.sampled_from(["", "A", "B"])
_NETS = st.sampled_from(
    [(), ("10.0.0.0/8",), ("10.1.0.0/16",), ("192.168.0.0/16",), ("10.1.0.0/16", "2001:db8::/32")]
)
_IDENTITIES = st.tuples(_VALUES, _VALUES, _NETS).filter(lambda t: t[0] or t[1])
_TENANT_SETS = st.lists(st.lists(_IDENTITIES, max_size=3, unique_by=lambda t: t[:2]), max_size=5)
_PEERS = [
    None,
    IPv4Address("10.0.0.1"),
    IPv4Address("10.1.0.1"),
    IPv4Address("192.168.0.1"),
    IPv6Address("2001:db8::1"),
    ip_address("::ffff:10.1.2.3"),
]
_MESSAGES = [
    (a, f, peer) for a in ("", "A", "B", "C") for f in ("", "A", "B", "C") for peer in _PEERS
]


def _matching_tenants(
    claims: list[tuple[str, SenderIdentity]], application: str, facility: str, peer: Peer
) -> set[str]:
    """The matching rule written as a brute-force filter, for comparison with the index."""
    return {
        tenant
        for tenant, identity in claims
        if identity.application in ("", application)
        and identity.facility in ("", facility)
        and identity.admits(peer)
    }


def _index_of(
    tenants: list[list[tuple[str, str, tuple[str, ...]]]],
) -> tuple[SenderIndex, list[tuple[str, SenderIdentity]]]:
    index = SenderIndex()
    claims: list[tuple[str, SenderIdentity]] = []
    for number, identities in enumerate(tenants):
        senders = [sender(*identity) for identity in identities]
        index.put(f"t{number}", senders)
        claims += [(f"t{number}", s) for s in senders]
    return index, claims


@given(tenants=_TENANT_SETS)
def test_index_agrees_with_the_reference_rule(
    tenants: list[list[tuple[str, str, tuple[str, ...]]]],
) -> None:
    # Any identity sets, overlapping ones included (as two workers' racing onboardings leave).
    index, claims = _index_of(tenants)

    for application, facility, peer in _MESSAGES:
        matching = _matching_tenants(claims, application, facility, peer)
        expected = matching.pop() if len(matching) == 1 else None
        assert index.resolve(application, facility, peer) == expected


@given(tenants=_TENANT_SETS)
def test_accepted_identities_never_let_a_message_match_two_tenants(
    tenants: list[list[tuple[str, str, tuple[str, ...]]]],
) -> None:
    directory = TenantDirectory()
    claims: list[tuple[str, SenderIdentity]] = []
    for number, identities in enumerate(tenants):
        tenant_id = f"t{number}"
        senders = [sender(*identity) for identity in identities]
        if directory.sender_conflicts(tenant_id, senders):
            continue  # the admin API answers 409: never stored
        directory.apply(tenant_id, record(tenant_id, *senders, token_digit=str(number)))
        claims += [(tenant_id, s) for s in senders]

    for application, facility, peer in _MESSAGES:
        matching = _matching_tenants(claims, application, facility, peer)
        assert len(matching) <= 1, (application, facility, peer, matching)
        resolved = directory.resolve_sender(application, facility, peer)
        assert resolved == (next(iter(matching)) if matching else None)


@given(tenants=_TENANT_SETS, asked=_IDENTITIES, removed=st.integers(0, 5))
def test_conflicts_are_exactly_the_identities_sharing_a_message(
    tenants: list[list[tuple[str, str, tuple[str, ...]]]],
    asked: tuple[str, str, tuple[str, ...]],
    removed: int,
) -> None:
    index, claims = _index_of(tenants)
    index.remove(f"t{removed}")  # offboarding must leave no stale entry behind
    claims = [(tenant, held) for tenant, held in claims if tenant != f"t{removed}"]
    identity = sender(*asked)

    found = {(c.owner, c.claimed.key) for c in index.conflicts("newcomer", [identity])}

    shared = {
        (tenant, held.key)
        for tenant, held in claims
        if any(
            _matching_tenants([(tenant, held)], a, f, peer)
            and _matching_tenants([("newcomer", identity)], a, f, peer)
            for a, f, peer in _MESSAGES
        )
    }
    assert found == shared


# --- TenantDirectory --------------------------------------------------------------------------


def test_directory_applies_a_record() -> None:
    directory = TenantDirectory()
    stored = record("st-marys", sender("EPIC", "STMARYS"))

    directory.apply("st-marys", stored)

    assert directory.get("st-marys") == stored
    assert directory.all() == [stored]
    assert directory.resolve_sender("EPIC", "STMARYS", PEER) == "st-marys"
    assert directory.tenant_for_token_hash("a" * 64) == "st-marys"
    assert directory.sender_conflicts("other", [sender("EPIC", "STMARYS")]) == [
        SenderConflict(sender("EPIC", "STMARYS"), "st-marys", sender("EPIC", "STMARYS"))
    ]


def test_directory_keeps_a_summary_of_each_tenant_and_decodes_records_on_demand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tenants_module, "DECODED_RECORDS", 2)
    directory = TenantDirectory()
    stored = {t: record(t, token_digit=d) for t, d in (("t-1", "a"), ("t-2", "b"), ("t-3", "c"))}
    for tenant, tenant_record in stored.items():
        directory.apply(tenant, tenant_record, tenant_record.to_json())

    # Listing every tenant decodes none of them.
    assert [summary.id for summary in directory.summaries()] == ["t-1", "t-2", "t-3"]
    assert directory.summary("t-2") == TenantSummary.of(stored["t-2"])
    created = datetime.fromisoformat(stored["t-2"].created_at).timestamp()
    summary = directory.summary("t-2")
    assert summary is not None and summary.created_at == created
    assert len(directory._decoded) == 0
    # The most recently used records stay decoded, no more than DECODED_RECORDS of them.
    assert [directory.get(tenant) for tenant in stored] == list(stored.values())
    assert list(directory._decoded) == ["t-2", "t-3"]
    assert directory.get("t-2") is directory.get("t-2")
    assert directory.all() == list(stored.values())
    # A change replaces the summary and the decoded record.
    changes = directory.changes
    directory.apply("t-2", None)
    assert (directory.get("t-2"), directory.summary("t-2"), directory.changes) == (
        None,
        None,
        changes + 1,
    )


def test_directory_update_replaces_senders_and_token() -> None:
    directory = TenantDirectory()
    directory.apply("st-marys", record("st-marys", sender("EPIC"), token_digit="a"))

    directory.apply("st-marys", record("st-marys", sender("CERNER"), token_digit="b"))

    assert directory.resolve_sender("EPIC", "", PEER) is None
    assert directory.resolve_sender("CERNER", "", PEER) == "st-marys"
    assert directory.tenant_for_token_hash("a" * 64) is None
    assert directory.tenant_for_token_hash("b" * 64) == "st-marys"
    assert len(directory) == 1


def test_directory_knows_the_pinned_tenants() -> None:
    directory = TenantDirectory()
    pinned = record("st-marys").model_copy(update={"lane": LaneSettings(pinned="dedicated")})
    directory.apply("st-marys", pinned)
    directory.apply("lab42", record("lab42", token_digit="c"))
    assert directory.pinned() == {"st-marys"}

    directory.apply("st-marys", record("st-marys"))  # back to "auto"
    assert directory.pinned() == set()
    directory.apply("lab42", pinned.model_copy(update={"id": "lab42"}))
    directory.apply("lab42", None)
    assert directory.pinned() == set()


def test_tombstone_deletes_everything_about_the_tenant() -> None:
    directory = TenantDirectory()
    directory.apply("st-marys", record("st-marys", sender("EPIC")))
    directory.apply("lab42", record("lab42", sender("LIS"), token_digit="c"))

    directory.apply("st-marys", None)
    directory.apply("never-existed", None)

    assert directory.get("st-marys") is None
    assert directory.resolve_sender("EPIC", "", PEER) is None
    assert directory.tenant_for_token_hash("a" * 64) is None
    assert [r.id for r in directory.all()] == ["lab42"]
    assert directory.resolve_sender("LIS", "", PEER) == "lab42"


def test_record_under_the_wrong_key_is_refused_and_changes_nothing() -> None:
    directory = TenantDirectory()
    directory.apply("st-marys", record("st-marys", sender("EPIC")))

    with pytest.raises(ValueError, match="does not match"):
        directory.apply("st-marys", record("lab42", sender("LIS"), token_digit="c"))

    assert directory.get("st-marys") is not None
    assert directory.resolve_sender("LIS", "", PEER) is None


def _token_hash(number: int) -> str:
    return hashlib.sha256(f"token-{number}".encode()).hexdigest()


def _site(number: int) -> str:
    return f"10.{number // 256}.{number % 256}"


def test_ten_thousand_tenants_resolve_correctly() -> None:
    count = 10_000
    outside = IPv4Address("192.0.2.1")
    directory = TenantDirectory()
    for n in range(count):
        senders = [
            sender(f"APP{n}", f"FAC{n}"),
            sender(facility=f"S{n}", networks=(f"{_site(n)}.0/24",)),
        ]
        directory.apply(f"t{n}", record_with_hash(f"t{n}", senders, _token_hash(n)))

    assert len(directory) == count
    for n in range(count):
        assert directory.resolve_sender(f"APP{n}", f"FAC{n}", None) == f"t{n}"
        assert directory.resolve_sender("ANY", f"S{n}", IPv4Address(f"{_site(n)}.9")) == f"t{n}"
        assert directory.resolve_sender("ANY", f"S{n}", outside) is None
        assert directory.tenant_for_token_hash(_token_hash(n)) == f"t{n}"

    for n in range(0, count, 2):
        directory.apply(f"t{n}", None)

    assert len(directory) == count // 2
    for n in range(count):
        expected = None if n % 2 == 0 else f"t{n}"
        assert directory.resolve_sender(f"APP{n}", f"FAC{n}", None) == expected
        assert directory.tenant_for_token_hash(_token_hash(n)) == expected


# --- Lifecycle: incarnations, retired markers, purge ------------------------------------------

CREATED_MS = int(CREATED.timestamp() * 1000)


def test_every_onboarding_is_a_new_incarnation_and_revisions_keep_it() -> None:
    first = TenantRecord.create(stored_spec(), "a" * 64, CREATED)
    again = TenantRecord.create(stored_spec(), "a" * 64, CREATED)

    revised = first.revise(TenantPatch(name="Renamed").apply(first), UPDATED)

    assert len(first.incarnation) == 32 and first.incarnation != again.incarnation
    assert revised.incarnation == first.incarnation
    assert first.public_view()["incarnation"] == first.incarnation


def test_a_record_stored_before_incarnations_loads_with_none() -> None:
    stored = json.loads(TenantRecord.create(stored_spec(), "a" * 64, CREATED).to_json())
    del stored["incarnation"]

    legacy = stored_from_json(json.dumps(stored).encode())

    assert isinstance(legacy, TenantRecord) and legacy.incarnation == ""


def test_the_incarnation_is_not_an_onboarding_field() -> None:
    with pytest.raises(ValidationError) as exc:
        TenantSpec.model_validate(body(incarnation="0" * 32))

    assert only_error(exc)[0] == ("incarnation",)


def test_ingress_with_an_incarnation_header_belongs_to_that_incarnation_only() -> None:
    tenant = TenantRecord.create(stored_spec(), "a" * 64, CREATED)
    earlier = TenantRecord.create(stored_spec(), "a" * 64, CREATED)

    assert tenant.owns_ingress(tenant.incarnation, CREATED_MS)
    # The header decides, whatever the timestamp says.
    assert not tenant.owns_ingress(earlier.incarnation, CREATED_MS + 60_000)
    assert not tenant.owns_ingress("", CREATED_MS + 60_000)


def test_ingress_without_a_header_belongs_to_the_incarnation_onboarded_before_it() -> None:
    tenant = TenantRecord.create(stored_spec(), "a" * 64, CREATED)

    assert tenant.owns_ingress(None, CREATED_MS)
    assert tenant.owns_ingress(None, CREATED_MS + 1)
    assert not tenant.owns_ingress(None, CREATED_MS - 1)


def test_retiring_keeps_the_id_incarnation_and_times() -> None:
    tenant = TenantRecord.create(stored_spec(), "a" * 64, CREATED)

    retired = tenant.retire(UPDATED)

    assert retired == RetiredTenant(
        id="st-marys",
        incarnation=tenant.incarnation,
        created_at=tenant.created_at,
        retired_at="2024-05-02T09:30:00+00:00",
    )
    assert stored_from_json(retired.to_json()) == retired
    assert stored_from_json(tenant.to_json()) == tenant


@pytest.mark.parametrize(
    "value",
    [b"{}", b'{"id": "st-marys", "retired_at": "x"}', b"[]", b"not json"],
)
def test_a_stored_value_that_is_neither_a_tenant_nor_a_marker_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError):
        stored_from_json(value)


def test_a_retired_tenant_is_unknown_to_ingest_routing_masking_and_tokens() -> None:
    directory = TenantDirectory()
    pinned = record("st-marys", sender("EPIC")).model_copy(
        update={"lane": LaneSettings(pinned="dedicated")}
    )
    directory.apply("st-marys", pinned)
    directory.apply("lab42", record("lab42", sender("LIS"), token_digit="c"))
    retired = pinned.retire(UPDATED)

    directory.apply("st-marys", retired)

    assert directory.get("st-marys") is None
    assert [r.id for r in directory.all()] == ["lab42"] and len(directory) == 1
    assert directory.resolve_sender("EPIC", "", PEER) is None
    assert directory.sender_conflicts("other", [sender("EPIC")]) == []
    assert directory.tenant_for_token_hash("a" * 64) is None
    assert directory.pinned() == set()
    assert directory.retired("st-marys") == retired
    assert directory.all_retired() == [retired]
    assert directory.retired("lab42") is None


def test_a_purge_tombstone_forgets_the_retired_id() -> None:
    directory = TenantDirectory()
    directory.apply("st-marys", record("st-marys").retire(UPDATED))

    directory.apply("st-marys", None)

    assert directory.retired("st-marys") is None and directory.all_retired() == []


def test_an_id_onboarded_again_is_live_and_no_longer_retired() -> None:
    directory = TenantDirectory()
    directory.apply("st-marys", record("st-marys").retire(UPDATED))
    directory.apply("st-marys", None)
    fresh = record("st-marys", sender("EPIC"), token_digit="b")

    directory.apply("st-marys", fresh)

    assert directory.get("st-marys") == fresh
    assert directory.retired("st-marys") is None
    assert directory.tenant_for_token_hash("b" * 64) == "st-marys"


def test_a_marker_under_the_wrong_key_is_refused() -> None:
    directory = TenantDirectory()
    directory.apply("st-marys", record("st-marys"))

    with pytest.raises(ValueError, match="does not match"):
        directory.apply("st-marys", record("lab42").retire(UPDATED))

    assert directory.get("st-marys") is not None and directory.retired("st-marys") is None
