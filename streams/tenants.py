"""Tenant configuration: the admin API's request models, the stored record and the in-memory
directory every worker rebuilds from the compacted tenant topic.

Pure data and logic: no Kafka, no I/O. The registry service feeds `TenantDirectory.apply` with the
topic's records (a tenant, or the `RetiredTenant` marker a DELETE leaves) and tombstones (a
purge); the admin API validates bodies with `TenantSpec`/`TenantPatch` (a pydantic
`ValidationError` names the bad field, e.g. `senders.0.networks.1`).
"""

from __future__ import annotations

import sys
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Annotated, Any, Literal, NamedTuple, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streams.tls import CERT_MISMATCH, CERT_REQUIRED, PeerCertificate, normalize_fingerprint
from streams.topics import is_valid_tenant_id

DEFAULT_RATE_PER_S = 50.0
DEFAULT_BURST = 100

# HL7 v2 default delimiters. A sender value containing one can never equal a parsed MSH-3.1 or
# MSH-4.1 component, so such an identity would silently never match.
_HL7_DELIMITERS = frozenset("|^~\\&")


def _parse_network(value: object) -> object:
    # strict=False accepts "10.1.2.3/24" as 10.1.2.0/24: operators paste host addresses with a
    # prefix length. Only strings are parsed: pydantic would otherwise read 5 as 0.0.0.5/32.
    if isinstance(value, str):
        return ip_network(value, strict=False)
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    raise ValueError("a network must be a CIDR string such as '10.0.0.0/8'")


# Where an MLLP connection came from; None when the listener could not tell (and for HTTP).
Peer = IPv4Address | IPv6Address | None
Network = Annotated[IPv4Network | IPv6Network, BeforeValidator(_parse_network)]
SenderValue = Annotated[str, StringConstraints(max_length=227)]  # HL7 v2 HD data type length
TenantName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
RatePerSecond = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Burst = Annotated[int, Field(ge=1)]
Fingerprint = Annotated[str, AfterValidator(normalize_fingerprint)]
# X.520 ub-common-name: a CN has 1 to 64 characters.
CommonName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MaskedField = Literal[
    "patient_name", "address", "phone", "ssn", "birth_date", "free_text", "identifiers"
]


class _Model(BaseModel):
    # extra="forbid": a misspelt key (e.g. "facilty") must be a 422 naming it, not a silently
    # wider sender identity that could route another hospital's messages to this tenant.
    model_config = ConfigDict(frozen=True, extra="forbid")


class SenderIdentity(_Model):
    """Who a tenant is on MLLP: MSH-3.1 and/or MSH-4.1, optionally limited to source networks.

    An empty string is a wildcard; see `SenderIndex` for the matching rule.
    """

    application: SenderValue = ""
    facility: SenderValue = ""
    networks: list[Network] = Field(default_factory=list)

    @field_validator("application", "facility")
    @classmethod
    def _no_hl7_delimiters(cls, value: str) -> str:
        if _HL7_DELIMITERS.intersection(value):
            raise ValueError("must not contain HL7 delimiters | ^ ~ \\ &")
        return value

    @model_validator(mode="after")
    def _application_or_facility(self) -> Self:
        if not self.application and not self.facility:
            raise ValueError("a sender needs 'application' (MSH-3) or 'facility' (MSH-4) or both")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.application, self.facility)

    def admits(self, peer: Peer) -> bool:
        """True if traffic from `peer` may use this identity (always, when no networks are set)."""
        if not self.networks:
            return True
        if peer is None:  # the listener could not tell where the connection came from
            return False
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d, which no IPv4Network holds.
        if isinstance(peer, IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in network for network in self.networks)


class ClientCertificate(_Model):
    """A client certificate a tenant's MLLP senders may present over TLS: its SHA-256
    fingerprint, its subject CN, or both (then both must match). The CN compares exactly; a
    fingerprint pins one certificate, a CN every certificate the client CA issues under it."""

    fingerprint_sha256: Fingerprint | None = None
    subject_cn: CommonName | None = None

    @model_validator(mode="after")
    def _fingerprint_or_cn(self) -> Self:
        if self.fingerprint_sha256 is None and self.subject_cn is None:
            raise ValueError("a client certificate needs 'fingerprint_sha256' or 'subject_cn'")
        return self

    def matches(self, presented: PeerCertificate) -> bool:
        if self.fingerprint_sha256 is not None and not presented.fingerprint_is(
            self.fingerprint_sha256
        ):
            return False
        return self.subject_cn is None or presented.subject_cn == self.subject_cn


class OutputOptions(_Model):
    mode: Literal["full", "thin"] = "full"
    mask: list[MaskedField] = Field(default_factory=list)
    mask_method: Literal["hash", "drop"] = "hash"


class LaneSettings(_Model):
    """Operator pinning of the tenant's lane; "auto" leaves the choice to the router."""

    pinned: Literal["auto", "shared", "dedicated"] = "auto"
    dedicated_lane: int | None = Field(default=None, ge=0)


def _unique_senders(senders: list[SenderIdentity]) -> list[SenderIdentity]:
    # Two entries with one (application, facility) key would make it ambiguous whose networks
    # apply, and the index keeps one identity per key and tenant.
    seen: set[tuple[str, str]] = set()
    for position, sender in enumerate(senders):
        if sender.key in seen:
            raise ValueError(
                f"sender {position} repeats application={sender.application!r}, "
                f"facility={sender.facility!r}"
            )
        seen.add(sender.key)
    return senders


Senders = Annotated[list[SenderIdentity], AfterValidator(_unique_senders)]


class TenantSpec(_Model):
    """A tenant as the admin API accepts it (POST body)."""

    id: str
    name: TenantName
    senders: Senders = Field(default_factory=list, description="Empty for an HTTP-only tenant.")
    rate_per_s: RatePerSecond = DEFAULT_RATE_PER_S
    burst: Burst = DEFAULT_BURST
    lane: LaneSettings = Field(default_factory=LaneSettings)
    output: OutputOptions = Field(default_factory=OutputOptions)
    paused: bool = False
    client_certs: list[ClientCertificate] = Field(
        default_factory=list,
        description="Certificates its MLLP senders may present (any one); checked only while "
        "'require_client_cert' is true, so they can be set before the sender moves to TLS.",
    )
    require_client_cert: bool = False

    @field_validator("id")
    @classmethod
    def _slug_id(cls, value: str) -> str:
        if not is_valid_tenant_id(value):
            raise ValueError(
                "tenant id must be 1-64 lower-case letters, digits or inner hyphens, "
                "e.g. 'st-marys'"
            )
        return value

    # Checked here rather than in LaneSettings so that a PATCH of {"lane": {"dedicated_lane": 2}}
    # is judged after merging with the stored "pinned", not against its default.
    @field_validator("lane")
    @classmethod
    def _lane_only_when_dedicated(cls, lane: LaneSettings) -> LaneSettings:
        if lane.dedicated_lane is not None and lane.pinned != "dedicated":
            raise ValueError("'dedicated_lane' can only be set when 'pinned' is 'dedicated'")
        return lane

    @field_validator("require_client_cert")
    @classmethod
    def _certificates_when_required(cls, required: bool, info: ValidationInfo) -> bool:
        # "Any certificate the client CA issued" would let one tenant's sender pass as another.
        # A bad 'client_certs' is missing from info.data and already reported on its own.
        if required and info.data.get("client_certs") == []:
            raise ValueError("needs at least one entry in 'client_certs'")
        return required

    def client_cert_refusal(self, presented: PeerCertificate | None) -> str | None:
        """Why an MLLP message of this tenant cannot be accepted over a connection that proved
        `presented` (None: plaintext, or TLS without a verified certificate); None if it can.

        A requirement checked after the MSH-3/MSH-4 identity resolved the tenant: the
        certificate never chooses the tenant, so identities stay the only routing key."""
        if not self.require_client_cert:
            return None
        if presented is None:
            return CERT_REQUIRED
        if any(certificate.matches(presented) for certificate in self.client_certs):
            return None
        return CERT_MISMATCH


class TenantPatch(_Model):
    """A PATCH body: any TenantSpec field except `id` (which never changes).

    Merge semantics: fields absent from the body keep their value; nested objects (`lane`,
    `output`) are merged key by key, so `{"output": {"mode": "thin"}}` keeps the mask list (a
    patch must not silently unmask PHI); lists (`senders`, `mask`, `client_certs`) are replaced
    whole. `null` is a value, so it is a 422 for every field that is not nullable.
    """

    name: TenantName | None = None
    senders: Senders | None = None
    rate_per_s: RatePerSecond | None = None
    burst: Burst | None = None
    lane: LaneSettings | None = None
    output: OutputOptions | None = None
    paused: bool | None = None
    client_certs: list[ClientCertificate] | None = None
    require_client_cert: bool | None = None

    def apply(self, spec: TenantSpec) -> TenantSpec:
        """The spec with this patch applied, re-validated (cross-field rules included)."""
        # exclude_unset recurses into nested models, so only keys present in the body survive.
        changes = self.model_dump(exclude_unset=True)
        return TenantSpec.model_validate(_merge(_spec_fields(spec), changes))


def _spec_fields(spec: TenantSpec) -> dict[str, Any]:
    # `include` drops the record-only fields when a TenantRecord is passed as a spec.
    return spec.model_dump(include=set(TenantSpec.model_fields))


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# An incarnation id: uuid4 hex; "" for a record stored before incarnations existed.
Incarnation = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{32})?$")]


class TenantRecord(TenantSpec):
    """A tenant as stored in the compacted tenant topic (keyed by tenant id)."""

    # The pattern refuses a raw token stored by mistake: only a SHA-256 hex digest fits.
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)
    created_at: str
    updated_at: str
    version: int = Field(ge=1)
    # Which onboarding of this id the record is: new at every POST, kept by every revision.
    # Ingress records carry it in a header, so that an id purged and onboarded again never
    # gets an earlier tenant's originals (`owns_ingress`).
    incarnation: Incarnation = ""

    @classmethod
    def create(cls, spec: TenantSpec, token_sha256: str, now: datetime) -> TenantRecord:
        stamp = now.isoformat()
        return cls(
            **_spec_fields(spec),
            token_sha256=token_sha256,
            created_at=stamp,
            updated_at=stamp,
            version=1,
            incarnation=uuid.uuid4().hex,
        )

    def revise(self, spec: TenantSpec, now: datetime) -> TenantRecord:
        """The next version of this record carrying `spec` (same id, token, creation time and
        incarnation)."""
        if spec.id != self.id:
            raise ValueError(f"cannot revise tenant {self.id!r} with the spec of {spec.id!r}")
        return TenantRecord(
            **_spec_fields(spec),
            token_sha256=self.token_sha256,
            created_at=self.created_at,
            updated_at=now.isoformat(),
            version=self.version + 1,
            incarnation=self.incarnation,
        )

    def retire(self, now: datetime) -> RetiredTenant:
        """The marker that replaces this record when the tenant is deleted."""
        return RetiredTenant(
            id=self.id,
            incarnation=self.incarnation,
            created_at=self.created_at,
            retired_at=now.isoformat(),
        )

    def owns_ingress(self, incarnation: str | None, timestamp_ms: int) -> bool:
        """True if an ingress record keyed by this tenant's id belongs to this incarnation.

        `incarnation` is the record's incarnation header, None when it has none. A header must
        equal this incarnation. A record without one (written by another producer, or before
        incarnations existed) belongs to it if it was written since this tenant was onboarded:
        an earlier tenant of this id was deleted, and so stopped writing, before this one was
        created. (Fetch-by-ref, which can name any retained record, applies this rule; the
        processor, which sees records as they arrive, compares headers only: a record another
        producer wrote with a clock running behind is never parked.)
        """
        if incarnation is not None:
            return incarnation == self.incarnation
        created_ms = int(datetime.fromisoformat(self.created_at).timestamp() * 1000)
        return timestamp_ms >= created_ms

    def public_view(self) -> dict[str, Any]:
        """What GET returns: everything but the token hash, JSON-ready."""
        return self.model_dump(mode="json", exclude={"token_sha256"})

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes) -> TenantRecord:
        return cls.model_validate_json(data)


class RetiredTenant(_Model):
    """What a deleted tenant leaves in the tenant topic until it is purged.

    The id is no tenant for ingest, routing, masking or tokens, and it cannot be onboarded again:
    the old tenant's topics still hold its events, which a new tenant of the same id would
    inherit. A purge deletes those topics and then the marker.
    """

    id: str
    incarnation: Incarnation
    created_at: str
    retired_at: str

    def public_view(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# A tenant record and a marker share no required field set (and both forbid extra keys), so a
# stored value validates as exactly one of them.
_STORED = TypeAdapter(TenantRecord | RetiredTenant)


def stored_from_json(data: bytes) -> TenantRecord | RetiredTenant:
    """A value of the tenant topic; pydantic's ValidationError (a ValueError) if it is neither."""
    return _STORED.validate_json(data)


_SenderKey = tuple[str, str]
_Claim = tuple[str, SenderIdentity]  # (tenant id, the identity that tenant configured)


def _values_overlap(one: str, other: str) -> bool:
    # "" is a wildcard: it shares every value with any identity.
    return not one or not other or one == other


def _networks_overlap(one: SenderIdentity, other: SenderIdentity) -> bool:
    if not one.networks or not other.networks:  # no networks: every peer (and no peer at all)
        return True
    # `admits` maps IPv4-mapped peers to IPv4, so networks of different versions share no peer.
    return any(
        a.version == b.version and a.overlaps(b) for a in one.networks for b in other.networks
    )


def identities_overlap(one: SenderIdentity, other: SenderIdentity) -> bool:
    """True if one message (MSH-3.1, MSH-4.1, peer address) could match both identities.

    Pair (X, F) vs pair (X, F), vs application-only X or vs facility-only F overlap; so do
    application-only X and facility-only F (a message from X at F matches both). Identities
    overlap only if their networks share an address too: two identities restricted to disjoint
    networks never see the same peer.
    """
    return (
        _values_overlap(one.application, other.application)
        and _values_overlap(one.facility, other.facility)
        and _networks_overlap(one, other)
    )


class SenderConflict(NamedTuple):
    """`identity` (being registered) overlaps `claimed`, which belongs to tenant `owner`."""

    identity: SenderIdentity
    owner: str
    claimed: SenderIdentity


class SenderIndex:
    """Maps an MLLP sender (MSH-3.1, MSH-4.1, peer address) to a tenant id in O(1).

    Matching rule:
    - An identity matches a message when its values match and it admits the peer: one with both
      application and facility matches only that exact pair, one with only an application any
      facility, one with only a facility any application; if it lists networks, the peer must be
      inside one of them.
    - The message belongs to the tenant whose identities match it. Several identities of ONE
      tenant may match (a pair and its application-only wildcard): the tenant is the same
      whichever is taken.
    - Identities of two tenants never overlap (`conflicts`, the admin API's 409). If they both
      match anyway (two workers accepted overlapping identities at the same moment), the message
      matches nobody until one of them changes: every worker reaches the same answer whatever
      order it read the records in, and no tenant receives another's messages.
    - Strings compare exactly and case-sensitively: HL7 values are case-sensitive, and folding
      case could merge two distinct senders.
    """

    __slots__ = ("_claims", "_keys_by_tenant", "_keys_of_value")

    def __init__(self) -> None:
        # Nearly every key has exactly one claim; a tuple keeps that case small.
        self._claims: dict[_SenderKey, tuple[_Claim, ...]] = {}
        self._keys_by_tenant: dict[str, tuple[_SenderKey, ...]] = {}
        # For `conflicts`: the claimed keys by (position, value); position 0 is the application,
        # 1 the facility, and value "" gathers the wildcards (all facility-only keys are under
        # (0, ""), all application-only ones under (1, "")).
        self._keys_of_value: dict[tuple[int, str], set[_SenderKey]] = {}

    def __len__(self) -> int:
        return len(self._claims)

    def resolve(self, application: str, facility: str, peer: Peer) -> str | None:
        found: str | None = None
        for key in ((application, facility), (application, ""), ("", facility)):
            for tenant_id, identity in self._claims.get(key, ()):
                if not identity.admits(peer):
                    continue
                if found is not None and found != tenant_id:
                    return None  # two tenants match: refuse rather than pick one
                found = tenant_id
        return found

    def conflicts(self, tenant_id: str, senders: Iterable[SenderIdentity]) -> list[SenderConflict]:
        """Each pair of an identity in `senders` and an overlapping one of another tenant.

        A pair looks up three keys; an application-only identity is compared with every
        facility-only one (and the other way round), since those overlap whatever their values.
        """
        return [
            SenderConflict(sender, owner, claimed)
            for sender in senders
            for key in sorted(self._candidate_keys(sender))
            for owner, claimed in self._claims[key]
            if owner != tenant_id and identities_overlap(sender, claimed)
        ]

    def _candidate_keys(self, sender: SenderIdentity) -> set[_SenderKey]:
        """The claimed keys whose values can share a message with `sender` (networks aside)."""
        application, facility = sender.key
        if application and facility:
            keys = ((application, facility), (application, ""), ("", facility))
            return {key for key in keys if key in self._claims}
        empty: set[_SenderKey] = set()
        if application:  # any facility: its own application's keys and every facility-only one
            return self._keys_of_value.get((0, application), empty) | self._keys_of_value.get(
                (0, ""), empty
            )
        return self._keys_of_value.get((1, facility), empty) | self._keys_of_value.get(
            (1, ""), empty
        )

    def put(self, tenant_id: str, senders: Sequence[SenderIdentity]) -> None:
        """Make `senders` the tenant's complete set of identities (stale keys are dropped)."""
        self.remove(tenant_id)
        if not senders:
            return
        for sender in senders:
            self._claims[sender.key] = (*self._claims.get(sender.key, ()), (tenant_id, sender))
            for position, value in enumerate(sender.key):
                self._keys_of_value.setdefault((position, value), set()).add(sender.key)
        self._keys_by_tenant[tenant_id] = tuple(sender.key for sender in senders)

    def remove(self, tenant_id: str) -> None:
        for key in self._keys_by_tenant.pop(tenant_id, ()):
            remaining = tuple(claim for claim in self._claims[key] if claim[0] != tenant_id)
            if remaining:
                self._claims[key] = remaining
                continue
            del self._claims[key]
            for position, value in enumerate(key):
                keys = self._keys_of_value[(position, value)]
                keys.discard(key)
                if not keys:
                    del self._keys_of_value[(position, value)]


@dataclass(frozen=True, slots=True)
class TenantSummary:
    """What a listing of every tenant needs (stats, the Kafka probe), without the whole record."""

    id: str
    name: str
    paused: bool
    rate_per_s: float
    pinned: str  # the record's `lane.pinned`
    created_at: float  # epoch seconds

    @classmethod
    def of(cls, record: TenantRecord) -> TenantSummary:
        return cls(
            id=record.id,
            name=record.name,
            paused=record.paused,
            rate_per_s=record.rate_per_s,
            pinned=sys.intern(record.lane.pinned),
            created_at=datetime.fromisoformat(record.created_at).timestamp(),
        )


# Decoded records a directory keeps (the most recently used): every tenant that sends is read on
# each of its messages, while a pydantic record costs ~2.7 KB and decoding one ~50 µs.
DECODED_RECORDS = 4096


class TenantDirectory:
    """Every tenant a worker knows, rebuilt from the compacted tenant topic.

    Also indexes senders (MLLP routing) and token hashes (which tenant a bearer token belongs to,
    so a valid token of another tenant can be told apart from an invalid one). Retired ids are
    kept apart: `get`, `all`, senders and tokens know only live tenants, so a retired tenant is
    unknown to ingest, routing and masking alike.

    Compact: each tenant is held as its record's JSON and a `TenantSummary` (~1 KB together,
    a third of a pydantic record); `get` decodes a record on first use and keeps the
    `DECODED_RECORDS` most recently used, so idle tenants cost no decoded record.
    """

    __slots__ = (
        "_decoded",
        "_pinned",
        "_retired",
        "_senders",
        "_stored",
        "_summaries",
        "_tenant_by_token",
        "changes",
    )

    def __init__(self) -> None:
        self._stored: dict[str, bytes] = {}  # tenant id -> its record as JSON
        self._summaries: dict[str, TenantSummary] = {}
        self._decoded: OrderedDict[str, TenantRecord] = OrderedDict()  # least recent first
        self._retired: dict[str, RetiredTenant] = {}
        self._senders = SenderIndex()
        self._tenant_by_token: dict[str, str] = {}
        self._pinned: set[str] = set()
        self.changes = 0  # records applied: what was derived from the directory may be stale

    def __len__(self) -> int:
        return len(self._stored)

    def apply(
        self, tenant_id: str, record: TenantRecord | RetiredTenant | None, raw: bytes | None = None
    ) -> None:
        """Apply one topic record: a tenant's latest version, its retired marker (deleted), or
        None for a tombstone (purged, or deleted before markers existed). `raw`: the record's
        JSON as read, if at hand (else it is encoded again).

        Raises ValueError if the record's id differs from its key: such a record cannot be trusted
        and is left to the caller to report.
        """
        if record is not None and record.id != tenant_id:
            raise ValueError(f"record key {tenant_id!r} does not match its id {record.id!r}")
        self.changes += 1
        previous = self.get(tenant_id)  # decoded only when a tenant changes: seldom
        if previous is not None:
            del self._stored[tenant_id], self._summaries[tenant_id]
            if self._tenant_by_token.get(previous.token_sha256) == tenant_id:
                del self._tenant_by_token[previous.token_sha256]
        self._decoded.pop(tenant_id, None)
        self._pinned.discard(tenant_id)
        self._retired.pop(tenant_id, None)
        if not isinstance(record, TenantRecord):
            self._senders.remove(tenant_id)
            if record is not None:
                self._retired[tenant_id] = record
            return
        tenant_id = record.id  # one string object for the id in every index
        self._stored[tenant_id] = record.to_json() if raw is None else raw
        self._summaries[tenant_id] = TenantSummary.of(record)
        self._tenant_by_token[record.token_sha256] = tenant_id
        self._senders.put(tenant_id, record.senders)
        if record.lane.pinned != "auto":
            self._pinned.add(tenant_id)

    def get(self, tenant_id: str) -> TenantRecord | None:
        """The live tenant of this id; None if there is none (unknown, or retired)."""
        record = self._decoded.get(tenant_id)
        if record is not None:
            self._decoded.move_to_end(tenant_id)
            return record
        stored = self._stored.get(tenant_id)
        if stored is None:
            return None
        record = TenantRecord.from_json(stored)
        self._decoded[tenant_id] = record
        if len(self._decoded) > DECODED_RECORDS:
            self._decoded.popitem(last=False)
        return record

    def summary(self, tenant_id: str) -> TenantSummary | None:
        """The live tenant's summary; None if there is none."""
        return self._summaries.get(tenant_id)

    def summaries(self) -> list[TenantSummary]:
        """Every live tenant's summary: what listing them all needs, decoding none."""
        return list(self._summaries.values())

    def all(self) -> list[TenantRecord]:
        """Every live tenant's record; those not in use are decoded for the call only."""
        return [
            self._decoded.get(tenant_id) or TenantRecord.from_json(stored)
            for tenant_id, stored in self._stored.items()
        ]

    def retired(self, tenant_id: str) -> RetiredTenant | None:
        """The marker of a deleted tenant whose id has not been purged yet."""
        return self._retired.get(tenant_id)

    def all_retired(self) -> list[RetiredTenant]:
        return list(self._retired.values())

    def pinned(self) -> set[str]:
        """Tenants an operator pinned to a lane (to shared or to a dedicated one)."""
        return set(self._pinned)

    def resolve_sender(self, application: str, facility: str, peer: Peer) -> str | None:
        """The tenant id for an MLLP message; see `SenderIndex` for the rule."""
        return self._senders.resolve(application, facility, peer)

    def sender_conflicts(
        self, tenant_id: str, senders: Iterable[SenderIdentity]
    ) -> list[SenderConflict]:
        """Identities overlapping one of another tenant (the admin API answers 409)."""
        return self._senders.conflicts(tenant_id, senders)

    def tenant_for_token_hash(self, token_sha256: str) -> str | None:
        return self._tenant_by_token.get(token_sha256)
