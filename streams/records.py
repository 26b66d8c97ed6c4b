"""Records Laneway writes: the downstream event contract and the DLQ record.

These records are the contract, each defined once here; the HL7 codec and the processing hot
path build the nested ones (`IngressRef`, patient, visit, order, observation parts) directly.
Downstream teams read them as JSON from `laneway.out.<tenant>` (an `OutputEvent`: a full
`NormalizedEvent` or a `ThinEvent`, told apart by `mode`) and `laneway.dlq.<tenant>` (a
`DlqRecord`). Their JSON Schemas are checked in under `docs/`; regenerate them with
`python scripts/gen_schema.py` (a unit test fails on drift).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

EVENT_SCHEMA_VERSION: Final = 1  # Final: its type is Literal[1], as the models declare
# On an ingress record: the incarnation (`TenantRecord.incarnation`) of the tenant it was written
# for, ASCII. Fetch-by-ref compares it with the asking tenant's.
HEADER_INCARNATION = "laneway-incarnation"
_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Per-tenant masking (streams/masking.py) replaces a value by "h:" + 32 hex characters (hash)
# or by null (drop); the fields it may touch say so in their schema description.
_MASKABLE = "Null if the tenant's masking drops it; `h:` + 32 hex characters if it hashes it."


# One configuration for every record: frozen, no unknown keys, and serialization-mode schemas
# that list every field as required (every key is always written).
_CONFIG = ConfigDict(frozen=True, extra="forbid", json_schema_serialization_defaults_required=True)


class _Record(BaseModel):
    model_config = _CONFIG


# The records below are slotted dataclasses rather than pydantic models: the HL7 codec
# (streams/hl7/extract.py) and the processing hot path build them for every message, which a
# dataclass does several times faster, and orjson writes them without a conversion. Pydantic
# validates them and derives their schema inside the models that hold them, with `_CONFIG`.


@dataclass(frozen=True, slots=True)
class IngressRef:
    """Where the original message sits in Kafka: the ingress record and its index in a batch."""

    __pydantic_config__ = _CONFIG

    topic: str
    partition: int
    offset: int
    index: Annotated[
        int, Field(description="Position of the message inside a batch (FHS/BHS) record.")
    ] = 0

    def to_ref(self) -> str:
        """The opaque `ref` string that the on-demand fetch accepts."""
        return f"{self.partition}-{self.offset}-{self.index}"

    def idempotency_key(self, tenant: str, control_id: str) -> str:
        """Same for every redelivery of one ingress message, so consumers can drop duplicates."""
        return f"{tenant}:{control_id}:{self.partition}-{self.offset}-{self.index}"


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    __pydantic_config__ = _CONFIG

    id_number: Annotated[
        str, Field(description="CX.1; `h:` + 32 hex characters if masking hashes it")
    ]
    assigning_authority: str = ""  # CX.4.1
    identifier_type: str = ""  # CX.5


@dataclass(frozen=True, slots=True)
class PersonName:
    __pydantic_config__ = _CONFIG

    family: str = ""  # XPN.1.1
    given: str = ""  # XPN.2
    middle: str = ""  # XPN.3


@dataclass(frozen=True, slots=True)
class Address:
    __pydantic_config__ = _CONFIG

    street: str = ""  # XAD.1.1
    city: str = ""  # XAD.3
    state: str = ""  # XAD.4
    postal_code: str = ""  # XAD.5


@dataclass(frozen=True, slots=True)
class Location:
    __pydantic_config__ = _CONFIG

    point_of_care: str = ""  # PL.1
    room: str = ""  # PL.2
    bed: str = ""  # PL.3
    facility: str = ""  # PL.4.1


@dataclass(frozen=True, slots=True)
class Visit:
    __pydantic_config__ = _CONFIG

    patient_class: str = ""  # PV1-2
    location: Location = field(default_factory=Location)  # PV1-3
    visit_number: Annotated[str | None, Field(description=_MASKABLE)] = ""  # PV1-19.1
    admit_datetime: str | None = None  # PV1-44.1 as ISO 8601


@dataclass(frozen=True, slots=True)
class Order:
    __pydantic_config__ = _CONFIG

    # OBR-2.1, else ORC-2.1 of the nearest preceding ORC
    placer_order_number: Annotated[str | None, Field(description=_MASKABLE)] = ""
    filler_order_number: Annotated[str | None, Field(description=_MASKABLE)] = ""  # OBR-3.1
    service_code: str = ""  # OBR-4.1
    service_text: str = ""  # OBR-4.2
    observation_datetime: str | None = None  # OBR-7.1 as ISO 8601
    result_status: str = ""  # OBR-25


@dataclass(frozen=True, slots=True)
class Observation:
    __pydantic_config__ = _CONFIG

    set_id: str = ""  # OBX-1
    value_type: str = ""  # OBX-2
    code: str = ""  # OBX-3.1
    text: str = ""  # OBX-3.2
    coding_system: str = ""  # OBX-3.3
    sub_id: str = ""  # OBX-4
    # One entry per OBX-5 repetition. Each component and subcomponent is unescaped, then they are
    # re-joined with "^" and "&" whatever the message delimiters were, so a CE/CWE value reads
    # "CODE^TEXT^SYSTEM". A literal "^" or "&" in the data is then indistinguishable from a
    # separator; consumers that need the structure of coded values must not re-split blindly.
    values: Annotated[
        list[str] | None,
        Field(description="OBX-5 repetitions. For free text (value type TX, FT, ST): " + _MASKABLE),
    ] = field(default_factory=list)
    units: str = ""  # OBX-6.1
    reference_range: str = ""  # OBX-7
    abnormal_flags: str = ""  # OBX-8, first repetition
    status: str = ""  # OBX-11
    observed_at: str | None = None  # OBX-14.1 as ISO 8601


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
