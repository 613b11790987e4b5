"""The position store of local runs: what it keeps, the lease, and where a restart resumes."""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import replace

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.flowlogs import run as flowlogs_main
from tests.conftest import REGION, aws_client
from transforms.aws import AwsConfig
from transforms.kinesis import adopted_children, resumed_shards
from transforms.positions import (
    LeaseHeld,
    PositionStoreConfig,
    StoredShard,
    StreamLease,
    new_owner,
    position_store_from_options,
)
from transforms.positions_dynamodb import ensure_table

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/flowlogs"
SEQ = "49590338271490256608559692538361571095921575989136588898"  # 56 digits, as AWS writes them


@pytest.fixture(params=["file", "dynamodb"])
def store_config(request, tmp_path) -> PositionStoreConfig:
    """Each store kind: a SQLite file, and a DynamoDB table on moto (created by the store's check)."""
    if request.param == "file":
        return PositionStoreConfig(str(tmp_path / "state" / "positions.sqlite"), "flowlogs")
    moto = request.getfixturevalue("moto")
    aws = AwsConfig(region=REGION, endpoint_url=moto, access_key_id="testing", secret_access_key="testing")
    ensure_table(aws, "positions", create=True)
    return PositionStoreConfig(None, "flowlogs", table="positions", aws=aws)


@pytest.fixture
def store(store_config):
    def open_store(pipeline: str = "flowlogs"):
        return replace(store_config, pipeline=pipeline).open()

    return open_store


def test_positions_survive_reopening_and_never_move_back(store):
    first = store()
    first.save(ARN, {"shard-0": "200", "shard-1": SEQ})
    first.save(ARN, {"shard-0": "99"})  # a late finalizer of an earlier bundle
    first.close()

    again = store()
    assert again.load(ARN) == {"shard-0": StoredShard("200", False), "shard-1": StoredShard(SEQ, False)}
    again.save(ARN, {"shard-1": str(int(SEQ) + 1)}, finished=["shard-0"])
    again.save(ARN, {"shard-0": "300"})
    assert again.load(ARN)["shard-0"] == StoredShard("300", True), "finished stays finished"
    assert again.load(ARN)["shard-1"].sequence == str(int(SEQ) + 1), "compared as numbers"


def test_positions_are_kept_per_pipeline_and_stream(store):
    flowlogs, raw = store("flowlogs"), store("cloudwatch")
    flowlogs.save(ARN, {"shard-0": "5"})
    flowlogs.save(ARN + "-other", {"shard-0": "7"})
    assert raw.load(ARN) == {}
    assert flowlogs.load(ARN + "-other") == {"shard-0": StoredShard("7", False)}
    assert flowlogs.reset(ARN) == 1 and flowlogs.load(ARN) == {}
    assert flowlogs.load(ARN + "-other"), "a reset forgets one stream only"


def test_a_second_reader_is_refused_naming_the_holder_until_the_lease_expires(store):
    first, second = store(), store()
    first.acquire(ARN, "host-a:100:x", seconds=0.5)
    with pytest.raises(LeaseHeld, match="flowlogs on .* is being read by host-a:100:x"):
        second.acquire(ARN, "host-b:200:y", seconds=0.5)
    assert first.renew(ARN, "host-a:100:x", seconds=0.5)
    time.sleep(0.6)
    second.acquire(ARN, "host-b:200:y", seconds=30)  # the holder died: its lease expired
    assert not first.renew(ARN, "host-a:100:x", seconds=0.5), "the old holder learns it lost the lease"
    second.release(ARN, "host-b:200:y")
    first.acquire(ARN, "host-a:100:x", seconds=30)


def _hold_and_die(config: PositionStoreConfig) -> None:
    config.open().acquire(ARN, new_owner(), seconds=30.0)


def test_a_lease_is_renewed_while_the_run_lasts_and_given_back_at_its_end(store_config):
    config = replace(store_config, lease_seconds=0.6)
    lost = []
    with StreamLease(config, ARN, on_lost=lambda: lost.append(True)) as lease:
        time.sleep(1.5)  # longer than the lease: only renewals keep it
        with pytest.raises(LeaseHeld, match=lease.owner):
            config.open().acquire(ARN, "someone-else", seconds=5)
    config.open().acquire(ARN, "someone-else", seconds=5)
    assert lost == []


def test_the_lease_of_a_dead_process_of_this_host_is_taken_over_at_once(store_config, store):
    process = multiprocessing.get_context("spawn").Process(target=_hold_and_die, args=(store_config,))
    process.start()
    process.join()  # it took a 30 s lease, and died
    assert process.exitcode == 0
    store().acquire(ARN, new_owner(), seconds=5)

    elsewhere = store("other")
    elsewhere.acquire(ARN, "another-host:1:x", seconds=30)
    with pytest.raises(LeaseHeld, match="another-host:1:x"):
        store("other").acquire(ARN, new_owner(), seconds=5)


def test_a_reset_forgets_every_shard_of_the_stream(store):
    positions = store()
    positions.save(
        ARN, {f"shardId-{i:012d}": str(i + 1) for i in range(60)}, finished=["shardId-000000000001"]
    )
    positions.save(ARN + "-other", {"shard-0": "1"})
    assert len(positions.load(ARN)) == 60
    assert positions.reset(ARN) == 60
    assert positions.load(ARN) == {} and len(positions.load(ARN + "-other")) == 1


def test_a_dynamodb_table_is_created_when_missing_and_checked_when_present(moto):
    aws = AwsConfig(region=REGION, endpoint_url=moto, access_key_id="testing", secret_access_key="testing")
    with pytest.raises(
        ValueError, match="--position_table=missing does not exist.*--no_create_position_table"
    ):
        ensure_table(aws, "missing", create=False)
    ensure_table(aws, "made", create=True)
    ensure_table(aws, "made", create=False)
    aws_client("dynamodb", moto).create_table(
        TableName="other-schema",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ValueError, match="--position_table=other-schema has the key schema"):
        ensure_table(aws, "other-schema", create=True)
    config = position_store_from_options(
        options("--position_store=dynamodb", "--position_table=from-options"), "flowlogs", True, aws
    )
    assert config.where == "the DynamoDB table from-options"
    assert "from-options" in aws_client("dynamodb", moto).list_tables()["TableNames"]


def test_the_dynamodb_store_keeps_sequence_numbers_longer_than_a_dynamodb_number(store_config):
    longest = "1" + "9" * 128  # the most digits AWS allows
    positions = store_config.open()
    positions.save(ARN, {"shard-0": SEQ})
    positions.save(ARN, {"shard-0": longest})
    positions.save(ARN, {"shard-0": str(int(SEQ) * 10)})  # more digits than SEQ, fewer than longest
    assert positions.load(ARN)["shard-0"].sequence == longest


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


def test_the_iam_policy_grants_the_position_table(capsys):
    assert flowlogs_main(["--print_iam_policy", "--position_store=dynamodb", "--region=eu-west-1"]) == 0
    statements = json.loads(capsys.readouterr().out)["pipeline"]["Statement"]
    table = next(s for s in statements if s["Sid"] == "ReadingPositionsTable")
    assert table["Resource"] == "arn:aws:dynamodb:eu-west-1:*:table/aws-gelf-pipelines-positions"
    assert {"dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:CreateTable"} <= set(table["Action"])
    assert (
        flowlogs_main(["--print_iam_policy", "--position_store=dynamodb", "--no_create_position_table"]) == 0
    )
    statements = json.loads(capsys.readouterr().out)["pipeline"]["Statement"]
    assert (
        "dynamodb:CreateTable"
        not in next(s for s in statements if s["Sid"] == "ReadingPositionsTable")["Action"]
    )
    assert flowlogs_main(["--print_iam_policy"]) == 0
    assert "ReadingPositionsTable" not in capsys.readouterr().out, "the file store needs no AWS permission"


def test_under_latest_the_children_of_a_closed_shard_never_read_start_themselves():
    shards = [listed("quiet", closed=True), listed("q1", parent="quiet"), listed("q2", parent="quiet")]
    stored = {"elsewhere": StoredShard("1", False)}
    assert resumed_shards(shards, stored, "LATEST") == [("q1", None, "LATEST"), ("q2", None, "LATEST")]
    assert resumed_shards(shards, stored, "TRIM_HORIZON") == [("quiet", None, "TRIM_HORIZON")]
