"""Resharding against kinesalite, which (unlike moto) writes to the children after a split."""

from __future__ import annotations

import time

import apache_beam as beam

from tests.conftest import aws_client
from tests.test_kinesis import (
    AppendToFile,
    collect_while_running,
    lines_of,
    put,
    read_config,
    run_reader,
    wait_for,
)
from transforms import stopping


def active(client, stream: str) -> None:
    deadline = time.monotonic() + 20
    while (
        client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"]
        != "ACTIVE"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def split_first_shard(client, stream: str) -> str:
    first = client.list_shards(StreamName=stream)["Shards"][0]
    low = int(first["HashKeyRange"]["StartingHashKey"])
    high = int(first["HashKeyRange"]["EndingHashKey"])
    client.split_shard(
        StreamName=stream, ShardToSplit=first["ShardId"], NewStartingHashKey=str((low + high) // 2)
    )
    active(client, stream)
    return first["ShardId"]


def test_parent_is_read_to_its_end_before_its_children(kinesalite, tmp_path):
    client = aws_client("kinesis", kinesalite)
    client.create_stream(StreamName="s", ShardCount=2)
    active(client, "s")
    before = [f"before-{i}" for i in range(300)]
    put(client, "s", before, keys=64)
    parent = split_first_shard(client, "s")
    after = [f"after-{i}" for i in range(300)]
    put(client, "s", after, keys=64)
    shards = client.list_shards(StreamName="s")["Shards"]
    children = {s["ShardId"] for s in shards if s.get("ParentShardId") == parent}
    assert len(children) == 2

    out = tmp_path / "out"
    run_reader(
        read_config(kinesalite, max_records=100),
        lambda r: r | beam.ParDo(AppendToFile(out, lambda x: f"{x.shard_id} {x.data.decode()}")),
    )
    rows = [line.split() for line in lines_of(out)]
    values = [v for _, v in rows]
    assert sorted(values) == sorted(before + after) and len(values) == len(set(values))
    order = [shard for shard, _ in rows]
    assert any(shard in children for shard in order), "the children were read"
    last_parent = max(i for i, shard in enumerate(order) if shard == parent)
    first_child = min(i for i, shard in enumerate(order) if shard in children)
    assert last_parent < first_child


def test_a_split_during_a_live_run_loses_and_duplicates_nothing(kinesalite, tmp_path):
    client = aws_client("kinesis", kinesalite)
    client.create_stream(StreamName="s", ShardCount=2)
    active(client, "s")
    first = [f"first-{i}" for i in range(200)]
    second = [f"second-{i}" for i in range(200)]
    config = read_config(
        kinesalite, initial_position="TRIM_HORIZON", stop_at_latest=False, idle_poll_seconds=0.3
    )

    def during(path):
        put(client, "s", first, keys=64)
        wait_for(lambda: len(lines_of(path)) >= len(first))
        split_first_shard(client, "s")
        put(client, "s", second, keys=64)
        wait_for(lambda: len(lines_of(path)) >= len(first) + len(second))
        time.sleep(1.0)  # anything duplicated would arrive now
        stopping.request_stop()

    out = collect_while_running(config, tmp_path / "out", during)
    assert sorted(out) == sorted(first + second)
    assert len(out) == len(set(out))
