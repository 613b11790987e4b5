"""Resharding while a local run is down: after the restart nothing is lost, nothing sent twice after a clean
stop, and every shard's events reach the GELF receiver before any of its children's. Real processes of
pipelines.flowlogs on kinesalite (which, unlike moto, splits and merges shards and routes writes to the
children), a GELF TCP receiver, and each event counted by its own millisecond timestamp. The test writes
the CloudWatch Logs subscription records itself, each to a chosen shard (ExplicitHashKey; Kinesis answers
with the shard), so it knows the shard of every event and can check the order of arrival per lineage."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines.sample_data import cloudwatch_start_ms, subscription_payload
from tests.conftest import CREDENTIALS, REGION, REPO, NodeReceiver, aws_client
from tests.test_kinesis_resharding import active, split_first_shard
from tests.test_pipelines import LOG_GROUP, STREAM
from tests.test_restarts import flowlogs_args, start, wait_until
from transforms.kinesis import is_open, list_shards

pytestmark = pytest.mark.slow

EVENTS_PER_RECORD = 50
LINE = "2 123456789012 eni-0a1b2c3d 10.0.0.1 10.0.0.2 80 2264 6 10 840 1700000000 1700000060 ACCEPT OK"
# Slow enough that a SIGTERM lands while a shard still holds unread records: per shard 2 polls a second of
# 2 records (200 events a second).
SLOW = ("--kinesis_max_records=2", "--kinesis_max_polls_per_second=2")


@pytest.fixture
def env() -> dict[str, str]:
    """The pipeline's environment: kinesalite takes any credentials (no moto needed)."""
    return {**os.environ, **CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "PYTHONPATH": str(REPO)}


class NumberedWriter:
    """Writes flow-log events straight to the stream as subscription records (gzip JSON DATA_MESSAGE), each
    event with its own millisecond, each record to a chosen open shard; remembers every event's shard."""

    def __init__(self, client):
        self.client = client
        self.next_ms = cloudwatch_start_ms()
        self.shard_of: dict[int, str] = {}

    def write(self, shard_id: str, records: int) -> set[int]:
        shard = next(s for s in list_shards(self.client, STREAM) if s["ShardId"] == shard_id)
        assert is_open(shard), f"{shard_id} is closed: writes would go to its children"
        entries = []
        for _ in range(records):
            first, self.next_ms = self.next_ms, self.next_ms + EVENTS_PER_RECORD
            data = subscription_payload([LINE] * EVENTS_PER_RECORD, LOG_GROUP, start_ms=first, first_id=first)
            key = shard["HashKeyRange"]["StartingHashKey"]
            entries.append((first, {"Data": data, "PartitionKey": "k", "ExplicitHashKey": key}))
        written: set[int] = set()
        for offset in range(0, len(entries), 100):
            chunk = entries[offset : offset + 100]
            answer = self.client.put_records(StreamName=STREAM, Records=[e for _, e in chunk])
            assert answer["FailedRecordCount"] == 0, answer
            for (first, _), result in zip(chunk, answer["Records"], strict=True):
                assert result["ShardId"] == shard_id, result
                events = range(first, first + EVENTS_PER_RECORD)
                self.shard_of.update(dict.fromkeys(events, shard_id))
                written.update(events)
        return written


def create_stream(client, shards: int) -> list[str]:
    client.create_stream(StreamName=STREAM, ShardCount=shards)
    active(client, STREAM)
    return [s["ShardId"] for s in list_shards(client, STREAM)]


def children_of(client, parent: str) -> list[str]:
    return [
        s["ShardId"]
        for s in list_shards(client, STREAM)
        if parent in (s.get("ParentShardId"), s.get("AdjacentParentShardId"))
    ]


def merge(client, shard: str, adjacent: str) -> str:
    client.merge_shards(StreamName=STREAM, ShardToMerge=shard, AdjacentShardToMerge=adjacent)
    active(client, STREAM)
    (child,) = children_of(client, shard)
    return child


def arrived(receiver: NodeReceiver) -> list[int]:
    """Every event's millisecond, in the order the receiver got them (one TCP connection per run)."""
    return [round(m["timestamp"] * 1000) for m in receiver.messages() if "timestamp" in m]


def tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else ""


def run(args: list[str], env: dict, receiver: NodeReceiver, log_path: Path, expected: set[int]) -> float:
    """One run; returns its seconds. With --stop_at_latest it must end by itself, with 0. Otherwise it streams
    until every expected event arrived, and 2 s more (anything still coming would be a duplicate), and is
    stopped with SIGTERM, which must end it with 0."""
    began = time.monotonic()
    with open(log_path, "w") as log:
        process = start(args, env, log)
        if "--stop_at_latest" in args:
            try:
                code = process.wait(timeout=100)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"{log_path.name} did not end: {tail(log_path)}")
            assert code == 0, tail(log_path)
        else:
            try:
                wait_until(lambda: expected <= set(arrived(receiver)), 90, f"all {len(expected)} events")
                time.sleep(2)
            finally:
                sigterm(process, log_path)
    return time.monotonic() - began


def sigterm(process: subprocess.Popen, log_path: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, tail(log_path)


def parents_after_children(order: list[int], shard_of: dict[int, str], shards: list[dict]) -> list[str]:
    """Each (parent, child) pair where an event of the child arrived before the last event of the parent."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for index, ms in enumerate(order):
        shard = shard_of.get(ms)
        first.setdefault(shard, index)
        last[shard] = index
    wrong = []
    for shard in shards:
        child = shard["ShardId"]
        for parent in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")):
            if parent in last and child in first and first[child] < last[parent]:
                early = sum(1 for ms in order[: last[parent]] if shard_of.get(ms) == child)
                wrong.append(
                    f"{child} (child of {parent}): first event arrived #{first[child]}, before {parent}'s "
                    f"last #{last[parent]}; {early} of the child's events came before it"
                )
    return wrong


def judge(writer: NumberedWriter, order: list[int], what: str, duplicates_allowed: int = 0) -> dict:
    """Every written event arrived, none unknown, duplicates within bounds, parents before children."""
    counts = Counter(order)
    lost = len(set(writer.shard_of) - set(counts))
    unknown = len(set(counts) - set(writer.shard_of))
    duplicates = len(order) - len(counts)
    figures = {"sent": len(writer.shard_of), "received": len(order), "lost": lost, "duplicates": duplicates}
    print(f"\n{what}: {figures}")
    assert unknown == 0, f"{unknown} events that were never written"
    assert lost == 0, f"{what}: {lost} of {len(writer.shard_of)} events lost ({figures})"
    assert duplicates <= duplicates_allowed, f"{what}: {duplicates} duplicates ({figures})"
    wrong = parents_after_children(order, writer.shard_of, list_shards(writer.client, STREAM))
    assert not wrong, f"{what}: children read before their parents were drained: {wrong}"
    return figures


# How a run ends: by itself once caught up (--stop_at_latest), or streaming until every event arrived, then
# SIGTERM. Both stop cleanly, so the restart must send nothing twice.
ENDINGS = [
    pytest.param(("--stop_at_latest",), id="stop_at_latest"),
    pytest.param((), id="sigterm"),
]


@pytest.mark.parametrize("ending", ENDINGS)
def test_split_while_down_after_a_complete_run(kinesalite, env, tmp_path, ending):
    client = aws_client("kinesis", kinesalite)
    first, second = create_stream(client, 2)
    writer = NumberedWriter(client)
    writer.write(first, 20)
    writer.write(second, 20)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = flowlogs_args(kinesalite, receiver.port, tmp_path, "--kinesis_max_records=5", *ending)
        took = [run(args, env, receiver, tmp_path / "first.log", set(writer.shard_of))]
        assert len(arrived(receiver)) == 2_000
        parent = split_first_shard(client, STREAM)
        children = children_of(client, parent)
        assert len(children) == 2
        for shard in (*children, second):
            writer.write(shard, 10)
        took.append(run(args, env, receiver, tmp_path / "second.log", set(writer.shard_of)))
        order = arrived(receiver)
    finally:
        receiver.stop()
    judge(writer, order, f"split while down, runs of {took[0]:.1f} s and {took[1]:.1f} s")
    assert "resuming 2 from the positions" in (tmp_path / "second.log").read_text()
    assert {writer.shard_of[ms] for ms in order[2_000:]} == {*children, second}, "the restart read only new"


@pytest.mark.parametrize("ending", ENDINGS)
def test_merge_while_down_after_a_complete_run(kinesalite, env, tmp_path, ending):
    client = aws_client("kinesis", kinesalite)
    shards = create_stream(client, 3)
    writer = NumberedWriter(client)
    for shard in shards:
        writer.write(shard, 10)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = flowlogs_args(kinesalite, receiver.port, tmp_path, "--kinesis_max_records=5", *ending)
        took = [run(args, env, receiver, tmp_path / "first.log", set(writer.shard_of))]
        assert len(arrived(receiver)) == 1_500
        child = merge(client, shards[0], shards[1])
        writer.write(child, 10)
        writer.write(shards[2], 10)
        took.append(run(args, env, receiver, tmp_path / "second.log", set(writer.shard_of)))
        order = arrived(receiver)
    finally:
        receiver.stop()
    judge(writer, order, f"merge while down, runs of {took[0]:.1f} s and {took[1]:.1f} s")
    assert "resuming 3 from the positions" in (tmp_path / "second.log").read_text()
    assert {writer.shard_of[ms] for ms in order[1_500:]} == {child, shards[2]}, "the restart read only new"


def stop_partway(
    args: list[str], env: dict, receiver: NodeReceiver, log_path: Path, after: int, how: str = "SIGTERM"
) -> int:
    """Starts a streaming run, stops it with `how` once `after` events arrived; returns how many had."""
    with open(log_path, "w") as log:
        process = start(args, env, log)
        try:
            wait_until(lambda: len(arrived(receiver)) >= after, 90, f"{after} events")
        finally:
            if how == "SIGTERM":
                sigterm(process, log_path)
            else:
                process.kill()
                assert process.wait(timeout=30) == -signal.SIGKILL
    time.sleep(0.5)  # what was on its way to the receiver
    return len(arrived(receiver))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_split_while_down_with_unread_records_in_the_parent(kinesalite, env, tmp_path, how):
    client = aws_client("kinesis", kinesalite)
    first, second = create_stream(client, 2)
    writer = NumberedWriter(client)
    parent_events = writer.write(first, 40)
    writer.write(second, 10)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = flowlogs_args(kinesalite, receiver.port, tmp_path, *SLOW)
        before = stop_partway(args, env, receiver, tmp_path / "first.log", after=600, how=how)
        unread = len(parent_events - set(arrived(receiver)))
        assert unread >= 500, f"the first run read too far ({before} events) to test an unread parent"
        parent = split_first_shard(client, STREAM)
        assert parent == first
        children = children_of(client, parent)
        for shard in (*children, second):
            writer.write(shard, 10)
        took = run(args, env, receiver, tmp_path / "second.log", set(writer.shard_of))
        order = arrived(receiver)
    finally:
        receiver.stop()
    # A clean stop saved what it delivered; a kill may send again what one GetRecords call per shard read.
    bundle = 2 * 2 * EVENTS_PER_RECORD
    judge(
        writer,
        order,
        f"split while down, {how} after {before} events ({unread} of the parent's unread), "
        f"restart of {took:.1f} s",
        duplicates_allowed=0 if how == "SIGTERM" else bundle,
    )
    restart = {writer.shard_of[ms] for ms in order[before:]}
    assert {parent, *children} <= restart, "parent and children were both read by the restart"


def test_merge_while_down_with_unread_records_in_the_adjacent_parent(kinesalite, env, tmp_path):
    client = aws_client("kinesis", kinesalite)
    shard, adjacent = create_stream(client, 2)
    writer = NumberedWriter(client)
    writer.write(shard, 10)
    adjacent_events = writer.write(adjacent, 40)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = flowlogs_args(kinesalite, receiver.port, tmp_path, *SLOW)
        before = stop_partway(args, env, receiver, tmp_path / "first.log", after=600)
        unread = len(adjacent_events - set(arrived(receiver)))
        assert unread >= 500, f"the first run read too far ({before} events) to test an unread parent"
        child = merge(client, shard, adjacent)
        writer.write(child, 10)
        took = run(args, env, receiver, tmp_path / "second.log", set(writer.shard_of))
        order = arrived(receiver)
    finally:
        receiver.stop()
    judge(
        writer,
        order,
        f"merge while down, SIGTERM after {before} events ({unread} of the adjacent parent's unread), "
        f"restart of {took:.1f} s",
    )


def test_latest_restart_reads_the_children_of_a_shard_split_while_down(kinesalite, env, tmp_path):
    """The default --initial_position=LATEST: a quiet shard (nothing delivered, so no stored position) is
    split while the pipeline is down; what is written to its children after the restart must arrive.

    kinesalite never answers an AT_TIMESTAMP GetShardIterator on a shard without a record at or after that
    time: the quiet shard's first poll (LATEST is AT_TIMESTAMP of the start) waits out the reader's 30 s read
    timeout, and the first run reads the busy shard only after it (about 30 s of this test)."""
    client = aws_client("kinesis", kinesalite)
    quiet, busy = create_stream(client, 2)
    writer = NumberedWriter(client)
    receiver = NodeReceiver(tmp_path, "tcp")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    try:
        args = flowlogs_args(kinesalite, receiver.port, tmp_path, "--initial_position=LATEST")
        with open(first_log, "w") as log:
            process = start(args, env, log)
            try:
                wait_until(lambda: "starting 2 at LATEST" in first_log.read_text(), 60, "the reader")
                writer.write(busy, 10)
                wait_until(lambda: len(arrived(receiver)) >= 500, 60, "the busy shard's events")
            finally:
                sigterm(process, first_log)
        split_first_shard(client, STREAM)
        children = children_of(client, quiet)
        while_down = set().union(*(writer.write(c, 5) for c in children))
        with open(second_log, "w") as log:
            process = start(args, env, log)
            try:
                wait_until(lambda: "resuming" in second_log.read_text(), 60, "the restart's reader")
                time.sleep(1)
                later = writer.write(busy, 10)
                to_children = set().union(*(writer.write(c, 10) for c in children))
                wait_until(lambda: later <= set(arrived(receiver)), 60, "the busy shard's new events")
                deadline = time.monotonic() + 15
                while not to_children <= set(arrived(receiver)) and time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:
                sigterm(process, second_log)
        got = set(arrived(receiver))
    finally:
        receiver.stop()
    print(
        f"\nLATEST restart: {len(to_children & got)} of {len(to_children)} events written to the children "
        f"after the restart arrived; {len(while_down & got)} of {len(while_down)} written while down"
    )
    assert to_children <= got, tail(second_log)
