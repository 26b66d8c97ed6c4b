"""The broker watch's probe: the broker list only, from whichever known broker answers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import NodeNotReadyError
from aiokafka.protocol.metadata import MetadataRequest_v5

from agents.state.broker_watch import probe


class FakeClient:
    """The part of AIOKafkaClient the probe uses: known brokers, and `send` to one of them."""

    def __init__(self, nodes: list[int], down: set[int], listed: int) -> None:
        self.cluster = SimpleNamespace(brokers=lambda: [SimpleNamespace(nodeId=n) for n in nodes])
        self.down = down
        self.listed = listed
        self.asked: list[tuple[int, Any]] = []

    async def send(self, node_id: int, request: Any) -> Any:
        self.asked.append((node_id, request))
        if node_id in self.down:
            raise NodeNotReadyError(node_id)
        return SimpleNamespace(brokers=[(n, "host", 9092, None) for n in range(self.listed)])


async def test_the_probe_asks_for_brokers_only_never_every_topics_metadata() -> None:
    client = FakeClient([1, 2, 3], down=set(), listed=3)

    assert await probe(cast(AIOKafkaClient, client)) == (3, "")
    [(_, request)] = client.asked
    # An empty array asks for no topic; a null one would ask for every topic of the cluster.
    assert request.build(MetadataRequest_v5).topics == []


async def test_a_broker_that_is_down_is_skipped_for_the_next_one() -> None:
    client = FakeClient([1, 2, 3], down={1, 2}, listed=1)

    assert await probe(cast(AIOKafkaClient, client)) == (1, "")
    assert [node for node, _ in client.asked] == [1, 2, 3]


async def test_no_broker_answering_reads_as_down_with_the_last_error() -> None:
    client = FakeClient([1, 2], down={1, 2}, listed=0)

    assert await probe(cast(AIOKafkaClient, client)) == (0, "NodeNotReadyError")
