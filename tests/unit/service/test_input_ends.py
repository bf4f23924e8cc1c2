"""The time-driven watermark's end offsets on every worker of a group (issue 11 §4).

Faust's ``Consumer.topic_partitions`` reads the group coordinator's metadata snapshot, which only
the group's leader fills: on the other workers ``input_ends`` returned None for the whole run and
their watermark fell back to the stale CAUGHT flags (a follower evaluated its users ahead of
their unread events: ``too_old``). The partition counts now come from the client's cluster
metadata. Expected values are the fake broker's offsets below.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

from stream.agents.timers import input_ends

BEGINS = {TP("a", 0): 0, TP("a", 1): 2, TP("b", 0): 0}
ENDS = {TP("a", 0): 5, TP("a", 1): 9, TP("b", 0): 0}


class _Client:
    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)


class _Thread:
    def __init__(self, client: _Client) -> None:
        self.client = client

    def _ensure_consumer(self) -> _Client:
        return self.client


class _FollowerConsumer:
    """A group member that is not the leader: the coordinator's snapshot is empty."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._thread = _Thread(_Client(partitions))

    def topic_partitions(self, topic: str) -> int | None:
        return None

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: BEGINS[tp] for tp in tps}

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: ENDS[tp] for tp in tps}


class _App:
    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer


def test_a_worker_that_is_not_the_group_leader_gets_every_input_partitions_end_offsets() -> None:
    app = _App(_FollowerConsumer({"a": {0, 1}, "b": {0}}))
    assert asyncio.run(input_ends(app, ("a", "b"))) == {"a/0": (0, 5), "a/1": (2, 9), "b/0": (0, 0)}


def test_no_end_offsets_while_a_topics_metadata_is_unknown() -> None:
    app = _App(_FollowerConsumer({"a": {0, 1}}))
    assert asyncio.run(input_ends(app, ("a", "b"))) is None
