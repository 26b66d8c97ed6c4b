"""Per-tenant output shaping: thin events and masking of PHI fields. No Kafka, no I/O.

A tenant's `OutputOptions` pick what its events carry (docs/consumers.md is the user's view):

- `mode: thin` keeps only `ThinEvent`'s keys (identifiers, type, times, the reference): no
  patient, visit, orders or observations. The mask list does not matter then.
- `mask` names field groups of a full event, `mask_method` what happens to them:
  - `hash`: a non-empty string becomes `h:` + the first 32 hex characters of
    HMAC-SHA256(tenant key, UTF-8 value), where tenant key = HMAC-SHA256(LANEWAY_MASK_SECRET,
    "laneway-mask:" + tenant id). Equal values give equal hashes within a tenant (consumers can
    still join on them), never across tenants, and change when the secret changes. Empty strings
    stay empty. Without LANEWAY_MASK_SECRET, hashing falls back to drop: an unkeyed hash of an
    SSN or a birth date is reversible by trying every value.
  - `drop`: the value becomes null (an object or list as a whole).
- The groups: `patient_name` (patient.name), `address` (patient.address), `phone`, `ssn`
  (patient.ssn and patient.identifiers entries of type SS; dropped entries leave the list),
  `birth_date`, `free_text` (observations[].values of value type TX, FT, ST; NTE and Z segments
  never reach events) and `identifiers` (patient.identifiers[].id_number, visit.visit_number,
  orders[].placer_order_number / filler_order_number). Name and address are hashed component
  by component; identifiers keep their assigning authority and type.

Shaping runs after `processing.event_document`, only for tenants that configured it; the
document may hold the contract's record dataclasses (the hot path leaves them for orjson) or
dicts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from streams.records import ThinEvent
from streams.tenants import OutputOptions, TenantDirectory

log = logging.getLogger(__name__)

Document = dict[str, Any]
Shaper = Callable[[Document], Document]

HASH_PREFIX = "h:"
HASH_HEX_CHARS = 32  # 128 bits: no collisions in practice, shorter than the full digest
# OBX-2 value types that hold free text rather than a number, code or date.
FREE_TEXT_VALUE_TYPES = frozenset(("TX", "FT", "ST"))
SSN_IDENTIFIER_TYPE = "SS"  # HL7 table 0203: Social Security number

# The keys a thin event keeps, in the contract's order; "mode" is set, not copied.
THIN_KEYS = tuple(key for key in ThinEvent.model_fields if key != "mode")


def tenant_hash_key(secret: bytes, tenant: str) -> bytes:
    """The tenant's own HMAC key, so one value hashes differently in different tenants."""
    return hmac.new(secret, b"laneway-mask:" + tenant.encode(), hashlib.sha256).digest()


def hash_value(tenant_key: bytes, value: str) -> str:
    digest = hmac.new(tenant_key, value.encode(), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest[:HASH_HEX_CHARS]


def thin_event(event: Mapping[str, Any]) -> Document:
    """The event reduced to `ThinEvent`'s keys."""
    thin = {key: event[key] for key in THIN_KEYS}
    thin["mode"] = "thin"
    return thin


def mask_event(
    event: Mapping[str, Any], fields: Collection[str], tenant_key: bytes | None
) -> Document:
    """A copy of the full event with `fields` (mask names) hashed, or dropped if no key.

    The input is not changed.
    """
    conceal = _Concealer(tenant_key)
    masked = dict(event)
    if masked.get("patient") is not None:
        masked["patient"] = _mask_patient(_as_dict(masked["patient"]), fields, conceal)
    if "identifiers" in fields:
        if masked.get("visit") is not None:
            visit = _as_dict(masked["visit"])
            visit["visit_number"] = conceal.value(visit["visit_number"])
            masked["visit"] = visit
        masked["orders"] = [_mask_order_numbers(_as_dict(o), conceal) for o in masked["orders"]]
    if "free_text" in fields:
        masked["observations"] = [_mask_free_text(obx, conceal) for obx in masked["observations"]]
    return masked


class _Concealer:
    """Hashes with the tenant key, or drops (None) when there is no key."""

    __slots__ = ("_key", "drops")

    def __init__(self, tenant_key: bytes | None) -> None:
        self._key = tenant_key
        self.drops = tenant_key is None

    def value(self, value: str | None) -> str | None:
        if self._key is None:
            return None
        return hash_value(self._key, value) if value else value

    def strings(self, values: list[str] | None) -> list[str] | None:
        if self._key is None or values is None:
            return None
        return [hash_value(self._key, value) if value else value for value in values]

    def components(self, value: Any) -> Document | None:
        """An object (name, address) with every component concealed."""
        if self._key is None or value is None:
            return None
        return {name: self.value(component) for name, component in _as_dict(value).items()}


def _mask_patient(patient: Document, fields: Collection[str], conceal: _Concealer) -> Document:
    if "patient_name" in fields:
        patient["name"] = conceal.components(patient["name"])
    if "address" in fields:
        patient["address"] = conceal.components(patient["address"])
    for field in ("phone", "ssn", "birth_date"):
        if field in fields:
            patient[field] = conceal.value(patient[field])
    if patient["identifiers"] is not None:
        patient["identifiers"] = _mask_identifiers(patient["identifiers"], fields, conceal)
    return patient


def _mask_identifiers(
    identifiers: list[Any], fields: Collection[str], conceal: _Concealer
) -> list[Document] | None:
    all_ids = "identifiers" in fields
    ssn = "ssn" in fields
    if not (all_ids or ssn):
        return identifiers
    if all_ids and conceal.drops:
        return None
    masked = []
    for identifier in map(_as_dict, identifiers):
        if all_ids or identifier["identifier_type"] == SSN_IDENTIFIER_TYPE:
            if conceal.drops:  # only an SSN entry gets here under drop: leave it out
                continue
            identifier["id_number"] = conceal.value(identifier["id_number"])
        masked.append(identifier)
    return masked


def _mask_order_numbers(order: Document, conceal: _Concealer) -> Document:
    order["placer_order_number"] = conceal.value(order["placer_order_number"])
    order["filler_order_number"] = conceal.value(order["filler_order_number"])
    return order


def _mask_free_text(observation: Any, conceal: _Concealer) -> Any:
    fields = _as_dict(observation)
    if fields["value_type"] not in FREE_TEXT_VALUE_TYPES:
        return observation
    fields["values"] = conceal.strings(fields["values"])
    return fields


def _as_dict(value: Any) -> Document:
    """A new dict of a nested record: a dict (parsed event) or a record dataclass (hot path)."""
    if isinstance(value, Mapping):
        return dict(value)
    return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}


def shaper_for(options: OutputOptions, tenant: str, secret: bytes | None) -> Shaper | None:
    """How to shape `tenant`'s events; None when they go out as built (full, unmasked)."""
    if options.mode == "thin":
        return thin_event
    if not options.mask:
        return None
    fields = frozenset(options.mask)
    tenant_key = None
    if options.mask_method == "hash":
        if secret is None:
            log.warning("tenant %s: hash masking needs LANEWAY_MASK_SECRET; dropping", tenant)
        else:
            tenant_key = tenant_hash_key(secret, tenant)
    return functools.partial(mask_event, fields=fields, tenant_key=tenant_key)


class OutputShapers:
    """The shaper of each tenant's current options, built once per options version.

    Called once per ingress record, so it must stay a couple of dict lookups. The processor
    never asks for an unknown tenant: their records are parked, never emitted (unmasked).
    """

    __slots__ = ("_cache", "_directory", "_secret")

    def __init__(self, directory: TenantDirectory, secret: bytes | None) -> None:
        self._directory = directory
        self._secret = secret
        self._cache: dict[str, tuple[OutputOptions, Shaper | None]] = {}

    def __call__(self, tenant: str) -> Shaper | None:
        record = self._directory.get(tenant)
        if record is None:
            return None
        options = record.output
        cached = self._cache.get(tenant)
        # A changed config is a new record object, so identity tells a stale entry.
        if cached is not None and cached[0] is options:
            return cached[1]
        shaper = shaper_for(options, tenant, self._secret)
        self._cache[tenant] = (options, shaper)
        return shaper
