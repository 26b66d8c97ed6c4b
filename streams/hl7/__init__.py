"""HL7 v2 ER7 fast path: batch splitting, header reading, validation and field extraction."""

from streams.hl7.er7 import Delimiters, Hl7Error, escape, split_batch, unescape
from streams.hl7.extract import (
    Address,
    ExtractedMessage,
    Location,
    Observation,
    Order,
    PatientIdentifier,
    PersonName,
    Visit,
    extract,
    hl7_ts_to_iso,
)
from streams.hl7.header import (
    SUPPORTED_VERSIONS,
    MessageHeader,
    PartialHeader,
    read_header,
    read_header_lenient,
)

__all__ = [
    "SUPPORTED_VERSIONS",
    "Address",
    "Delimiters",
    "ExtractedMessage",
    "Hl7Error",
    "Location",
    "MessageHeader",
    "Observation",
    "Order",
    "PartialHeader",
    "PatientIdentifier",
    "PersonName",
    "Visit",
    "escape",
    "extract",
    "hl7_ts_to_iso",
    "read_header",
    "read_header_lenient",
    "split_batch",
    "unescape",
]
