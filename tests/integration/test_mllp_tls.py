"""MLLP over TLS on the real worker and broker, with real handshakes and certificates made for
the test (tests/unit/test_tls.py `Pki`: a CA, a server certificate for 127.0.0.1, clients
"lab-a" and "lab-b", and a rogue CA's "lab-a").

Workers of their own: plaintext and TLS side by side (the tests' default), and TLS only. Each
test keeps a well-behaved tenant streaming over HTTP on the same ingress partition as the tenant
under test, and checks it kept streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streams.topics import TopicNames
from tests.harness import (
    ACK_TIMEOUT_S,
    READ_BYTES,
    Ack,
    Api,
    MllpClient,
    Sender,
    WorkerProcess,
    consume_until,
    free_port,
    message,
    own_worker_env,
)
from tests.harness.quiet_tenant import QuietTenant, quiet_tenant
from tests.integration.test_containment import partition_of, tenant_on
from tests.integration.test_mllp import listener_failures
from tests.unit.test_tls import Pki

pytestmark = pytest.mark.integration

ARRIVAL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


def tls_worker_env(worker_env: dict, pki: Pki, base: Path, name: str) -> dict[str, str]:
    """A worker of its own (app id, topics under the session's, so its clean-up removes them)
    with TLS on a port of its own and client certificates verified against the test CA."""
    return own_worker_env(
        worker_env,
        name,
        base / "data",
        mllp_tls_port=str(free_port()),
        mllp_tls_cert_file=str(pki.server[0]),
        mllp_tls_key_file=str(pki.server[1]),
        mllp_tls_client_ca_file=str(pki.ca),
        lanes_enabled="false",
    )


@pytest.fixture(scope="module")
def tls_worker(
    worker_env: dict, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """Plaintext on LANEWAY_MLLP_PORT and TLS on LANEWAY_MLLP_TLS_PORT."""
    base = tmp_path_factory.mktemp("tls-worker")
    with WorkerProcess(tls_worker_env(worker_env, pki, base, "tls"), base / "worker.log") as w:
        yield w


@pytest.fixture(scope="module")
def tls_only_worker(
    worker_env: dict, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """LANEWAY_MLLP_PLAINTEXT=false: TLS only."""
    base = tmp_path_factory.mktemp("tls-only-worker")
    env = {**tls_worker_env(worker_env, pki, base, "tlsonly"), "LANEWAY_MLLP_PLAINTEXT": "false"}
    with WorkerProcess(env, base / "worker.log") as w:
        yield w


@dataclass(frozen=True)
class Scene:
    """A TLS worker's API and ports, with a quiet tenant streaming beside the test."""

    api: Api
    quiet: QuietTenant
    topics: TopicNames
    plain_port: int
    tls_port: int

    async def onboard(self, name: str, **fields: Any) -> tuple[str, Sender]:
        """A tenant with a sender identity of its own, on the quiet tenant's ingress partition."""
        suffix = uuid.uuid4().hex[:8].upper()
        sender = Sender(f"APP-{suffix}", f"FAC-{suffix}")
        tenant = await self.api.onboard(
            tenant_on(partition_of(self.quiet.tenant_id.encode()), name),
            senders=[{"application": sender.application, "facility": sender.facility}],
            rate_per_s=1000,
            burst=2000,
            **fields,
        )
        return tenant["id"], sender


@contextlib.asynccontextmanager
async def scene(worker: WorkerProcess, admin_token: str, bootstrap: str) -> AsyncIterator[Scene]:
    """On exit, checks that the quiet tenant kept streaming (quiet_tenant)."""
    topics = worker.topics
    web = f"http://127.0.0.1:{worker.env['LANEWAY_WEB_PORT']}"
    async with Api(web, admin_token) as api, quiet_tenant(api, bootstrap, topics) as quiet:
        plain_port, tls_port = (int(worker.env[f"LANEWAY_MLLP_{p}PORT"]) for p in ("", "TLS_"))
        yield Scene(api, quiet, topics, plain_port, tls_port)


@contextlib.asynccontextmanager
async def connection(port: int, tls: ssl.SSLContext | None = None) -> AsyncIterator[MllpClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        yield MllpClient(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def exchange(port: int, tls: ssl.SSLContext | None, payload: bytes) -> Ack:
    async with connection(port, tls) as client:
        return await client.exchange(payload)


async def no_answer_over_tls(port: int, tls: ssl.SSLContext, payload: bytes) -> bytes:
    """What a sender whose handshake the listener refuses reads back: b"" once it is closed."""
    try:
        async with asyncio.timeout(ACK_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
            try:
                writer.write(payload)
                await writer.drain()
                return await reader.read(READ_BYTES)
            finally:
                writer.close()
    except (ssl.SSLError, ConnectionError):
        return b""


async def control_ids(
    bootstrap: str, topic: str, count: int, timeout_s: float = ARRIVAL_TIMEOUT_S
) -> list[str]:
    records = await consume_until(bootstrap, [topic], lambda got: len(got) >= count, timeout_s)
    return [json.loads(record.value)["control_id"] for record in records]


async def mllp_metrics(worker: WorkerProcess) -> dict[str, float]:
    """The laneway_mllp_* TLS and certificate series of /metrics, e.g.
    `laneway_mllp_client_cert_refusals_total{reason="client_certificate_required"}`."""
    url = f"http://127.0.0.1:{worker.env['LANEWAY_WEB_PORT']}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    series = re.findall(
        r"^(laneway_mllp_(?:tls_handshake_failures|client_cert_refusals)_total\{[^}]*\}) (\S+)$",
        text,
        re.MULTILINE,
    )
    return {name: float(value) for name, value in series}


def increase(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: value - before.get(name, 0.0) for name, value in after.items() if value != 0}


def refusal(ack: Ack) -> tuple[str, str, bool, str]:
    """MSA-1, MSA-2, whether an ERR segment came, and MSA-3 (the reason's text)."""
    return ack.code, ack.acked_id, ack.has_err, ack.msa[3] if len(ack.msa) > 3 else ""


async def test_a_tls_sender_with_its_certificate_gets_aa_and_its_events_arrive(
    tls_worker: WorkerProcess, pki: Pki, admin_token: str, bootstrap: str
) -> None:
    async with scene(tls_worker, admin_token, bootstrap) as on:
        # Bound by fingerprint (pasted as OpenSSL prints it), and by CN.
        by_fingerprint = [{"fingerprint_sha256": pki.fingerprint("lab-a")}]
        pinned, pinned_sender = await on.onboard(
            "pinned", client_certs=by_fingerprint, require_client_cert=True
        )
        named, named_sender = await on.onboard(
            "named", client_certs=[{"subject_cn": "lab-b"}], require_client_cert=True
        )
        async with connection(on.tls_port, pki.client_context("lab-a")) as lab_a:
            acks = [await lab_a.exchange(message(pinned_sender, f"PIN-{n}")) for n in range(3)]
        named_ack = await exchange(
            on.tls_port, pki.client_context("lab-b"), message(named_sender, "NAMED-1")
        )

        assert [(ack.code, ack.acked_id) for ack in acks] == [("AA", f"PIN-{n}") for n in range(3)]
        assert (named_ack.code, named_ack.acked_id) == ("AA", "NAMED-1")
        out = on.topics.out
        assert await control_ids(bootstrap, out(pinned), 3) == ["PIN-0", "PIN-1", "PIN-2"]
        assert await control_ids(bootstrap, out(named), 1) == ["NAMED-1"]


async def test_a_wrong_or_missing_certificate_is_refused_with_its_reason_and_nothing_written(
    tls_worker: WorkerProcess, pki: Pki, admin_token: str, bootstrap: str
) -> None:
    before = await mllp_metrics(tls_worker)
    async with scene(tls_worker, admin_token, bootstrap) as on:
        bad = {"id": "bad-print", "name": "Bad", "client_certs": [{"fingerprint_sha256": "x"}]}
        status, answer = await on.api.call("POST", "/api/tenants", token=admin_token, json_body=bad)
        assert status == 422 and "client_certs.0.fingerprint_sha256" in json.dumps(answer)
        binding = [{"fingerprint_sha256": pki.fingerprint("lab-a")}]
        tenant_id, sender = await on.onboard(
            "strict", client_certs=binding, require_client_cert=True
        )

        tls = on.tls_port
        other_cert = await exchange(tls, pki.client_context("lab-b"), message(sender, "B-1"))
        no_cert = await exchange(tls, pki.client_context(None), message(sender, "B-2"))
        plaintext = await exchange(on.plain_port, None, message(sender, "B-3"))
        # Another CA's certificate with the right CN never completes the handshake.
        rogue = await no_answer_over_tls(tls, pki.client_context("rogue"), message(sender, "B-4"))
        good = await exchange(tls, pki.client_context("lab-a"), message(sender, "GOOD-1"))

        assert [refusal(ack) for ack in (other_cert, no_cert, plaintext)] == [
            ("AE", "B-1", True, "Client certificate does not match"),
            ("AE", "B-2", True, "Client certificate required"),
            ("AE", "B-3", True, "Client certificate required"),
        ]
        assert rogue == b""
        assert (good.code, good.acked_id) == ("AA", "GOOD-1")
        # The refused messages went first on the same ingress partition: had any been written,
        # it would be in out or the DLQ before GOOD-1.
        assert await control_ids(bootstrap, on.topics.out(tenant_id), 1) == ["GOOD-1"]
        assert await control_ids(bootstrap, on.topics.dlq(tenant_id), 1, timeout_s=2.0) == []

    assert increase(before, await mllp_metrics(tls_worker)) == {
        'laneway_mllp_client_cert_refusals_total{reason="client_certificate_mismatch"}': 1.0,
        'laneway_mllp_client_cert_refusals_total{reason="client_certificate_required"}': 2.0,
        'laneway_mllp_tls_handshake_failures_total{kind="client_certificate"}': 1.0,
    }
    log = tls_worker.log_path.read_text(errors="replace")
    assert f"tenant {tenant_id} from 127.0.0.1 refused: client_certificate_mismatch" in log
    assert "handshake failed (client_certificate): CERTIFICATE_VERIFY_FAILED" in log
    assert "TESTPATIENT" not in log  # message content is never logged
    assert listener_failures(tls_worker) == []


async def test_with_plaintext_off_plaintext_connections_are_refused_while_tls_works(
    tls_only_worker: WorkerProcess, pki: Pki, admin_token: str, bootstrap: str
) -> None:
    async with scene(tls_only_worker, admin_token, bootstrap) as on:
        tenant_id, sender = await on.onboard("tls-only")

        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", on.plain_port)
        ack = await exchange(on.tls_port, pki.client_context(None), message(sender, "TLS-1"))

        assert (ack.code, ack.acked_id) == ("AA", "TLS-1")
        assert await control_ids(bootstrap, on.topics.out(tenant_id), 1) == ["TLS-1"]


async def test_a_tenant_without_the_requirement_still_sends_over_plaintext_and_tls(
    tls_worker: WorkerProcess, pki: Pki, admin_token: str, bootstrap: str
) -> None:
    async with scene(tls_worker, admin_token, bootstrap) as on:
        # Its certificate is on file, not yet required: the sender has not moved to TLS yet.
        tenant_id, sender = await on.onboard("relaxed", client_certs=[{"subject_cn": "lab-a"}])

        plain = await exchange(on.plain_port, None, message(sender, "PLAIN-1"))
        tls = await exchange(on.tls_port, pki.client_context(None), message(sender, "TLS-1"))

        assert [(a.code, a.acked_id) for a in (plain, tls)] == [("AA", "PLAIN-1"), ("AA", "TLS-1")]
        assert await control_ids(bootstrap, on.topics.out(tenant_id), 2) == ["PLAIN-1", "TLS-1"]


async def test_a_tls_misconfiguration_stops_the_worker_start_with_one_line(
    tls_worker: WorkerProcess,
    worker_env: dict,
    pki: Pki,
    admin_token: str,
    bootstrap: str,
    tmp_path: Path,
) -> None:
    env = {
        **tls_worker_env(worker_env, pki, tmp_path, "misconfigured"),
        "LANEWAY_MLLP_TLS_KEY_FILE": str(pki.clients["lab-a"][1]),  # not the server's key
    }
    misconfigured = WorkerProcess(env, tmp_path / "worker.log")
    async with scene(tls_worker, admin_token, bootstrap):
        with pytest.raises(RuntimeError, match="exited during start-up"):
            await asyncio.to_thread(misconfigured.start)

    log = misconfigured.log_path.read_text(errors="replace").strip().splitlines()
    assert log == [
        f"Laneway cannot start: LANEWAY_MLLP_TLS_KEY_FILE {pki.clients['lab-a'][1]} is not the "
        f"key of the certificate in LANEWAY_MLLP_TLS_CERT_FILE {pki.server[0]}"
    ]
