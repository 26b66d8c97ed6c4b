"""DLQ replay: `POST /api/tenants/{tenant_id}/dlq/replay` (admin) re-injects a tenant's rejects.

After a fix (a config change, a corrected sender), the originals parked in
`laneway.dlq.<tenant>` are written back to ingress, in DLQ order, with acks=all. The replay
position is a consumer-group commit per tenant, so each DLQ record is replayed once; a message
that fails again lands in the DLQ again and can be replayed after the next fix.
"""

from __future__ import annotations

import base64

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.web import View

from agents.admin_api import api_errors
from agents.fetch_api import original_by_ref
from agents.ingest import IngestUnavailable, IngressWriter
from agents.web_auth import ApiError, Guard
from streams.app import LanewayApp

FETCH_TIMEOUT_MS = 1000


def install(app: LanewayApp, writer: IngressWriter, guard: Guard) -> None:
    """Register the replay view on `app`."""

    @app.page("/api/tenants/{tenant_id}/dlq/replay")
    class Replay(View):
        @api_errors
        async def post(self, request: web.Request, tenant_id: str) -> web.Response:
            await guard.admin(request)
            await guard.tenant_or_admin(request, tenant_id)  # 404 for an unknown tenant
            try:
                result = await replay(app, writer, tenant_id)
            except IngestUnavailable as error:
                raise ApiError(
                    503, "broker_unavailable", "Kafka did not accept the replay"
                ) from error
            return web.json_response(result)


async def replay(app: LanewayApp, writer: IngressWriter, tenant_id: str) -> dict[str, int]:
    """Write every not yet replayed DLQ record of the tenant back to ingress."""
    partition = TopicPartition(app.topic_names.dlq(tenant_id), 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=app.laneway.bootstrap_servers,
        group_id=f"{app.laneway.app_id}-dlq-replay-{tenant_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([partition])
        end = (await consumer.end_offsets([partition]))[partition]
        start = position = await consumer.position(partition)
        while position < end:
            batch = await consumer.getmany(partition, timeout_ms=FETCH_TIMEOUT_MS)
            for record in batch.get(partition, []):
                if record.offset >= end:
                    break
                parked = orjson.loads(record.value)
                if parked.get("original_base64") is None:  # by reference: read it from ingress
                    original = await original_by_ref(app, tenant_id, parked["ref"])
                else:
                    original = base64.b64decode(parked["original_base64"])
                await writer.write(tenant_id, original)
                position = record.offset + 1
            # Commit only what is durably back in ingress: a failed replay resumes here.
            await consumer.commit({partition: position})
        return {"replayed": position - start, "from_offset": start, "to_offset": position}
    finally:
        await consumer.stop()
