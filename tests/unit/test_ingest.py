"""Ingest decisions on frames and bodies, with a real tenant directory and a fake ingress writer.

No broker: the writer records what would have been written. The wiring over real MLLP and HTTP
is in tests/integration/test_ingest_frames.py. Synthetic data only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest

from agents.ingest.accept import Ingest, IngestResult, Peer
from agents.ingest.mllp import frame_limit
from agents.ingest.writer import IngestUnavailable, IngressWriter
from agents.state.registry import TenantRegistry
from streams.hl7 import Hl7Error
from streams.settings import Settings
from streams.tenants import SenderIdentity, TenantDirectory, TenantRecord, TenantSpec

CREATED = datetime(2024, 1, 1, tzinfo=UTC)
LIMIT = 64 * 1024  # the smallest max_message_bytes settings allow


def msh(application: str, facility: str, control_id: str, acks: str = "") -> bytes:
    """A small ADT; `acks` is MSH-15|MSH-16, e.g. "NE|AL"."""
    header = f"MSH|^~\\&|{application}|{facility}|LANEWAY|HUB|20240101120000||ADT^A01|"
    header += f"{control_id}|P|2.5|||{acks}"
    return f"{header}\rPID|1||MRN1^^^SIM^MR||TEST^ALPHA\r".encode()


@dataclass
class FakeWriter:
    """Records (tenant, payload) per write; refuses from the `fail_from`-th write on."""

    written: list[tuple[str, bytes]] = field(default_factory=list)
    fail_from: int | None = None

    async def write(self, tenant_id: str, payload: bytes) -> tuple[int, int]:
        if self.fail_from is not None and len(self.written) >= self.fail_from:
            raise IngestUnavailable("test: broker away")
        self.written.append((tenant_id, payload))
        return 0, len(self.written) - 1


def tenant(
    tenant_id: str, application: str, *, rate: float = 1000, burst: int = 1000
) -> TenantRecord:
    spec = TenantSpec(
        id=tenant_id,
        name=tenant_id,
        senders=[SenderIdentity(application=application, facility="FAC")],
        rate_per_s=rate,
        burst=burst,
    )
    return TenantRecord.create(spec, hashlib.sha256(tenant_id.encode()).hexdigest(), CREATED)


def make_ingest(
    *tenants: TenantRecord,
    ceiling_factor: float = 2.0,
    states: dict[str, dict[str, object]] | None = None,
) -> tuple[Ingest, FakeWriter]:
    """`states`: the tenant state documents the mirror would hold (none by default)."""
    directory = TenantDirectory()
    for record in tenants:
        directory.apply(record.id, record)
    settings = Settings(max_message_bytes=LIMIT, ingest_ceiling_factor=ceiling_factor)
    registry = SimpleNamespace(directory=directory, app=SimpleNamespace(laneway=settings))
    writer = FakeWriter()
    ingest = Ingest(cast(TenantRegistry, registry), cast(IngressWriter, writer), states or {})
    return ingest, writer


@pytest.fixture(autouse=True)
def no_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rate ceilings must run on monotonic time: a wall-clock step would break them."""

    # Only the module's own `time` is replaced: logging may still stamp records with the wall
    # clock, while a `time.time()` in agents/ingest/accept.py raises AttributeError.
    monkeypatch.setattr("agents.ingest.accept.time", SimpleNamespace(monotonic=time.monotonic))


def outcomes(results: list[IngestResult]) -> list[tuple[str, str | None]]:
    return [(result.control_id, result.reason) for result in results]


async def test_a_frame_of_three_is_written_and_answered_per_message() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A"))
    messages = [msh("A", "FAC", f"M{n}") for n in range(3)]

    results = await ingest.from_mllp(b"".join(messages), Peer())

    assert outcomes(results) == [("M0", None), ("M1", None), ("M2", None)]
    assert writer.written == [("alpha", message) for message in messages]
    codes = [[ack.code for ack in ingest.acks(r, CREATED)] for r in results]
    assert codes == [["AA"], ["AA"], ["AA"]]


async def test_a_frame_mixing_senders_is_refused_whole_and_nothing_is_written() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A"), tenant("beta", "B"))
    frame = msh("A", "FAC", "M0") + msh("B", "FAC", "M1") + msh("A", "FAC", "M2")

    results = await ingest.from_mllp(frame, Peer())

    assert outcomes(results) == [(f"M{n}", "mixed_senders") for n in range(3)]
    assert writer.written == []
    for result in results:
        [ack] = ingest.acks(result, CREATED)
        assert ack.code == "AR" and b"\rERR|" in ack.payload


async def test_a_frame_with_an_unknown_sender_among_known_ones_is_refused_whole() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A"))

    results = await ingest.from_mllp(msh("A", "FAC", "M0") + msh("NOBODY", "X", "M1"), Peer())

    assert outcomes(results) == [("M0", "mixed_senders"), ("M1", "mixed_senders")]
    assert writer.written == []


async def test_after_the_first_refused_message_the_rest_of_the_frame_is_refused() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A"))
    bad = msh("A", "FAC", "M1").replace(b"|2.5|", b"|9.9|")  # unsupported version: AR

    results = await ingest.from_mllp(msh("A", "FAC", "M0") + bad + msh("A", "FAC", "M2"), Peer())

    assert outcomes(results) == [
        ("M0", None),
        ("M1", "unsupported_version"),
        ("M2", "an_earlier_message_was_refused"),
    ]
    assert [payload for _, payload in writer.written] == [msh("A", "FAC", "M0")]


async def test_a_broker_failure_mid_frame_refuses_the_rest() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A"))
    writer.fail_from = 1

    results = await ingest.from_mllp(b"".join(msh("A", "FAC", f"M{n}") for n in range(3)), Peer())

    assert [r.reason for r in results] == [
        None,
        "broker_unavailable",
        "an_earlier_message_was_refused",
    ]


async def test_an_oversize_message_gets_ae_naming_the_limit_and_is_not_written() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A"))
    huge = msh("A", "FAC", "BIG", "ER|AL") + b"OBX|1|TX|NOTE||" + b"X" * LIMIT + b"\r"

    [result] = await ingest.from_mllp(huge, Peer())

    assert (result.control_id, result.reason) == ("BIG", "message_too_large")
    assert writer.written == []
    [ack] = ingest.acks(result, CREATED)  # ER|AL: the refusal is a CE, never a CR/AR
    assert ack.code == "CE"
    assert f"exceeds the {LIMIT}-byte limit".encode() in ack.payload


@pytest.mark.parametrize(
    ("acks", "codes"), [("NE|AL", ["AA"]), ("ER|AL", ["AA"]), ("AL|AL", ["CA", "AA"])]
)
async def test_an_accepted_message_gets_the_acks_msh_15_and_16_ask_for(
    acks: str, codes: list[str]
) -> None:
    ingest, _ = make_ingest(tenant("alpha", "A"))

    [result] = await ingest.from_mllp(msh("A", "FAC", "M0", acks), Peer())

    assert [ack.code for ack in ingest.acks(result, CREATED)] == codes


async def test_the_mllp_ceiling_counts_messages_not_frames() -> None:
    # Ceiling = 2 x contract: 2000/s with a burst of 10. A frame of 10 spends the burst whole.
    ingest, _ = make_ingest(tenant("alpha", "A", burst=5))
    ceiling = ingest._ceiling(ingest.registry.directory.get("alpha"))  # type: ignore[arg-type]

    await ingest.from_mllp(b"".join(msh("A", "FAC", f"M{n}") for n in range(10)), Peer())

    assert ceiling.delay(time.monotonic()) > 0, "a frame of 10 was counted as fewer messages"


async def test_an_http_body_claiming_another_tenant_is_refused_whole() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A"), tenant("beta", "B"))

    results = await ingest.from_http("alpha", msh("A", "FAC", "M0") + msh("B", "FAC", "M1"))

    assert outcomes(results) == [
        ("M0", "body_claims_another_tenant"),
        ("M1", "sender_of_another_tenant"),
    ]
    assert writer.written == []


async def test_the_http_ceiling_refuses_the_rest_of_a_body_once_reached() -> None:
    ingest, writer = make_ingest(tenant("alpha", "A", rate=0.001, burst=1))  # ceiling burst 2

    results = await ingest.from_http("alpha", b"".join(msh("A", "FAC", f"M{n}") for n in range(4)))

    assert [r.reason for r in results] == [
        None,
        None,
        "rate_ceiling",
        "an_earlier_message_was_refused",
    ]
    assert results[2].retry_after_s is not None and results[2].retry_after_s > 0
    assert len(writer.written) == 2


@pytest.mark.parametrize(
    ("deployment_rate", "accepted"),
    [(None, 6), (0.0, 6), (10_000.0, 2)],  # no state, a quiet deployment, others flooding
)
async def test_the_ceiling_is_this_workers_share_of_the_deployments(
    deployment_rate: float | None, accepted: int
) -> None:
    # Contract 1/s, burst 2; ceiling 20/s, burst 40. While other workers send the tenant far
    # above its ceiling (the router's published rate), this one admits the contract: a burst of 2.
    states: dict[str, dict[str, object]] = {}
    if deployment_rate is not None:
        states["alpha"] = {"rates": {"rate_10s": deployment_rate}, "updated_at": 1.0}
    ingest, writer = make_ingest(
        tenant("alpha", "A", rate=1, burst=2), ceiling_factor=20, states=states
    )

    results = await ingest.from_http("alpha", b"".join(msh("A", "FAC", f"M{n}") for n in range(6)))

    assert sum(result.accepted for result in results) == accepted
    assert len(writer.written) == accepted


async def test_an_http_body_that_cannot_be_split_raises() -> None:
    ingest, _ = make_ingest(tenant("alpha", "A"))

    with pytest.raises(Hl7Error):
        await ingest.from_http("alpha", b"PID|1\r")


@pytest.mark.parametrize(
    ("frame_bytes", "message_bytes", "expected"),
    [(8 << 20, 4 << 20, 8 << 20), (1 << 20, 4 << 20, 4 << 20), (4 << 20, 4 << 20, 4 << 20)],
)
def test_the_mllp_frame_limit_always_carries_one_message_of_the_contract(
    frame_bytes: int, message_bytes: int, expected: int
) -> None:
    settings = Settings(mllp_max_frame_bytes=frame_bytes, max_message_bytes=message_bytes)

    assert frame_limit(settings) == expected
