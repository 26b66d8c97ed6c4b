"""The router's start-up growth of the dedicated lanes (agents/lanes/offsets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import NewPartitions
from aiokafka.errors import InvalidPartitionsError

from agents.lanes.offsets import LaneOffsets
from streams.app import create_app
from streams.settings import Settings


class _Admin:
    def __init__(self, present: int, grown_elsewhere: bool) -> None:
        self.present = present
        self.grown_elsewhere = grown_elsewhere
        self.asked: list[dict[str, NewPartitions]] = []

    async def describe_topics(self, topics: list[str]) -> list[dict[str, object]]:
        return [{"topic": topics[0], "error_code": 0, "partitions": [{}] * self.present}]

    async def create_partitions(self, wanted: dict[str, NewPartitions]) -> None:
        self.asked.append(wanted)
        if self.grown_elsewhere:
            raise InvalidPartitionsError("Topic already has 4 partition(s).")


@pytest.mark.parametrize("grown_elsewhere", [False, True])
async def test_the_lanes_grow_to_the_setting_and_a_topic_grown_meanwhile_is_no_error(
    tmp_path: Path, grown_elsewhere: bool
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, web_port=6144, dedicated_lanes=4)  # type: ignore[call-arg]
    offsets = LaneOffsets(create_app(settings))
    admin = _Admin(present=2, grown_elsewhere=grown_elsewhere)
    offsets._admin = admin  # type: ignore[assignment]

    await offsets.grow_dedicated_lanes()  # raised InvalidPartitionsError, stopping the worker

    [asked] = admin.asked
    assert asked[offsets.topics.dedicated_lanes].total_count == 4


async def test_lanes_already_there_are_left_alone(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, web_port=6145, dedicated_lanes=4)  # type: ignore[call-arg]
    offsets = LaneOffsets(create_app(settings))
    admin = _Admin(present=4, grown_elsewhere=False)
    offsets._admin = admin  # type: ignore[assignment]

    await offsets.grow_dedicated_lanes()

    assert admin.asked == []
