"""Decoding CloudWatch Logs subscription records: AWS-shaped, moto-shaped, real moto output, bad input."""

from __future__ import annotations

import gzip
import json
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.runners import LOCAL_RUNNER
from pipelines.sample_data import cloudwatch_start_ms, deliver_through_cloudwatch
from tests.conftest import aws_client
from transforms.cloudwatch import (
    MAX_DECOMPRESSED_BYTES,
    DecodeSubscription,
    SubscriptionDecodeError,
    decode_subscription,
)
from transforms.elements import DEAD_LETTER, KinesisRecord, LogEvent, LogEventBatch, SourceCoordinates

AWS_ID_1 = "36936507442150588624318098345281930829312306440440872960"
AWS_ID_2 = "36936507442150588624318098345281930829312306440440872961"


def data_message(events, **overrides) -> dict:
    payload = {
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": "/app/web",
        "logStream": "i-abc/stream1",
        "subscriptionFilters": ["to-kinesis"],
        "logEvents": events,
    }
    payload.update(overrides)
    return payload


CONTROL = {
    "messageType": "CONTROL_MESSAGE",
    "owner": "CloudwatchLogs",
    "logGroup": "",
    "logStream": "",
    "subscriptionFilters": [],
    "logEvents": [
        {
            "id": "",
            "timestamp": 1700000000000,
            "message": "CWL CONTROL MESSAGE: Checking health of destination Kinesis stream.",
        }
    ],
}


def gz(payload) -> bytes:
    return gzip.compress(payload if isinstance(payload, bytes) else json.dumps(payload).encode())


def record(data: bytes, seq: str = "1") -> KinesisRecord:
    return KinesisRecord("logs", "shardId-000000000000", seq, "pk", 1700000000.0, data)


def test_aws_shaped_data_message_keeps_56_digit_string_ids():
    source = SourceCoordinates(
        "logs", "shardId-000000000000", "49590338271490256608559692538361571095921575989136588898", "pk"
    )
    data = gz(
        data_message(
            [
                {"id": AWS_ID_1, "timestamp": 1700000000123, "message": "ERROR something broke"},
                {"id": AWS_ID_2, "timestamp": 1700000000124, "message": "INFO all good"},
            ]
        )
    )

    assert decode_subscription(data, source) == LogEventBatch(
        owner="123456789012",
        log_group="/app/web",
        log_stream="i-abc/stream1",
        subscription_filters=("to-kinesis",),
        events=(
            LogEvent(AWS_ID_1, 1700000000123, "ERROR something broke"),
            LogEvent(AWS_ID_2, 1700000000124, "INFO all good"),
        ),
        source=source,
    )


def test_moto_shaped_int_ids_become_text():
    data = gz(
        data_message([{"id": 0, "timestamp": 1, "message": "a"}, {"id": 17, "timestamp": 2, "message": "b"}])
    )

    batch = decode_subscription(data)

    assert [e.event_id for e in batch.events] == ["0", "17"]
    assert batch.source == SourceCoordinates()


def test_unknown_properties_are_ignored_and_unicode_survives():
    data = gz(
        data_message([{"id": "1", "timestamp": 5, "message": "héllo ✓", "extra": 1}], policyLevel="ACCOUNT")
    )

    assert decode_subscription(data).events == (LogEvent("1", 5, "héllo ✓"),)


def test_control_message_is_not_a_batch():
    assert decode_subscription(gz(CONTROL)) is None


def test_payload_written_by_moto_decodes_to_the_events_put(moto):
    kinesis, logs = aws_client("kinesis", moto), aws_client("logs", moto)
    kinesis.create_stream(StreamName="cwl", ShardCount=1)
    logs.create_log_group(logGroupName="/app/web")
    logs.create_log_stream(logGroupName="/app/web", logStreamName="i-abc/stream1")
    logs.put_subscription_filter(
        logGroupName="/app/web",
        filterName="to-kinesis",
        filterPattern="",
        destinationArn="arn:aws:kinesis:us-east-1:123456789012:stream/cwl",
        roleArn="arn:aws:iam::123456789012:role/cwl-to-kinesis",
    )
    now = int(time.time() * 1000)
    sent = [(now, "ERROR something broke"), (now + 1, '{"level": "info", "msg": "all good"}')]
    logs.put_log_events(
        logGroupName="/app/web",
        logStreamName="i-abc/stream1",
        logEvents=[{"timestamp": ts, "message": msg} for ts, msg in sent],
    )
    shard = kinesis.list_shards(StreamName="cwl")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName="cwl", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    (got,) = kinesis.get_records(ShardIterator=iterator["ShardIterator"])["Records"]

    batch = decode_subscription(
        got["Data"], SourceCoordinates("cwl", shard, got["SequenceNumber"], got["PartitionKey"])
    )

    assert (batch.log_group, batch.log_stream, batch.subscription_filters) == (
        "/app/web",
        "i-abc/stream1",
        ("to-kinesis",),
    )
    assert [(e.timestamp_ms, e.message) for e in batch.events] == sent
    assert all(e.event_id.isdigit() for e in batch.events)
    assert batch.source.sequence_number == got["SequenceNumber"]


BAD_INPUTS = {
    "not gzip": (json.dumps(data_message([])).encode(), "not gzip: payload starts with 7b22"),
    "empty record": (b"", "not gzip: payload starts with nothing"),
    "corrupt gzip": (gz(data_message([]))[:10] + b"\xff" * 30, "corrupt gzip"),
    "truncated gzip": (
        gz(data_message([{"id": "1", "timestamp": 1, "message": "x" * 500}]))[:-20],
        "truncated gzip",
    ),
    "trailing garbage": (
        gz(data_message([])) + b"garbage",
        "unexpected bytes after the end of the gzip data",
    ),
    "gzip of non-JSON": (gzip.compress(b"2024-01-01 plain text log line"), "not JSON"),
    "gzip of non-UTF-8": (gzip.compress(b"\xff\xfe\xfd{"), "not JSON"),
    "JSON array": (gz([data_message([])]), "JSON is list, expected an object"),
    "JSON string": (gz(b'"DATA_MESSAGE"'), "JSON is str, expected an object"),
    "missing messageType": (gz({"logEvents": []}), "missing messageType"),
    "unknown messageType": (gz(data_message([], messageType="DATA")), "unknown messageType 'DATA'"),
    "missing logEvents": (
        gz({k: v for k, v in data_message([]).items() if k != "logEvents"}),
        "missing logEvents",
    ),
    "logEvents not a list": (gz(data_message({"id": "1"})), "logEvents is dict, expected list"),
    "event not an object": (gz(data_message(["text"])), "logEvents[0] is str, expected object"),
    "timestamp as text": (
        gz(
            data_message(
                [
                    {"id": "1", "timestamp": 1, "message": "a"},
                    {"id": "2", "timestamp": "1700000000000", "message": "b"},
                ]
            )
        ),
        "logEvents[1].timestamp is str, expected int",
    ),
    "timestamp as float": (
        gz(data_message([{"id": "1", "timestamp": 1.5, "message": "a"}])),
        "logEvents[0].timestamp is float",
    ),
    "timestamp as bool": (
        gz(data_message([{"id": "1", "timestamp": True, "message": "a"}])),
        "logEvents[0].timestamp is bool",
    ),
    "message null": (
        gz(data_message([{"id": "1", "timestamp": 1, "message": None}])),
        "logEvents[0].message is null",
    ),
    "missing id": (gz(data_message([{"timestamp": 1, "message": "a"}])), "missing logEvents[0].id"),
    "id as float": (
        gz(data_message([{"id": 1.0, "timestamp": 1, "message": "a"}])),
        "logEvents[0].id is float",
    ),
    "logGroup as number": (gz(data_message([], logGroup=7)), "logGroup is int, expected str"),
    "filter not a string": (
        gz(data_message([], subscriptionFilters=["a", None])),
        "subscriptionFilters[1] is null",
    ),
}


@pytest.mark.parametrize("data, reason", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_rejected_with_its_reason(data, reason):
    with pytest.raises(SubscriptionDecodeError) as raised:
        decode_subscription(data)

    assert reason in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_gzip_bomb_is_refused_at_the_size_cap():
    at_cap = gzip.compress(b" " * (MAX_DECOMPRESSED_BYTES - 2) + b"[]", compresslevel=1)
    over_cap = gzip.compress(b" " * MAX_DECOMPRESSED_BYTES + b"[]", compresslevel=1)

    with pytest.raises(SubscriptionDecodeError, match="JSON is list"):
        decode_subscription(at_cap)
    with pytest.raises(
        SubscriptionDecodeError, match=f"decompressed payload exceeds {MAX_DECOMPRESSED_BYTES} bytes"
    ):
        decode_subscription(over_cap)


def test_dofn_gives_one_batch_per_record_and_dead_letters_with_coordinates():
    good = record(
        gz(data_message([{"id": i, "timestamp": 1000 + i, "message": f"m{i}"} for i in range(3)])), "1"
    )
    control = record(gz(CONTROL), "2")
    bad = record(b"not gzip at all", "3")
    options = PipelineOptions([f"--runner={LOCAL_RUNNER}"])

    pipeline = beam.Pipeline(options=options)
    outputs = (
        pipeline
        | beam.Create([good, control, bad])
        | beam.ParDo(DecodeSubscription()).with_outputs(DEAD_LETTER, main="batches")
    )
    assert_that(
        outputs.batches
        | "Summarise batches" >> beam.Map(lambda b: (b.source.sequence_number, len(b.events))),
        equal_to([("1", 3)]),
        label="batches",
    )
    assert_that(
        outputs[DEAD_LETTER]
        | "Summarise dead letters" >> beam.Map(lambda d: (d.stage, d.reason.split(":")[0], d.raw, d.source)),
        equal_to([("cloudwatch", "not gzip", b"not gzip at all", SourceCoordinates.of(bad))]),
        label="dead letters",
    )
    result = pipeline.run()
    result.wait_until_finish()

    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("cloudwatch"))["counters"]
    }
    assert counters == {"records": 3, "events": 3, "control_messages": 1, "decode_errors": 1}


def test_cloudwatch_logs_drops_events_older_than_fourteen_days_with_only_a_note(moto):
    """Why test data must be dated from the clock: an old event is not an error, it just never arrives."""
    logs = aws_client("logs", moto)
    logs.create_log_group(logGroupName="/app/old")
    logs.create_log_stream(logGroupName="/app/old", logStreamName="s")
    fifteen_days_ago = int((time.time() - 15 * 86400) * 1000)
    answer = logs.put_log_events(
        logGroupName="/app/old",
        logStreamName="s",
        logEvents=[{"timestamp": fifteen_days_ago, "message": "x"}],
    )
    assert "tooOldLogEventEndIndex" in answer["rejectedLogEventsInfo"]
    assert logs.get_log_events(logGroupName="/app/old", logStreamName="s")["events"] == []


@pytest.mark.parametrize(
    "age_seconds",
    [15 * 86400, 14 * 86400 + 60, -3 * 3600],
    ids=["15 days old", "just past 14 days", "3 h ahead"],
)
def test_delivering_events_cloudwatch_would_drop_is_refused_saying_why(moto, age_seconds):
    logs = aws_client("logs", moto)
    logs.create_log_group(logGroupName="/app/web")
    with pytest.raises(
        ValueError, match="outside what CloudWatch Logs accepts now.*last 14 days to 2 hours ahead"
    ):
        deliver_through_cloudwatch(logs, "/app/web", ["a", "b"], start_ms=cloudwatch_start_ms(age_seconds))


def test_events_dated_from_the_clock_are_all_accepted(moto):
    logs = aws_client("logs", moto)
    logs.create_log_group(logGroupName="/app/web")
    start_ms = cloudwatch_start_ms(13 * 86400)
    assert deliver_through_cloudwatch(logs, "/app/web", ["a", "b", "c"], batch_size=2, start_ms=start_ms) == 2
    events = logs.get_log_events(logGroupName="/app/web", logStreamName="eni-all", startFromHead=True)[
        "events"
    ]
    assert [(e["timestamp"], e["message"]) for e in events] == [
        (start_ms + i, m) for i, m in enumerate("abc")
    ]
