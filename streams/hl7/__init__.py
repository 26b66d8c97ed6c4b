"""HL7 v2 ER7 fast path: batch splitting, validation and field extraction."""

from streams.hl7.er7 import Delimiters, Hl7Error, escape, split_batch, unescape
from streams.hl7.extract import (
    SUPPORTED_VERSIONS,
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

__all__ = [
    "SUPPORTED_VERSIONS",
    "Address",
    "Delimiters",
    "ExtractedMessage",
    "Hl7Error",
    "Location",
    "Observation",
    "Order",
    "PatientIdentifier",
    "PersonName",
    "Visit",
    "escape",
    "extract",
    "hl7_ts_to_iso",
    "split_batch",
    "unescape",
]
