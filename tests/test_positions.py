"""The position store of local runs: what it keeps, the lease, and where a restart resumes."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.kinesis import adopted_children, resumed_shards
from transforms.positions import (
    FilePositionStore,
    LeaseHeld,
    PositionStoreConfig,
    StoredShard,
    StreamLease,
    new_owner,
    position_store_from_options,
)

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/flowlogs"
SEQ = "49590338271490256608559692538361571095921575989136588898"  # 56 digits, as AWS writes them


def store(tmp_path, pipeline: str = "flowlogs") -> FilePositionStore:
    return FilePositionStore(tmp_path / "state" / "positions.sqlite", pipeline)


def test_positions_survive_reopening_and_never_move_back(tmp_path):
    first = store(tmp_path)
    first.save(ARN, {"shard-0": "200", "shard-1": SEQ})
    first.save(ARN, {"shard-0": "99"})  # a late finalizer of an earlier bundle
    first.close()

    again = store(tmp_path)
    assert again.load(ARN) == {"shard-0": StoredShard("200", False), "shard-1": StoredShard(SEQ, False)}
    again.save(ARN, {"shard-1": str(int(SEQ) + 1)}, finished=["shard-0"])
    again.save(ARN, {"shard-0": "300"})
    assert again.load(ARN)["shard-0"] == StoredShard("300", True), "finished stays finished"
    assert again.load(ARN)["shard-1"].sequence == str(int(SEQ) + 1), "compared as numbers"


def test_positions_are_kept_per_pipeline_and_stream(tmp_path):
    flowlogs, raw = store(tmp_path, "flowlogs"), store(tmp_path, "cloudwatch")
    flowlogs.save(ARN, {"shard-0": "5"})
    flowlogs.save(ARN + "-other", {"shard-0": "7"})
    assert raw.load(ARN) == {}
    assert flowlogs.load(ARN + "-other") == {"shard-0": StoredShard("7", False)}
    assert flowlogs.reset(ARN) == 1 and flowlogs.load(ARN) == {}
    assert flowlogs.load(ARN + "-other"), "a reset forgets one stream only"


def test_a_second_reader_is_refused_naming_the_holder_until_the_lease_expires(tmp_path):
    first, second = store(tmp_path), store(tmp_path)
    first.acquire(ARN, "host-a:100:x", seconds=0.5)
    with pytest.raises(LeaseHeld, match="flowlogs on .* is being read by host-a:100:x"):
        second.acquire(ARN, "host-b:200:y", seconds=0.5)
    assert first.renew(ARN, "host-a:100:x", seconds=0.5)
    time.sleep(0.6)
    second.acquire(ARN, "host-b:200:y", seconds=30)  # the holder died: its lease expired
    assert not first.renew(ARN, "host-a:100:x", seconds=0.5), "the old holder learns it lost the lease"
    second.release(ARN, "host-b:200:y")
    first.acquire(ARN, "host-a:100:x", seconds=30)


def _hold_and_die(path: str) -> None:
    FilePositionStore(path, "flowlogs").acquire(ARN, new_owner(), seconds=30.0)


def test_a_lease_is_renewed_while_the_run_lasts_and_given_back_at_its_end(tmp_path):
    config = PositionStoreConfig(str(tmp_path / "positions.sqlite"), "flowlogs", lease_seconds=0.6)
    lost = []
    with StreamLease(config, ARN, on_lost=lambda: lost.append(True)) as lease:
        time.sleep(1.5)  # longer than the lease: only renewals keep it
        with pytest.raises(LeaseHeld, match=lease.owner):
            config.open().acquire(ARN, "someone-else", seconds=5)
    config.open().acquire(ARN, "someone-else", seconds=5)
    assert lost == []


def test_the_lease_of_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path):
    path = str(tmp_path / "positions.sqlite")
    process = multiprocessing.get_context("spawn").Process(target=_hold_and_die, args=(path,))
    process.start()
    process.join()  # it took a 30 s lease, and died
    FilePositionStore(path, "flowlogs").acquire(ARN, new_owner(), seconds=5)

    elsewhere = FilePositionStore(path, "other")
    elsewhere.acquire(ARN, "another-host:1:x", seconds=30)
    with pytest.raises(LeaseHeld, match="another-host:1:x"):
        FilePositionStore(path, "other").acquire(ARN, new_owner(), seconds=5)


def listed(
    shard_id: str, parent: str | None = None, adjacent: str | None = None, closed: bool = False
) -> dict:
    shard = {"ShardId": shard_id, "SequenceNumberRange": {"StartingSequenceNumber": "1"}}
    if parent:
        shard["ParentShardId"] = parent
    if adjacent:
        shard["AdjacentParentShardId"] = adjacent
    if closed:
        shard["SequenceNumberRange"]["EndingSequenceNumber"] = "9"
    return shard


def test_a_restart_resumes_stored_shards_and_reads_children_only_after_their_parents():
    shards = [
        listed("a", closed=True),
        listed("b", closed=True),
        listed("a1", parent="a"),
        listed("a2", parent="a"),
        listed("b1", parent="b"),
        listed("new-root"),
    ]
    stored = {
        "a": StoredShard("10", True),
        "b": StoredShard("20", False),
        "new-root": StoredShard("5", False),
    }
    assert resumed_shards(shards, stored, "LATEST") == [
        ("b", "20", "TRIM_HORIZON"),  # resumes after its last delivered record
        ("a1", None, "TRIM_HORIZON"),  # its parent is finished: from its start
        ("a2", None, "TRIM_HORIZON"),
        ("new-root", "5", "TRIM_HORIZON"),
    ], "b1 waits for b, whose reader adopts it"


def test_a_child_whose_parent_aged_out_of_the_stream_is_read_from_its_start():
    shards = [listed("child", parent="gone")]
    assert resumed_shards(shards, {"gone": StoredShard("7", False)}, "LATEST") == [
        ("child", None, "TRIM_HORIZON")
    ]


def test_shards_never_stored_start_at_the_initial_position():
    shards = [listed("old", closed=True), listed("open")]
    stored = {"elsewhere": StoredShard("1", False)}
    assert resumed_shards(shards, stored, "LATEST") == [("open", None, "LATEST")]
    assert resumed_shards(shards, stored, "TRIM_HORIZON") == [
        ("old", None, "TRIM_HORIZON"),
        ("open", None, "TRIM_HORIZON"),
    ]


def test_a_merged_child_is_adopted_by_its_adjacent_parent_when_the_other_finished_before_a_restart():
    shards = [listed("p", closed=True), listed("q", closed=True), listed("pq", parent="p", adjacent="q")]
    assert adopted_children(shards, "q") == []
    assert adopted_children(shards, "q", finished=frozenset({"p"})) == ["pq"]
    stored = {"p": StoredShard("3", True), "q": StoredShard("4", False)}
    assert resumed_shards(shards, stored, "LATEST") == [("q", "4", "TRIM_HORIZON")]


def options(*args: str) -> PipelineOptions:
    return PipelineOptions(list(args))


def test_the_store_is_local_only_and_its_options_are_checked(tmp_path):
    config = position_store_from_options(options(f"--state_dir={tmp_path}/s"), "flowlogs", local=True)
    assert config == PositionStoreConfig(str(tmp_path / "s" / "positions.sqlite"), "flowlogs", 30.0)
    assert position_store_from_options(options(), "flowlogs", local=False) is None, "Flink checkpoints"
    assert position_store_from_options(options("--position_store=none"), "flowlogs", local=True) is None
    with pytest.raises(ValueError, match="--state_dir=/proc/self/x: /proc/self is not a writable directory"):
        position_store_from_options(options("--state_dir=/proc/self/x"), "flowlogs", local=True)
    with pytest.raises(ValueError, match="--lease_seconds=1.0 is too short"):
        position_store_from_options(options("--lease_seconds=1"), "flowlogs", local=True)
