"""Records Laneway writes: the downstream event contract and the DLQ record.

The pydantic models are the contract. Downstream teams read them as JSON from
`laneway.out.<tenant>` (an `OutputEvent`: a full `NormalizedEvent` or a `ThinEvent`, told apart
by `mode`) and `laneway.dlq.<tenant>` (a `DlqRecord`). Their JSON Schemas are checked in under
`docs/`; regenerate them with `python scripts/gen_schema.py` (a unit test fails on drift).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

EVENT_SCHEMA_VERSION = 1
# On an ingress record: the incarnation (`TenantRecord.incarnation`) of the tenant it was written
# for, ASCII. Fetch-by-ref compares it with the asking tenant's.
HEADER_INCARNATION = "laneway-incarnation"
_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Per-tenant masking (streams/masking.py) replaces a value by "h:" + 32 hex characters (hash)
# or by null (drop); the fields it may touch say so in their schema description.
_MASKABLE = "Null if the tenant's masking drops it; `h:` + 32 hex characters if it hashes it."


class _Record(BaseModel):
    # Serialization-mode schemas then list every field as required: every key is always written.
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )


class IngressRef(_Record):
    """Where the original message sits in Kafka: the ingress record and its index in a batch."""

    topic: str
    partition: int
    offset: int
    index: int = Field(0, description="Position of the message inside a batch (FHS/BHS) record.")


class PatientIdentifier(_Record):
    id_number: str = Field(description="CX.1; `h:` + 32 hex characters if masking hashes it")
    assigning_authority: str = ""
    identifier_type: str = ""


class PersonName(_Record):
    family: str = ""
    given: str = ""
    middle: str = ""


class Address(_Record):
    street: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""


class Patient(_Record):
    """PID. A hashed name or address has each non-empty component hashed."""

    identifiers: list[PatientIdentifier] | None = Field(
        default_factory=list,
        description="PID-3. Null if identifiers are dropped; SSN entries (type SS) are removed "
        "when only `ssn` is dropped.",
    )
    name: PersonName | None = Field(default_factory=PersonName, description=_MASKABLE)
    birth_date: str | None = Field("", description=_MASKABLE)
    sex: str = ""
    address: Address | None = Field(default_factory=Address, description=_MASKABLE)
    phone: str | None = Field("", description=_MASKABLE)
    ssn: str | None = Field("", description=_MASKABLE)


class Location(_Record):
    point_of_care: str = ""
    room: str = ""
    bed: str = ""
    facility: str = ""


class Visit(_Record):
    patient_class: str = ""
    location: Location = Field(default_factory=Location)
    visit_number: str | None = Field("", description=_MASKABLE)
    admit_datetime: str | None = None


class Order(_Record):
    placer_order_number: str | None = Field("", description=_MASKABLE)
    filler_order_number: str | None = Field("", description=_MASKABLE)
    service_code: str = ""
    service_text: str = ""
    observation_datetime: str | None = None
    result_status: str = ""


class Observation(_Record):
    set_id: str = ""
    value_type: str = ""
    code: str = ""
    text: str = ""
    coding_system: str = ""
    sub_id: str = ""
    values: list[str] | None = Field(
        default_factory=list,
        description="OBX-5 repetitions. For free text (value type TX, FT, ST): " + _MASKABLE,
    )
    units: str = ""
    reference_range: str = ""
    abnormal_flags: str = ""
    status: str = ""
    observed_at: str | None = None


class _EventCore(_Record):
    """What every event carries, thin or full: identifiers, type, times and the reference."""

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    tenant: str
    control_id: str = Field(description="MSH-10")
    message_type: str = Field(description="MSH-9.1^MSH-9.2, e.g. ADT^A01")
    message_code: str
    trigger_event: str
    message_structure: str = ""
    version: str = Field(description="MSH-12")
    processing_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_datetime: str | None = Field(None, description="MSH-7 as ISO 8601")
    event_datetime: str | None = Field(None, description="EVN-2, else MSH-7, as ISO 8601")
    idempotency_key: str = Field(description="Same on every redelivery: drop duplicates by it")
    ref: str = Field(description="Opaque reference to the original in Kafka; see the fetch API")
    source: IngressRef
    received_at: str = Field(description="Ingress record timestamp, ISO 8601 UTC")


class NormalizedEvent(_EventCore):
    """One HL7 message, normalized. Keyed by tenant id on `laneway.out.<tenant>`."""

    mode: Literal["full"] = "full"
    patient: Patient | None = None
    visit: Visit | None = None
    orders: list[Order] = Field(default_factory=list)
    observations: list[Observation] = Field(default_factory=list)


class ThinEvent(_EventCore):
    """A tenant's event in thin mode: no PHI section; fetch the original by `ref` when needed."""

    mode: Literal["thin"] = "thin"


OutputEvent = Annotated[NormalizedEvent | ThinEvent, Field(discriminator="mode")]
OUTPUT_EVENT = TypeAdapter(OutputEvent)


class DlqRecord(_Record):
    """A message Laneway could not process, with the reason and the original bytes.

    When the original would make the record larger than the size contract allows (see
    docs/limits.md), or when Kafka refused to carry the output, the record is written *by
    reference*: `original_base64` is null, and `ref`, `size` and `sha256` identify the original,
    which the fetch API returns from ingress.
    """

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    tenant: str
    control_id: str | None = None
    reason: str = Field(description="Machine-readable code, e.g. missing_msh_10")
    detail: str = Field("", description="Human-readable explanation; never message content")
    idempotency_key: str
    ref: str
    source: IngressRef
    received_at: str
    size: int = Field(description="Length of the original message in bytes")
    sha256: str = Field(description="SHA-256 of the original message, 64 lower-case hex digits")
    original_base64: str | None = Field(
        description="The rejected message's bytes, base64; null when the record is by reference: "
        "fetch the original by `ref` (GET /api/tenants/{tenant}/messages/{ref})"
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    """The published JSON Schemas (serialization mode: what consumers read) by file name."""
    event = OUTPUT_EVENT.json_schema(mode="serialization")
    event["title"] = "Laneway output event"
    event["description"] = (
        f"Schema version {EVENT_SCHEMA_VERSION}. A record on laneway.out.<tenant>: a full "
        "NormalizedEvent or, for tenants in thin mode, a ThinEvent; `mode` tells them apart."
    )
    return {
        "event-schema.json": {"$schema": _JSON_SCHEMA_DIALECT, **event},
        "dlq-schema.json": {
            "$schema": _JSON_SCHEMA_DIALECT,
            **DlqRecord.model_json_schema(mode="serialization"),
        },
    }
