"""MLLP ingest on the real worker and broker: ACK semantics, interoperability and bad input.

Senders here are plain asyncio clients (and python-hl7's `mllp_send`), speaking to the session
worker's listener on `LANEWAY_MLLP_PORT`. All messages are synthetic.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.mllp import Frame, FramingError, FramingErrorKind, MllpDecoder, frame
from streams.topics import TopicNames
from tests.harness import (
    ACK_TIMEOUT_S,
    FAUST,
    UNKNOWN_SENDER,
    Ack,
    Api,
    Sender,
    WorkerProcess,
    connection,
    consume_until,
    message,
    own_worker_env,
    parse_ack,
)

pytestmark = pytest.mark.integration

MLLP_SEND = FAUST.with_name("mllp_send")
ARRIVAL_TIMEOUT_S = 60.0
REFUSALS = frozenset(("AE", "AR"))
# The session worker keeps the default size contract and frame limit (4 MiB each).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
OVERSIZE_FRAME_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Tenant:
    id: str
    sender: Sender


def listener_failures(worker: WorkerProcess) -> list[str]:
    """Log lines of the listener's own failures, and of tracebacks passing through it."""
    log = worker.log_path.read_text(errors="replace")
    return [
        line
        for line in log.splitlines()
        if "after an unexpected" in line or "agents/ingest/mllp.py" in line
    ]


@pytest.fixture
def mllp_port(worker: WorkerProcess, worker_env: dict) -> int:
    return int(worker_env["LANEWAY_MLLP_PORT"])


@pytest.fixture
def topics(worker_env: dict) -> TopicNames:
    return TopicNames(worker_env["LANEWAY_TOPIC_PREFIX"])


async def onboard(api: Api, name: str) -> Tenant:
    """A tenant with a sender identity of its own.

    Tests here check ingest, not lane moves (no lane worker runs): a contract far above any
    rate a test sends at keeps its bursts in the shared lane.
    """
    suffix = uuid.uuid4().hex[:8]
    sender = Sender(f"APP-{suffix.upper()}", f"FAC-{suffix.upper()}")
    tenant = await api.onboard(
        f"{name}-{suffix}",
        senders=[{"application": sender.application, "facility": sender.facility}],
        rate_per_s=10_000,
        burst=20_000,
    )
    return Tenant(tenant["id"], sender)


async def control_ids_arriving(
    bootstrap: str, topics: TopicNames, tenant: Tenant, count: int
) -> list[str]:
    """Control ids of the tenant's out events, in topic order, once `count` have arrived."""
    records = await consume_until(
        bootstrap, [topics.out(tenant.id)], lambda got: len(got) >= count, ARRIVAL_TIMEOUT_S
    )
    return [json.loads(record.value)["control_id"] for record in records]


async def test_aa_comes_only_after_the_durable_write_and_the_event_reaches_out(
    api: Api,
    mllp_port: int,
    topics: TopicNames,
    bootstrap: str,
    worker: WorkerProcess,
    worker_env: dict,
) -> None:
    tenant = await onboard(api, "durable")
    payload = message(tenant.sender, "DURABLE-1", version="2.4")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = range(int(worker_env["LANEWAY_INGRESS_PARTITIONS"]))
        ingress = [TopicPartition(topics.ingress, partition) for partition in partitions]
        await consumer.end_offsets(ingress)  # metadata now, so the one after AA is a round trip
        async with connection(mllp_port) as client:
            ack = await client.exchange(payload)
            # Right at AA, the ingress record must already be below the broker's end offsets.
            ends = await consumer.end_offsets(ingress)
        durable = await read_up_to(consumer, ends)
    finally:
        await consumer.stop()

    assert ack.code == "AA"
    assert ack.acked_id == "DURABLE-1"
    # The ACK goes back the way the message came: MSH-3/4 and MSH-5/6 swapped.
    sender = tenant.sender
    assert ack.msh[3:7] == ["LANEWAY", "LANEWAY_HUB", sender.application, sender.facility]
    assert ack.msh[9] == "ACK^A01^ACK"
    assert ack.msh[12] == "2.4"
    assert not ack.has_err
    assert payload in durable, "AA was sent before the ingress record was durable"
    assert await control_ids_arriving(bootstrap, topics, tenant, 1) == ["DURABLE-1"], (
        worker.log_tail()
    )


async def read_up_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[bytes]:
    """Values of every record below `ends`, read from the start of each partition."""
    consumer.assign(list(ends))
    await consumer.seek_to_beginning(*ends)
    values: list[bytes] = []
    unread = {tp for tp, end in ends.items() if end > 0}
    async with asyncio.timeout(ARRIVAL_TIMEOUT_S):
        while unread:
            batch = await consumer.getmany(*unread, timeout_ms=500)
            for tp, records in batch.items():
                values.extend(record.value for record in records if record.offset < ends[tp])
            unread = {tp for tp in unread if await consumer.position(tp) < ends[tp]}
    return values


async def test_unknown_sender_is_rejected_with_an_err_segment(mllp_port: int) -> None:
    async with connection(mllp_port) as client:
        ack = await client.exchange(message(UNKNOWN_SENDER, "STRANGER-1"))

    assert (ack.code, ack.acked_id, ack.has_err) == ("AR", "STRANGER-1", True)


async def test_paused_tenant_is_rejected_until_resumed(api: Api, mllp_port: int) -> None:
    tenant = await onboard(api, "paused")
    status, _ = await api.call("POST", f"/api/tenants/{tenant.id}/pause", token=api.admin_token)
    assert status == 200
    async with connection(mllp_port) as client:
        while_paused = await client.exchange(message(tenant.sender, "PAUSED-1"))
        status, _ = await api.call(
            "POST", f"/api/tenants/{tenant.id}/resume", token=api.admin_token
        )
        assert status == 200
        after_resume = await client.exchange(message(tenant.sender, "PAUSED-1"))

    assert (while_paused.code, while_paused.acked_id, while_paused.has_err) == (
        "AR",
        "PAUSED-1",
        True,
    )
    assert (after_resume.code, after_resume.acked_id) == ("AA", "PAUSED-1")


# Header defects, answered as streams/hl7/ack.py documents: an unacceptable MSH-9 or MSH-12 is
# a reject (AR), any other defect of the message itself an error (AE). Always with ERR.
HEADER_DEFECTS = {
    "missing MSH-10": ({"control_id": ""}, "AE", ""),
    "unsupported version": ({"version": "2.9"}, "AR", "DEFECT-1"),
    "missing MSH-9 trigger": ({"message_type": "ADT"}, "AR", "DEFECT-1"),
}


@pytest.mark.parametrize("defect", list(HEADER_DEFECTS))
async def test_header_defects_get_an_error_or_reject_with_err(
    api: Api, mllp_port: int, defect: str
) -> None:
    tenant = await onboard(api, "defects")
    changes, expected_code, expected_id = HEADER_DEFECTS[defect]
    payload = message(tenant.sender, **{"control_id": "DEFECT-1", **changes})
    async with connection(mllp_port) as client:
        refused = await client.exchange(payload)
        # The connection stays usable after a refused message.
        accepted = await client.exchange(message(tenant.sender, "DEFECT-2"))

    assert (refused.code, refused.acked_id, refused.has_err) == (expected_code, expected_id, True)
    assert (accepted.code, accepted.acked_id) == ("AA", "DEFECT-2")


async def test_msh15_ne_gets_no_ack_and_the_connection_stays_usable(
    api: Api, mllp_port: int, topics: TopicNames, bootstrap: str
) -> None:
    tenant = await onboard(api, "never")
    async with connection(mllp_port) as client:
        await client.send(
            message(tenant.sender, "NE-ACCEPTED", accept_ack="NE"),
            message(tenant.sender, "", accept_ack="NE"),  # refused, yet NE: still no answer
        )
        # The first answer on the connection is the one for the next original-mode message.
        ack = await client.exchange(message(tenant.sender, "NE-THEN-ORIGINAL"))

    assert (ack.code, ack.acked_id) == ("AA", "NE-THEN-ORIGINAL")
    arrived = await control_ids_arriving(bootstrap, topics, tenant, 2)
    assert arrived == ["NE-ACCEPTED", "NE-THEN-ORIGINAL"]


async def test_msh15_er_answers_only_errors_and_rejects(api: Api, mllp_port: int) -> None:
    tenant = await onboard(api, "errors-only")
    async with connection(mllp_port) as client:
        await client.send(
            message(tenant.sender, "ER-ACCEPTED", accept_ack="ER"),
            message(tenant.sender, "", accept_ack="ER"),
            message(UNKNOWN_SENDER, "ER-UNKNOWN", accept_ack="ER"),
            message(tenant.sender, "ER-THEN-ORIGINAL"),
        )
        acks = [await client.ack() for _ in range(3)]

    assert [(ack.code, ack.acked_id) for ack in acks] == [
        ("CE", ""),
        ("CR", "ER-UNKNOWN"),
        ("AA", "ER-THEN-ORIGINAL"),
    ]


async def test_pipelined_frames_are_acked_and_delivered_in_sending_order(
    api: Api, mllp_port: int, topics: TopicNames, bootstrap: str
) -> None:
    tenant = await onboard(api, "pipelined")
    control_ids = [f"PIPE-{index:04d}" for index in range(100)]
    # Every fifth from an unknown sender: refused without a Kafka write, so it would overtake
    # the accepted messages before it if the listener handled frames side by side.
    refused = set(control_ids[4::5])
    async with connection(mllp_port) as client:
        await client.send(
            *(message(UNKNOWN_SENDER if c in refused else tenant.sender, c) for c in control_ids)
        )
        acks = [await client.ack() for _ in control_ids]

    expected = [("AR" if c in refused else "AA", c) for c in control_ids]
    assert [(ack.code, ack.acked_id) for ack in acks] == expected
    accepted = [c for c in control_ids if c not in refused]
    assert await control_ids_arriving(bootstrap, topics, tenant, len(accepted)) == accepted


@pytest.mark.parametrize("file_format", ["framed", "loose"])
async def test_python_hl7_mllp_send_gets_an_aa_per_message(
    api: Api, mllp_port: int, tmp_path: Path, file_format: str
) -> None:
    tenant = await onboard(api, "mllp-send")
    control_ids = [f"CLI-{index}" for index in range(5)]
    messages = [message(tenant.sender, control_id) for control_id in control_ids]
    if file_format == "framed":  # what mllp_send reads by default: MLLP frames
        content = b"".join(frame(m) for m in messages)
        options = []
    else:  # --loose: an HL7 text file, LF line ends, no framing
        content = b"\n".join(m.replace(b"\r", b"\n") for m in messages)
        options = ["--loose"]
    messages_file = tmp_path / "messages.hl7"
    messages_file.write_bytes(content)

    process = await asyncio.create_subprocess_exec(
        str(MLLP_SEND),
        *options,
        "--port",
        str(mllp_port),
        "--file",
        str(messages_file),
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(ACK_TIMEOUT_S):
        stdout, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode(errors="replace")
    # mllp_send prints each raw answer (still MLLP-framed) on a line of its own.
    answers = MllpDecoder(1024 * 1024).feed(stdout)
    assert all(isinstance(answer, Frame) for answer in answers), answers
    acks = [parse_ack(answer.payload) for answer in answers if isinstance(answer, Frame)]
    assert [(ack.code, ack.acked_id) for ack in acks] == [("AA", c) for c in control_ids]


async def test_fifty_connections_of_twenty_messages_all_get_aa(
    api: Api, mllp_port: int, topics: TopicNames, bootstrap: str
) -> None:
    tenant = await onboard(api, "fan-in")

    async def twenty_messages(connection_index: int) -> list[tuple[str, str]]:
        async with connection(mllp_port) as client:
            answers = []
            for index in range(20):
                ack = await client.exchange(
                    message(tenant.sender, f"FAN-{connection_index:02d}-{index:02d}")
                )
                answers.append((ack.code, ack.acked_id))
            return answers

    per_connection = await asyncio.gather(*(twenty_messages(c) for c in range(50)))

    for connection_index, answers in enumerate(per_connection):
        expected = [("AA", f"FAN-{connection_index:02d}-{index:02d}") for index in range(20)]
        assert answers == expected
    arrived = await control_ids_arriving(bootstrap, topics, tenant, 1000)
    assert sorted(arrived) == sorted(c for answers in per_connection for _, c in answers)


# Bad input, each with its documented answer (see agents/ingest/mllp.py).


async def truncated_frames_then_disconnect(port: int, sender: Sender) -> None:
    """A frame cut short, then the sender leaves: no answer, and the listener lets go."""
    whole = message(sender, "TRUNCATED-1")
    for attempt, cut in enumerate(range(1, len(whole), len(whole) // 10)):
        async with connection(port) as client:
            await client.send_raw(frame(whole)[:cut])
            if attempt % 2:
                continue  # the sender just drops the connection
            client.finish_sending()
            assert await client.acks_until_closed() == []


async def garbage_between_frames_is_skipped(port: int) -> None:
    """Bytes outside frames are skipped; the frame after them is answered as usual."""
    noise = random.Random(3)
    garbage = bytes(noise.choice(range(0x20, 0x7F)) for _ in range(4096))
    async with connection(port) as client:
        await client.send_raw(garbage + b"\r\n" + garbage)
        ack = await client.exchange(message(UNKNOWN_SENDER, "AFTER-GARBAGE"))
    assert (ack.code, ack.acked_id) == ("AR", "AFTER-GARBAGE")


async def wrong_encoding_characters_get_ae(port: int, sender: Sender) -> None:
    async with connection(port) as client:
        ack = await client.exchange(message(sender, "BAD-ENCODING", encoding_characters="^~\\\\"))
    assert (ack.code, ack.acked_id, ack.has_err) == ("AE", "BAD-ENCODING", True)


async def frame_without_msh_gets_ae(port: int, sender: Sender) -> None:
    headless = message(sender, "HEADLESS").partition(b"\r")[2]
    async with connection(port) as client:
        ack = await client.exchange(headless)
    assert (ack.code, ack.has_err) == ("AE", True)


async def oversize_frame_is_refused_and_closed(port: int, sender: Sender) -> None:
    """AE (never AR: a resend cannot succeed) echoing the frame's MSH-10, with an ERR naming
    the limit in bytes, then the listener closes the connection."""
    head = message(sender, "HUGE-1")
    body = b"OBX|1|TX|NOTE||" + b"X" * OVERSIZE_FRAME_BYTES + b"\r"
    async with connection(port) as client:
        await client.send(head + body)
        answers = await client.acks_until_closed()
    assert [(ack.code, ack.acked_id, ack.has_err) for ack in answers] == [("AE", "HUGE-1", True)]
    assert f"exceeds the {DEFAULT_MAX_MESSAGE_BYTES}-byte limit" in answers[0].msa[3]


def random_byte_string(rng: random.Random) -> bytes:
    """Random bytes rich in MLLP control bytes; half start a frame, some with an MSH start."""
    alphabet = [0x0B, 0x1C, 0x0D, *range(256)]
    weights = [20, 20, 10, *([1] * 256)]
    data = bytes(rng.choices(alphabet, weights, k=rng.randint(0, 200)))
    if rng.random() < 0.5:
        data = b"\x0b" + (b"MSH|^~\\&|" if rng.random() < 0.3 else b"") + data
    return data


def expected_answer(data: bytes) -> tuple[int, bool]:
    """(ACKs due, whether the listener closes the connection by itself) for `data` sent alone.

    Every frame is answered, in order; broken framing (a start block inside a frame) closes the
    connection without answering what follows; skipped garbage and an unfinished frame get
    nothing. Framing itself is the decoder's, unit-tested in tests/unit/test_mllp_framing.py.
    """
    answers = 0
    for event in MllpDecoder(1024 * 1024).feed(data):
        if isinstance(event, Frame):
            answers += 1
        elif isinstance(event, FramingError) and event.kind is FramingErrorKind.BROKEN_FRAMING:
            return answers, True
    return answers, False


async def random_byte_strings_get_refused_or_closed(port: int) -> None:
    rng = random.Random(20240607)
    cases = [random_byte_string(rng) for _ in range(1000)]
    at_once = asyncio.Semaphore(25)

    async def send_one(data: bytes) -> None:
        due, closes = expected_answer(data)
        async with at_once, connection(port) as client:
            await client.send_raw(data)
            acks = [await client.ack() for _ in range(due)]
            if not closes:
                client.finish_sending()  # else the listener must close without our EOF
            acks += await client.acks_until_closed()
        assert len(acks) == due, data
        assert {ack.code for ack in acks} <= REFUSALS, data

    await asyncio.gather(*(send_one(data) for data in cases))


async def test_bad_input_never_disturbs_a_well_behaved_sender(
    api: Api, mllp_port: int, topics: TopicNames, bootstrap: str, worker: WorkerProcess
) -> None:
    steady = await onboard(api, "steady")
    other = await onboard(api, "misbehaving")
    bad_input_done = asyncio.Event()
    sent: list[str] = []

    async def steady_sender() -> list[Ack]:
        """Stop-and-wait like a real interface engine, for as long as the bad input lasts."""
        acks = []
        async with connection(mllp_port) as client:
            while len(sent) < 200 or not bad_input_done.is_set():
                control_id = f"STEADY-{len(sent):05d}"
                acks.append(await client.exchange(message(steady.sender, control_id)))
                sent.append(control_id)
        return acks

    async def bad_input() -> None:
        try:
            await asyncio.gather(
                truncated_frames_then_disconnect(mllp_port, other.sender),
                garbage_between_frames_is_skipped(mllp_port),
                wrong_encoding_characters_get_ae(mllp_port, other.sender),
                frame_without_msh_gets_ae(mllp_port, other.sender),
                oversize_frame_is_refused_and_closed(mllp_port, other.sender),
                random_byte_strings_get_refused_or_closed(mllp_port),
            )
        finally:
            bad_input_done.set()

    steady_acks, _ = await asyncio.gather(steady_sender(), bad_input())

    assert [(ack.code, ack.acked_id) for ack in steady_acks] == [("AA", c) for c in sent]
    assert await control_ids_arriving(bootstrap, topics, steady, len(sent)) == sent
    # The worker is alive and its listener met no unexpected failure.
    status, _ = await api.call("GET", f"/api/tenants/{steady.id}", token=api.admin_token)
    assert status == 200
    async with connection(mllp_port) as client:
        assert (await client.exchange(message(steady.sender, "STEADY-AFTER"))).code == "AA"
    assert listener_failures(worker) == []


@pytest.fixture
def own_worker(worker_env: dict, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start a worker of its own with extra LANEWAY_* settings, e.g. `mllp_idle_timeout_s="1"`.

    Own app id and topic prefix (under the session's, so the session clean-up removes them):
    it neither takes partitions from the session worker nor processes its ingress.
    """
    started: list[WorkerProcess] = []

    def start(**settings: str) -> WorkerProcess:
        name = f"own{len(started)}"
        env = own_worker_env(worker_env, name, tmp_path / name, **settings)
        process = WorkerProcess(env, tmp_path / f"{name}.log")
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


async def test_a_silent_connection_is_closed_after_the_idle_timeout(
    own_worker: Callable[..., WorkerProcess],
) -> None:
    idle_timeout_s = 1.0
    worker = own_worker(mllp_idle_timeout_s=str(idle_timeout_s))
    port = int(worker.env["LANEWAY_MLLP_PORT"])
    async with connection(port) as silent, connection(port) as stuck_mid_frame:
        opened = time.monotonic()
        await stuck_mid_frame.send_raw(b"\x0bMSH|^~\\&|")
        assert await silent.acks_until_closed() == []
        assert await stuck_mid_frame.acks_until_closed() == []
        open_for_s = time.monotonic() - opened

    assert open_for_s >= idle_timeout_s * 0.9, "closed before the idle timeout"


async def test_worker_shutdown_closes_open_connections(
    own_worker: Callable[..., WorkerProcess],
) -> None:
    worker = own_worker()  # the default idle timeout (300 s) cannot be what closes them
    port = int(worker.env["LANEWAY_MLLP_PORT"])
    async with connection(port) as idle, connection(port) as mid_frame:
        assert (await idle.exchange(message(UNKNOWN_SENDER, "BEFORE-STOP"))).code == "AR"
        await mid_frame.send_raw(b"\x0bMSH|^~\\&|")
        await asyncio.to_thread(worker.stop)
        assert await idle.acks_until_closed() == []
        assert await mid_frame.acks_until_closed() == []

    assert listener_failures(worker) == []
