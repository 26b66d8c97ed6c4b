"""HL7 v2 ER7 fast path: batch splitting, header reading, validation and field extraction."""

from streams.hl7.er7 import Delimiters, Hl7Error, escape, split_batch, unescape
from streams.hl7.extract import ExtractedMessage, extract, hl7_ts_to_iso
from streams.hl7.header import (
    SUPPORTED_VERSIONS,
    MessageHeader,
    PartialHeader,
    read_header,
    read_header_lenient,
)

__all__ = [
    "SUPPORTED_VERSIONS",
    "Delimiters",
    "ExtractedMessage",
    "Hl7Error",
    "MessageHeader",
    "PartialHeader",
    "escape",
    "extract",
    "hl7_ts_to_iso",
    "read_header",
    "read_header_lenient",
    "split_batch",
    "unescape",
]
