"""Records Laneway writes: the downstream event contract and the DLQ record.

The pydantic models are the contract. Downstream teams read them as JSON from
`laneway.out.<tenant>` and `laneway.dlq.<tenant>`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EVENT_SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngressRef(_Record):
    """Where the original message sits in Kafka: the ingress record and its index in a batch."""

    topic: str
    partition: int
    offset: int
    index: int = Field(0, description="Position of the message inside a batch (FHS/BHS) record.")


class PatientIdentifier(_Record):
    id_number: str
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
    identifiers: list[PatientIdentifier] = Field(default_factory=list)
    name: PersonName = Field(default_factory=PersonName)
    birth_date: str = ""
    sex: str = ""
    address: Address = Field(default_factory=Address)
    phone: str = ""
    ssn: str = ""


class Location(_Record):
    point_of_care: str = ""
    room: str = ""
    bed: str = ""
    facility: str = ""


class Visit(_Record):
    patient_class: str = ""
    location: Location = Field(default_factory=Location)
    visit_number: str = ""
    admit_datetime: str | None = None


class Order(_Record):
    placer_order_number: str = ""
    filler_order_number: str = ""
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
    values: list[str] = Field(default_factory=list)
    units: str = ""
    reference_range: str = ""
    abnormal_flags: str = ""
    status: str = ""
    observed_at: str | None = None


class NormalizedEvent(_Record):
    """One HL7 message, normalized. Keyed by tenant id on `laneway.out.<tenant>`."""

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
    patient: Patient | None = None
    visit: Visit | None = None
    orders: list[Order] = Field(default_factory=list)
    observations: list[Observation] = Field(default_factory=list)
    idempotency_key: str
    ref: str = Field(description="Opaque reference to the original in Kafka; see the fetch API")
    source: IngressRef
    received_at: str = Field(description="Ingress record timestamp, ISO 8601 UTC")


class DlqRecord(_Record):
    """A message Laneway could not process, with the reason and the original bytes."""

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    tenant: str
    control_id: str | None = None
    reason: str = Field(description="Machine-readable code, e.g. missing_msh_10")
    detail: str = Field("", description="Human-readable explanation; never message content")
    idempotency_key: str
    ref: str
    source: IngressRef
    received_at: str
    original_base64: str = Field(description="The rejected message's bytes, base64")
