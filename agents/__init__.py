"""Laneway's behaviour, grouped by job; the entry points `worker` and `lane_worker` wire it.

- `ingest/`: senders in (MLLP, HTTP, DLQ replay) and the durable write to the ingress topic.
- `lanes/`: the router that measures and places every tenant, and the processor that drains lanes.
- `state/`: what every worker mirrors or writes to Kafka (tenant configs, tenant state, outputs).
- `web/`: the operators' and senders' HTTP views (admin, stats, dashboard, metrics, fetch).
"""
