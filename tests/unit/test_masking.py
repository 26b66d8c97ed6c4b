"""Per-tenant output shaping: every mask field, both methods, thin events, and the contract."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any, get_args

import orjson
import pytest

from streams.hl7 import extract
from streams.hl7.synthetic import mixed_corpus
from streams.masking import (
    THIN_KEYS,
    OutputShapers,
    hash_value,
    mask_event,
    shaper_for,
    tenant_hash_key,
    thin_event,
)
from streams.processing import IngressRecord, event_document, process_ingress_record
from streams.records import OUTPUT_EVENT, DlqRecord, IngressRef, NormalizedEvent, ThinEvent
from streams.settings import Settings
from streams.tenants import (
    MaskedField,
    OutputOptions,
    TenantDirectory,
    TenantRecord,
    TenantSpec,
)
from streams.topics import TopicNames

SECRET = b"unit-test-secret"
TENANT = "st-marys"
KEY = tenant_hash_key(SECRET, TENANT)
TOPICS = TopicNames()

# Synthetic message with a value in every field a mask covers, and neighbours that must stay.
PV1_FIELDS = ["PV1", "1", "I", "ICU^101^A^SIMHOSP", *[""] * 15, "VN0001"]
MESSAGE = (
    "\r".join(
        [
            "MSH|^~\\&|SIM_LAB|SIM_FACILITY|LANEWAY|HUB|20240102030405||ORU^R01^ORU_R01|CTRL-1|P|2.5",
            "EVN|R01|20240102030000",
            "PID|1||MRN123^^^SIMHOSP^MR~000-12-3456^^^USSSA^SS||TESTPATIENT^ALPHA^Q||19800101|F|||"
            "1 TEST ST^^TESTVILLE^ZZ^00001||555-0100||||||000-12-3456",
            "|".join(PV1_FIELDS),
            "ORC|RE|PLC1",
            "OBR|1|PLC1|FIL1|CBC^BLOOD COUNT^L|||20240102030405",
            "OBX|1|TX|NOTE^NOTE^L||FREE TEXT ONE~FREE TEXT TWO||||||F",
            "OBX|2|FT|NOTE2^NOTE2^L||FORMATTED TEXT||||||F",
            "OBX|3|ST|NOTE3^NOTE3^L||SHORT STRING||||||F",
            "OBX|4|NM|GLU^GLUCOSE^LN||98.6|mg/dL|70-110|N|||F",
            "OBX|5|CE|CULT^CULTURE^L||POS^POSITIVE^L||||||F",
            "NTE|1|L|A COMMENT",
        ]
    ).encode()
    + b"\r"
)

# The paths each mask name changes in MESSAGE's event, by method.
HASHED_PATHS: dict[str, set[str]] = {
    "patient_name": {"patient.name.family", "patient.name.given", "patient.name.middle"},
    "address": {
        "patient.address.street",
        "patient.address.city",
        "patient.address.state",
        "patient.address.postal_code",
    },
    "phone": {"patient.phone"},
    "ssn": {"patient.ssn", "patient.identifiers.1.id_number"},
    "birth_date": {"patient.birth_date"},
    "free_text": {
        "observations.0.values.0",
        "observations.0.values.1",
        "observations.1.values.0",
        "observations.2.values.0",
    },
    "identifiers": {
        "patient.identifiers.0.id_number",
        "patient.identifiers.1.id_number",
        "visit.visit_number",
        "orders.0.placer_order_number",
        "orders.0.filler_order_number",
    },
}
DROPPED_PATHS: dict[str, set[str]] = {
    "patient_name": {"patient.name"},
    "address": {"patient.address"},
    "phone": {"patient.phone"},
    "ssn": {"patient.ssn", "patient.identifiers"},  # the SS entry leaves the list
    "birth_date": {"patient.birth_date"},
    "free_text": {"observations.0.values", "observations.1.values", "observations.2.values"},
    "identifiers": {
        "patient.identifiers",
        "visit.visit_number",
        "orders.0.placer_order_number",
        "orders.0.filler_order_number",
    },
}


def event() -> dict[str, Any]:
    """MESSAGE's event as the hot path builds it (with the codec's dataclasses inside)."""
    ref = IngressRef(topic=TOPICS.ingress, partition=1, offset=7)
    return event_document(extract(MESSAGE), TENANT, ref, "2024-01-02T03:04:05.000+00:00")


def plain(document: dict[str, Any]) -> dict[str, Any]:
    """The document as a consumer reads it: JSON."""
    return orjson.loads(orjson.dumps(document))


def changed_paths(before: Any, after: Any, path: str = "") -> set[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        changed: set[str] = set()
        for key in before.keys() | after.keys():
            changed |= changed_paths(before.get(key), after.get(key), f"{path}{key}.")
        return changed
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        changed = set()
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            changed |= changed_paths(old, new, f"{path}{index}.")
        return changed
    return set() if before == after else {path.rstrip(".")}


def value_at(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def test_the_tests_cover_every_mask_option() -> None:
    assert set(HASHED_PATHS) == set(DROPPED_PATHS) == set(get_args(MaskedField))


@pytest.mark.parametrize("field", get_args(MaskedField))
def test_hash_replaces_exactly_the_fields_values_by_their_keyed_hash(field: str) -> None:
    original = plain(event())

    masked = plain(mask_event(event(), {field}, KEY))

    assert changed_paths(original, masked) == HASHED_PATHS[field]
    for path in HASHED_PATHS[field]:
        assert value_at(masked, path) == hash_value(KEY, value_at(original, path))
        assert value_at(masked, path).startswith("h:")
        assert len(value_at(masked, path)) == 2 + 32


@pytest.mark.parametrize("field", get_args(MaskedField))
def test_drop_nulls_exactly_the_fields_values(field: str) -> None:
    original = plain(event())

    masked = plain(mask_event(event(), {field}, None))

    assert changed_paths(original, masked) == DROPPED_PATHS[field]
    for path in DROPPED_PATHS[field] - {"patient.identifiers"}:
        assert value_at(masked, path) is None


def test_dropping_ssn_keeps_the_other_identifiers_and_dropping_identifiers_removes_all() -> None:
    ssn_only = plain(mask_event(event(), {"ssn"}, None))
    all_ids = plain(mask_event(event(), {"ssn", "identifiers"}, None))

    assert ssn_only["patient"]["identifiers"] == [
        {"id_number": "MRN123", "assigning_authority": "SIMHOSP", "identifier_type": "MR"}
    ]
    assert all_ids["patient"]["identifiers"] is None


def test_hashed_identifiers_keep_authority_and_type_and_an_ssn_is_hashed_once() -> None:
    masked = plain(mask_event(event(), {"ssn", "identifiers"}, KEY))

    ssn_entry = masked["patient"]["identifiers"][1]
    assert ssn_entry["id_number"] == hash_value(KEY, "000-12-3456")
    assert (ssn_entry["assigning_authority"], ssn_entry["identifier_type"]) == ("USSSA", "SS")


def test_one_value_hashes_alike_within_a_tenant_and_differently_across_tenants_and_secrets() -> (
    None
):
    masked = plain(mask_event(event(), {"ssn"}, KEY))
    other_tenant = plain(mask_event(event(), {"ssn"}, tenant_hash_key(SECRET, "northside")))
    other_secret = plain(mask_event(event(), {"ssn"}, tenant_hash_key(b"other", TENANT)))

    # PID-19 and the SS identifier hold the same SSN: consumers can still join on the hash.
    assert masked["patient"]["ssn"] == masked["patient"]["identifiers"][1]["id_number"]
    assert masked == plain(mask_event(event(), {"ssn"}, KEY))  # stable
    assert other_tenant["patient"]["ssn"] != masked["patient"]["ssn"]
    assert other_secret["patient"]["ssn"] != masked["patient"]["ssn"]


def test_hash_is_the_documented_hmac() -> None:
    tenant_key = hmac.new(SECRET, b"laneway-mask:st-marys", hashlib.sha256).digest()
    expected = "h:" + hmac.new(tenant_key, b"555-0100", hashlib.sha256).hexdigest()[:32]

    assert hash_value(KEY, "555-0100") == expected


def test_empty_values_stay_empty_when_hashed() -> None:
    sparse = MESSAGE.replace(b"TESTPATIENT^ALPHA^Q", b"TESTPATIENT^ALPHA").replace(
        b"1 TEST ST^^TESTVILLE", b"1 TEST ST^^"
    )
    document = event_document(extract(sparse), TENANT, IngressRef(TOPICS.ingress, 0, 0), "t")

    masked = plain(mask_event(document, {"patient_name", "address"}, KEY))

    assert masked["patient"]["name"]["middle"] == ""
    assert masked["patient"]["address"]["city"] == ""
    assert masked["patient"]["name"]["given"] == hash_value(KEY, "ALPHA")


def test_masking_works_on_a_parsed_event_too_and_leaves_its_input_alone() -> None:
    parsed = plain(event())
    untouched = copy.deepcopy(parsed)
    every_field = set(get_args(MaskedField))

    masked = mask_event(parsed, every_field, KEY)

    assert parsed == untouched
    assert masked == plain(mask_event(event(), every_field, KEY))


def test_every_field_masked_leaves_no_phi_value_in_the_event() -> None:
    phi = ["TESTPATIENT", "ALPHA", "19800101", "1980-01-01", "555-0100", "000-12-3456"]
    phi += ["MRN123", "1 TEST ST", "TESTVILLE", "VN0001", "PLC1", "FIL1", "FREE TEXT"]

    for tenant_key in (KEY, None):
        serialized = orjson.dumps(mask_event(event(), set(get_args(MaskedField)), tenant_key))
        assert [value for value in phi if value.encode() in serialized] == []


def test_an_event_without_patient_or_visit_is_masked_without_error() -> None:
    without_pid_and_visit = MESSAGE.replace(
        MESSAGE[MESSAGE.index(b"PID") : MESSAGE.index(b"ORC")], b""
    )
    document = event_document(
        extract(without_pid_and_visit), TENANT, IngressRef(TOPICS.ingress, 0, 0), "t"
    )

    masked = plain(mask_event(document, set(get_args(MaskedField)), KEY))

    assert (masked["patient"], masked["visit"]) == (None, None)
    assert masked["orders"][0]["placer_order_number"] == hash_value(KEY, "PLC1")


def test_thin_event_keeps_exactly_the_documented_keys() -> None:
    thin = thin_event(event())

    assert list(thin) == [*THIN_KEYS, "mode"]
    assert set(thin) == {
        "schema_version",
        "mode",
        "tenant",
        "control_id",
        "message_type",
        "message_code",
        "trigger_event",
        "message_structure",
        "version",
        "processing_id",
        "sending_application",
        "sending_facility",
        "receiving_application",
        "receiving_facility",
        "message_datetime",
        "event_datetime",
        "idempotency_key",
        "ref",
        "source",
        "received_at",
    }
    assert thin["mode"] == "thin"
    assert b"TESTPATIENT" not in orjson.dumps(thin)


def options(**fields: Any) -> OutputOptions:
    return OutputOptions.model_validate(fields)


def test_full_unmasked_output_needs_no_shaper_and_thin_wins_over_masks() -> None:
    assert shaper_for(options(), TENANT, SECRET) is None
    assert shaper_for(options(mode="thin", mask=["phone"]), TENANT, SECRET) is thin_event


def test_hash_without_a_secret_drops_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        shaper = shaper_for(options(mask=["phone"], mask_method="hash"), TENANT, None)
    assert shaper is not None
    assert plain(shaper(event()))["patient"]["phone"] is None
    assert "LANEWAY_MASK_SECRET" in caplog.text


def test_mask_secret_is_read_from_the_laneway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANEWAY_MASK_SECRET", "from-env")
    assert Settings().mask_secret_bytes == b"from-env"
    monkeypatch.delenv("LANEWAY_MASK_SECRET")
    monkeypatch.chdir("/")  # no .env there
    assert Settings().mask_secret_bytes is None


def directory_with(tenant: str, output: OutputOptions) -> TenantDirectory:
    directory = TenantDirectory()
    spec = TenantSpec(id=tenant, name=tenant, output=output)
    directory.apply(tenant, TenantRecord.create(spec, "0" * 64, datetime(2024, 1, 1, tzinfo=UTC)))
    return directory


def test_shapers_are_cached_per_tenant_and_follow_config_changes() -> None:
    directory = directory_with(TENANT, options(mask=["phone"]))
    shapers = OutputShapers(directory, SECRET)

    first = shapers(TENANT)
    assert first is not None
    assert shapers(TENANT) is first
    assert shapers("unknown-tenant") is None

    record = directory.get(TENANT)
    assert record is not None
    thin = record.model_copy(update={"output": options(mode="thin")})
    directory.apply(TENANT, record.revise(thin, datetime.now(UTC)))
    assert shapers(TENANT) is thin_event


def ingress(value: bytes, offset: int) -> IngressRecord:
    return IngressRecord(TENANT.encode(), value, TOPICS.ingress, 2, offset, 1_700_000_000_000)


@pytest.mark.parametrize(
    "output",
    [
        options(),
        options(mode="thin"),
        options(mask=list(get_args(MaskedField)), mask_method="hash"),
        options(mask=list(get_args(MaskedField)), mask_method="drop"),
    ],
    ids=["full", "thin", "hash-all", "drop-all"],
)
def test_shaped_events_are_exactly_the_contract(output: OutputOptions) -> None:
    shapers = OutputShapers(directory_with(TENANT, output), SECRET)
    expected_model = ThinEvent if output.mode == "thin" else NormalizedEvent

    for offset, message in enumerate([MESSAGE, *mixed_corpus(seed=21, count=150)]):
        outputs = process_ingress_record(ingress(message, offset), TOPICS, shapers)
        document = json.loads(outputs[0].value)
        parsed = OUTPUT_EVENT.validate_python(document)  # extra="forbid": no unknown keys
        assert type(parsed) is expected_model
        assert parsed.model_dump(mode="json") == document


def test_a_failing_shaper_parks_the_message_instead_of_emitting_it() -> None:
    def broken(_: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("bug")

    outputs = process_ingress_record(ingress(MESSAGE, 0), TOPICS, lambda _tenant: broken)

    assert [output.is_dlq for output in outputs] == [True]
    assert DlqRecord.model_validate_json(outputs[0].value).reason == "internal_error"
