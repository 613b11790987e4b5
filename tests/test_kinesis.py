"""ReadFromKinesis: positions, exactly-once reading, Kinesis limits, resharding."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.runners import LOCAL_RUNNER
from tests.conftest import REGION, aws_client
from tests.faultproxy import FaultPolicy, KinesisFaultProxy
from transforms import stopping
from transforms.aws import AwsConfig
from transforms.kinesis import (
    Advance,
    Finish,
    KinesisReadConfig,
    KinesisRestriction,
    KinesisShardsTracker,
    ReadFromKinesis,
    ShardEnded,
    ShardPosition,
    adopted_children,
    kinesis_config_from_options,
    starting_shards,
)


def read_config(endpoint: str, stream: str = "s", **kwargs) -> KinesisReadConfig:
    aws = AwsConfig(
        region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
    )
    kwargs.setdefault("initial_position", "TRIM_HORIZON")
    kwargs.setdefault("stop_at_latest", True)
    return KinesisReadConfig(stream=stream, aws=aws, **kwargs)


def put(client, stream: str, values: list[str], keys: int = 16) -> None:
    for offset in range(0, len(values), 500):
        chunk = values[offset : offset + 500]
        client.put_records(
            StreamName=stream,
            Records=[{"Data": v.encode(), "PartitionKey": f"key-{hash(v) % keys}"} for v in chunk],
        )


class AppendToFile(beam.DoFn):
    """A real sink the test can read while the pipeline runs (DoFns are pickled, lists are not shared)."""

    def __init__(self, path, fmt):
        self._path = str(path)
        self._fmt = fmt

    def process(self, record):
        with open(self._path, "a") as out:
            out.write(self._fmt(record) + "\n")


def lines_of(path) -> list[str]:
    try:
        return open(path).read().splitlines()
    except FileNotFoundError:
        return []


def run_reader(config: KinesisReadConfig, check=None) -> beam.runners.runner.PipelineResult:
    options = PipelineOptions([f"--runner={LOCAL_RUNNER}", "--streaming"])
    pipeline = beam.Pipeline(options=options)
    records = pipeline | ReadFromKinesis(config)
    if check:
        check(records)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counter(result, name: str) -> int:
    found = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("kinesis").with_name(name))
    return sum(c.committed for c in found["counters"])


# --- restriction tracking --------------------------------------------------------------------------


def test_tracker_applies_claims_and_checkpoints_the_rest():
    r = KinesisRestriction("s", (ShardPosition("a"), ShardPosition("b")))
    tracker = KinesisShardsTracker(r)
    assert tracker.try_claim(Advance(replace(r.shards[0], after_sequence="7")))
    primary, residual = tracker.try_split(0)
    assert primary.done and not primary.shards
    assert residual.shard("a").after_sequence == "7" and residual.shard("b") is not None
    assert not tracker.try_claim(Advance(ShardPosition("a", after_sequence="9"))), (
        "claims after a checkpoint fail"
    )
    tracker.check_done()


def test_tracker_replaces_an_ended_shard_by_its_children_and_refuses_to_end_unfinished():
    tracker = KinesisShardsTracker(KinesisRestriction("s", (ShardPosition("parent"),)))
    assert tracker.try_claim(ShardEnded("parent", (ShardPosition("c1"), ShardPosition("c2"))))
    assert [s.shard_id for s in tracker.current_restriction().shards] == ["c1", "c2"]
    with pytest.raises(ValueError, match="c1, c2"):
        tracker.check_done()
    assert tracker.try_claim(Finish())
    tracker.check_done()
    assert tracker.try_split(0.5) is None


def shard(shard_id, parent=None, adjacent=None, closed=False):
    s = {"ShardId": shard_id, "SequenceNumberRange": {"StartingSequenceNumber": "1"}}
    if closed:
        s["SequenceNumberRange"]["EndingSequenceNumber"] = "99"
    if parent:
        s["ParentShardId"] = parent
    if adjacent:
        s["AdjacentParentShardId"] = adjacent
    return s


def test_lineage_roots_parents_first_and_merged_children_have_one_owner():
    shards = [
        shard("p0", closed=True),
        shard("p1", closed=True),
        shard("c0", parent="p0"),
        shard("c1", parent="p0"),
        shard("m", parent="p1", adjacent="c9"),
    ]
    assert starting_shards(shards, "TRIM_HORIZON") == ["p0", "p1"]
    assert starting_shards(shards, "LATEST") == ["c0", "c1", "m"]
    assert adopted_children(shards, "p0") == ["c0", "c1"]
    merged = [shard("a", closed=True), shard("b", closed=True), shard("ab", parent="a", adjacent="b")]
    assert adopted_children(merged, "a") == ["ab"]
    assert adopted_children(merged, "b") == [], "only the ParentShardId's reader adopts a merged child"


# --- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--stream_name is required"),
        (["--stream_name=s", "--initial_position=AT_TIMESTAMP"], "--initial_timestamp"),
        (["--stream_name=s", "--initial_position=AT_TIMESTAMP", "--initial_timestamp=yesterday"], "ISO-8601"),
        (["--stream_name=s", "--kinesis_max_records=20000"], "--kinesis_max_records"),
        (["--stream_name=s", "--kinesis_max_polls_per_second=10"], "--kinesis_max_polls_per_second"),
    ],
)
def test_bad_reader_options_fail_naming_the_option(args, message):
    with pytest.raises(ValueError, match=message):
        kinesis_config_from_options(PipelineOptions(args), AwsConfig(region=REGION))


def test_at_timestamp_accepts_iso_and_epoch_seconds():
    aws = AwsConfig(region=REGION)
    iso = ["--stream_name=s", "--initial_position=AT_TIMESTAMP", "--initial_timestamp=2026-11-27T08:00:00Z"]
    assert kinesis_config_from_options(PipelineOptions(iso), aws).initial_timestamp == 1795766400.0
    epoch = iso[:2] + ["--initial_timestamp=1795766400.5"]
    assert kinesis_config_from_options(PipelineOptions(epoch), aws).initial_timestamp == 1795766400.5


# --- reading from moto -------------------------------------------------------------------------------


def test_reads_every_record_of_every_shard_once_with_its_coordinates(moto, tmp_path):
    client = aws_client("kinesis", moto)
    client.create_stream(StreamName="s", ShardCount=2)
    values = [f"record-{i}" for i in range(3000)]
    put(client, "s", values)

    def check(records):
        assert_that(records | beam.Map(lambda r: r.data.decode()), equal_to(values))
        assert_that(
            records | beam.Map(lambda r: (r.stream, r.shard_id.startswith("shardId-"), r.partition_key[:4])),
            equal_to([("s", True, "key-")] * len(values)),
            label="coordinates",
        )
        records | beam.ParDo(AppendToFile(tmp_path / "seen", lambda r: f"{r.shard_id} {r.arrival_time}"))

    result = run_reader(read_config(moto), check)
    assert counter(result, "records") == 3000
    assert counter(result, "bytes") == sum(len(v) for v in values)
    seen = [line.split() for line in lines_of(tmp_path / "seen")]
    assert {shard for shard, _ in seen} == {"shardId-000000000000", "shardId-000000000001"}
    assert all(float(arrival) > time.time() - 300 for _, arrival in seen)


def test_one_restriction_for_all_shards_reads_each_record_once(moto):
    client = aws_client("kinesis", moto)
    client.create_stream(StreamName="s", ShardCount=3)
    values = [f"record-{i}" for i in range(900)]
    put(client, "s", values)
    config = read_config(moto, split_shards=False, max_records=100)
    run_reader(config, lambda r: assert_that(r | beam.Map(lambda x: x.data.decode()), equal_to(values)))


def test_at_timestamp_skips_what_arrived_before(moto):
    client = aws_client("kinesis", moto)
    client.create_stream(StreamName="s", ShardCount=1)
    put(client, "s", [f"old-{i}" for i in range(50)])
    time.sleep(1.2)
    cut = time.time()
    time.sleep(0.2)
    put(client, "s", [f"new-{i}" for i in range(50)])
    config = read_config(moto, initial_position="AT_TIMESTAMP", initial_timestamp=cut)
    run_reader(
        config,
        lambda r: assert_that(
            r | beam.Map(lambda x: x.data.decode()), equal_to([f"new-{i}" for i in range(50)])
        ),
    )


def collect_while_running(config: KinesisReadConfig, path, action) -> list[str]:
    """Runs the reader (streaming, no stop) while `action(path)` writes and then stops it."""
    worker = threading.Thread(target=action, args=(path,), daemon=True)
    worker.start()
    options = PipelineOptions([f"--runner={LOCAL_RUNNER}", "--streaming"])
    with beam.Pipeline(options=options) as pipeline:
        pipeline | ReadFromKinesis(config) | beam.ParDo(AppendToFile(path, lambda r: r.data.decode()))
    worker.join(timeout=5)
    return lines_of(path)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("split_shards", [True, False], ids=["reader-per-shard", "one-reader"])
def test_latest_reads_only_new_records_live_and_stops_on_request(moto, tmp_path, split_shards):
    client = aws_client("kinesis", moto)
    client.create_stream(StreamName="s", ShardCount=2)
    put(client, "s", [f"before-{i}" for i in range(20)])
    config = read_config(
        moto,
        initial_position="LATEST",
        stop_at_latest=False,
        idle_poll_seconds=0.5,
        split_shards=split_shards,
    )
    latencies = []

    def writer(path):
        time.sleep(1.5)
        for i in range(5):
            written = time.monotonic()
            put(client, "s", [f"after-{i}"])
            wait_for(lambda i=i: f"after-{i}" in lines_of(path))
            latencies.append(time.monotonic() - written)
        stopping.request_stop()

    started = time.monotonic()
    out = collect_while_running(config, tmp_path / "out", writer)
    assert sorted(out) == [f"after-{i}" for i in range(5)]
    assert max(latencies) < 3.0, latencies
    assert time.monotonic() - started < 30


def test_idle_stream_is_not_busy_polled(moto, tmp_path):
    client = aws_client("kinesis", moto)
    client.create_stream(StreamName="s", ShardCount=2)
    with KinesisFaultProxy(moto, FaultPolicy()) as proxy:
        config = read_config(
            proxy.url, initial_position="LATEST", stop_at_latest=False, idle_poll_seconds=1.0
        )

        def idle(path):
            time.sleep(4)
            stopping.request_stop()

        cpu = time.process_time()
        collect_while_running(config, tmp_path / "out", idle)
        cpu = time.process_time() - cpu
    calls = sum(len(t) for t in proxy.polls.values())
    assert calls <= 2 * 6, f"{calls} GetRecords calls on 2 idle shards in 4 s"
    assert cpu < 2.5, f"{cpu:.2f} s of CPU for 4 s of idling"


def test_throttling_and_expired_iterators_lose_and_duplicate_nothing(moto):
    client = aws_client("kinesis", moto)
    client.create_stream(StreamName="s", ShardCount=2)
    values = [f"r{i}" for i in range(400)]
    put(client, "s", values)
    with KinesisFaultProxy(moto, FaultPolicy(throttle_every=3, expire_after=2)) as proxy:
        config = read_config(proxy.url, max_records=50)
        result = run_reader(
            config, lambda r: assert_that(r | beam.Map(lambda x: x.data.decode()), equal_to(values))
        )
    assert proxy.injected["ProvisionedThroughputExceededException"] >= 3
    assert proxy.injected["ExpiredIteratorException"] == 2
    assert counter(result, "throttles") == proxy.injected["ProvisionedThroughputExceededException"]
    assert counter(result, "iterator_renewals") == 2
    assert max(proxy.max_polls_per_second().values()) <= 5


def test_get_records_rate_stays_within_five_per_second_per_shard(moto):
    client = aws_client("kinesis", moto)
    client.create_stream(StreamName="s", ShardCount=2)
    put(client, "s", [f"r{i}" for i in range(2000)])
    with KinesisFaultProxy(moto, FaultPolicy()) as proxy:
        run_reader(read_config(proxy.url, max_records=40))
    rates = proxy.max_polls_per_second()
    assert sum(len(t) for t in proxy.polls.values()) >= 50, "enough calls to measure a rate"
    assert 4 <= max(rates.values()) <= 5, rates
