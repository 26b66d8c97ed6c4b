"""Laneway settings: environment variables or `.env`, prefix ``LANEWAY_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The size contract (docs/limits.md): every limit below derives from `max_message_bytes` (M).
# An output value (event or DLQ record JSON) may exceed M by this much before it is written by
# reference instead: enough for a DLQ record's metadata or an event's keys around a message of M.
VALUE_HEADROOM_BYTES = 16 * 1024
# A record is its value plus key, headers and record/batch framing: a lane record is an ingress
# message (M) plus the origin header, an output an output value plus three headers. 64 KiB more
# than M covers all of them with room to spare, so no record Laneway writes is refused for size.
RECORD_HEADROOM_BYTES = 64 * 1024
# Consumers fetch at least this much per partition: smaller fetches cost throughput.
MIN_FETCH_BYTES = 1024 * 1024


class Settings(BaseSettings):
    """Everything an operator can set.

    Names are part of the public contract (docs/architecture.md §3).
    """

    model_config = SettingsConfigDict(
        env_prefix="LANEWAY_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    kafka_bootstrap: str = Field(
        default="localhost:9092", description="Kafka bootstrap servers, comma separated."
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for the admin API; the admin API is off if unset."
    )
    mask_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key for hash masking (streams/masking.py); unset: hash masks drop the "
        "field.",
    )
    web_port: int = Field(default=6066, description="Port of the worker's web server.")
    web_host: str = Field(default="127.0.0.1", description="Interface the web server binds.")
    mllp_port: int = Field(default=2575, description="Port of the MLLP listener.")
    mllp_host: str = Field(default="127.0.0.1", description="Interface the MLLP listener binds.")
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=64 * 1024,
        description="Largest HL7 message Laneway carries end to end (the size contract).",
    )
    mllp_max_frame_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest MLLP frame; larger ones are refused."
    )
    mllp_idle_timeout_s: float = Field(
        default=300.0, gt=0, description="An MLLP connection silent this long is closed."
    )
    # MLLP resource limits (docs/limits.md, "MLLP connection limits").
    mllp_max_connections: int = Field(
        default=1000, ge=1, description="Most open MLLP connections; more are closed at accept."
    )
    mllp_max_connections_per_source: int = Field(
        default=100,
        ge=1,
        description="Most open MLLP connections from one source address; more are closed at "
        "accept. Room for an interface engine that sends many feeds from one address.",
    )
    mllp_frame_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A frame must end (FS) within this many seconds of its start (VT), however "
        "its bytes trickle in, or its connection is closed. A full-size frame (4 MiB) needs "
        "about 70 KB/s.",
    )
    mllp_max_buffered_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        description="Most bytes of partial frames held by all MLLP connections together (raised "
        "to one frame limit if below it); a connection that would exceed it stops being read "
        "until there is room.",
    )
    # MLLP over TLS (docs/ingest.md, "TLS"): on when a certificate file is set, on a port of its
    # own so that senders move over one by one; checked at start by streams.tls.
    mllp_plaintext: bool = Field(
        default=True, description="Serve plaintext MLLP on `mllp_port`; false = TLS only."
    )
    mllp_tls_port: int = Field(default=2576, description="Port of the MLLP-over-TLS listener.")
    mllp_tls_cert_file: Path | None = Field(
        default=None,
        description="PEM server certificate (chain) of the TLS listener; TLS is off if unset.",
    )
    mllp_tls_key_file: Path | None = Field(
        default=None, description="PEM private key of that certificate, unencrypted."
    )
    mllp_tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA(s) that client certificates must chain to; unset: none are asked.",
    )
    mllp_tls_handshake_timeout_s: float = Field(
        default=10.0, gt=0, description="A TLS handshake not done this long is abandoned."
    )
    http_max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest HTTP ingest body (413 above)."
    )
    ingest_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait for Kafka to acknowledge an ingress write before AR / 503.",
    )
    data_dir: Path = Field(
        default=Path(".run/data"),
        description="Root of worker state; each worker uses its own sub-folder.",
    )

    app_id: str = Field(default="laneway", description="Faust app id (consumer group prefix).")
    topic_prefix: str = Field(default="laneway.", description="Prefix of every Laneway topic.")
    ingress_partitions: int = Field(
        default=8, ge=1, description="Partitions of the ingress and lane topics."
    )
    topic_replication: int = Field(default=1, ge=1, description="Replication factor of topics.")
    topic_min_insync_replicas: int = Field(
        default=1,
        ge=1,
        description="min.insync.replicas of every topic Laneway creates: an acks=all write (and "
        "so an AA) needs this many replicas; with replication 3, 2 survives one broker's loss.",
    )

    batch_max: int = Field(
        default=500, ge=1, description="Most ingress records the processor handles per batch."
    )
    batch_within_s: float = Field(
        default=0.005,
        gt=0,
        description="Longest wait to fill a processor batch; bounds added latency at low rates.",
    )

    lanes_enabled: bool = Field(
        default=True,
        description="Move noisy tenants to dedicated lanes; false = one shared lane (naive).",
    )
    dedicated_lanes: int = Field(default=4, ge=1, description="Size of the dedicated-lane pool.")
    lane_web_port: int = Field(default=6067, description="Web port of the lane worker process.")
    lane_nice: int = Field(
        default=10, ge=0, le=19, description="CPU nice value the lane worker gives itself."
    )
    lane_drain_rate: float = Field(
        default=1000.0,
        ge=0,
        description="Most records/s all lane workers together process (0 = no bound), split by "
        "the lanes each holds: a flood's backlog drains at this pace instead of taking the CPU "
        "and broker the shared lane needs.",
    )
    promote_factor: float = Field(
        default=4.0, gt=1, description="Promote when the recent rate exceeds this x contract."
    )
    promote_min_rate: float = Field(
        default=20.0, ge=0, description="Never promote a tenant below this many msgs/s."
    )
    calm_factor: float = Field(
        default=1.0,
        gt=0,
        description="A tenant is calm while its 10 s rate is below this x contract.",
    )
    hold_down_s: float = Field(
        default=120.0, ge=0, description="Calm this long (and drained) before moving back."
    )
    default_rate_per_s: float = Field(
        default=50.0, gt=0, description="Contract rate of tenants without one (msgs/s)."
    )
    default_burst: int = Field(default=100, ge=1, description="Contract burst of such tenants.")
    ingest_ceiling_factor: float = Field(
        default=20.0, gt=1, description="Ingest slows a sender above this x its contract rate."
    )

    @property
    def http_body_limit(self) -> int:
        """The largest HTTP ingest body read: a body must be able to carry one message of the
        size contract (`max_message_bytes`), whatever `http_max_body_bytes` says."""
        return max(self.http_max_body_bytes, self.max_message_bytes)

    @property
    def mask_secret_bytes(self) -> bytes | None:
        """`mask_secret` as the HMAC key masking uses; None when unset (hash masks then drop)."""
        return self.mask_secret.get_secret_value().encode() if self.mask_secret else None

    @property
    def max_value_bytes(self) -> int:
        """Largest output value (event or DLQ record JSON); a larger one goes by reference."""
        return self.max_message_bytes + VALUE_HEADROOM_BYTES

    @property
    def max_record_bytes(self) -> int:
        """The record limit of every Laneway topic (streams/topics.py) and `max_request_size` of
        every producer."""
        return self.max_message_bytes + RECORD_HEADROOM_BYTES

    @property
    def max_fetch_bytes(self) -> int:
        """`max_partition_fetch_bytes` of every consumer: the largest record fits in one fetch."""
        return max(self.max_record_bytes, MIN_FETCH_BYTES)

    @property
    def broker_url(self) -> str:
        """Faust wants `kafka://host:port;host:port`."""
        hosts = [h.strip() for h in self.kafka_bootstrap.split(",") if h.strip()]
        return ";".join(f"kafka://{host}" for host in hosts)

    @property
    def bootstrap_servers(self) -> list[str]:
        """aiokafka wants a plain host:port list."""
        return [h.strip() for h in self.kafka_bootstrap.split(",") if h.strip()]

    @property
    def lane_worker_app_id(self) -> str:
        """App id, hence consumer group, of the lane worker that serves this deployment."""
        return f"{self.app_id}-lanes"

    @property
    def router_group(self) -> str:
        """Consumer group under which the routers commit their ingress offsets."""
        return f"{self.app_id}-router"
