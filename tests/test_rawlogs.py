"""Raw CloudWatch Logs events → GELF: what the plugin's "AWS Logs" input sent, plus --parse_json."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.runners import LOCAL_RUNNER
from transforms.elements import DEAD_LETTER, LogEvent, LogEventBatch, SourceCoordinates
from transforms.rawlogs import DEFAULT_SOURCE, RawLogOptions, RawLogsToGelf, raw_event_gelf

SOURCE = SourceCoordinates("cwl", "shardId-000000000000", "42", "pk")


def batch(*messages: str, source: SourceCoordinates = SOURCE) -> LogEventBatch:
    return LogEventBatch(
        owner="123456789012",
        log_group="/app/web",
        log_stream="i-abc/stream1",
        subscription_filters=("to-kinesis",),
        events=tuple(LogEvent(str(i), 1700000000123 + i, m) for i, m in enumerate(messages)),
        source=source,
    )


def gelf(message: str, parse_json: bool = True, stream: str | None = "cwl") -> dict:
    b = batch(message)
    return raw_event_gelf(b.events[0], b, DEFAULT_SOURCE, stream, parse_json)


def additional(message: dict) -> dict:
    """The additional fields as Graylog stores them (one leading underscore removed)."""
    return {k[1:]: v for k, v in message.items() if k.startswith("_")}


def test_event_text_host_timestamp_and_aws_fields():
    text = "2024-05-01 12:00:00 ERROR  payment failed\n  at line 3  "

    message = gelf(text, parse_json=False)

    assert message["short_message"] == text
    assert message["host"] == "aws-raw-logs"
    assert message["timestamp"] == pytest.approx(1700000000.123)
    assert additional(message) == {
        "aws_log_group": "/app/web",
        "aws_log_stream": "i-abc/stream1",
        "aws_kinesis_stream": "cwl",
        "aws_owner": "123456789012",
    }


def test_kinesis_stream_field_only_when_known_and_host_can_be_overridden():
    b = batch("hello")

    message = raw_event_gelf(b.events[0], b, "web-logs", None, False)

    assert message["host"] == "web-logs"
    assert "aws_kinesis_stream" not in additional(message)


def test_json_object_without_parse_json_stays_text_only():
    message = gelf('{"user": "bob"}', parse_json=False)

    assert message["short_message"] == '{"user": "bob"}'
    assert "user" not in additional(message)


def test_parse_json_flattens_nested_objects_and_sends_lists_as_json_text():
    text = json.dumps(
        {
            "level_name": "info",
            "status": 200,
            "latency": 0.25,
            "http": {"method": "GET", "request": {"path": "/pay", "bytes": 512}},
            "tags": ["a", "b"],
            "empty": {},
            "ok": True,
            "missing": None,
        }
    )

    message = gelf(text)

    assert message["short_message"] == text
    fields = additional(message)
    assert fields["level_name"] == "info"
    assert fields["status"] == 200
    assert fields["latency"] == 0.25
    assert fields["http_method"] == "GET"
    assert fields["http_request_path"] == "/pay"
    assert fields["http_request_bytes"] == 512
    assert fields["tags"] == '["a","b"]'
    assert fields["empty"] == "{}"
    assert fields["ok"] == "true"
    assert "missing" not in fields


def test_json_keys_never_overwrite_our_fields_or_gelf_names():
    text = json.dumps(
        {
            "message": "inner text",
            "host": "web-1",
            "timestamp": "2024-05-01T12:00:00Z",
            "level": "INFO",
            "id": 7,
            "aws_log_group": "forged",
            "_aws_owner": "forged too",
            "gl2_source_input": "x",
            "json_host": "literal",
        }
    )

    message = gelf(text)

    assert (message["short_message"], message["host"]) == (text, "aws-raw-logs")
    assert message["timestamp"] == pytest.approx(1700000000.123)
    assert "level" not in message
    fields = additional(message)
    assert fields["aws_log_group"] == "/app/web"
    assert fields["aws_owner"] == "123456789012"
    assert fields["json_message"] == "inner text"
    assert fields["json_timestamp"] == "2024-05-01T12:00:00Z"
    assert fields["json_level"] == "INFO"
    assert fields["json_id"] == 7
    assert fields["json_aws_log_group"] == "forged"
    assert fields["json_gl2_source_input"] == "x"
    # First come, first served: "host" took json_host, so the literal json_host moves along.
    assert fields["json_host"] == "web-1"
    assert fields["json_json_host"] == "literal"
    assert "id" not in fields and "message" not in fields


def test_flattened_names_that_collide_keep_both_values():
    message = gelf(json.dumps({"a_b": 1, "a": {"b": 2}}))

    fields = additional(message)
    assert (fields["a_b"], fields["json_a_b"]) == (1, 2)


def test_names_that_collide_only_once_sanitised_do_not_overwrite_ours():
    message = gelf(json.dumps({"aws log/group": "forged", "user name": "bob"}))

    fields = additional(message)
    assert fields["aws_log_group"] == "/app/web"
    assert fields["json_aws_log_group"] == "forged"
    assert fields["user_name"] == "bob"


def test_absurdly_deep_json_is_sent_as_text():
    depth = 900
    text = '{"a":' * depth + "1" + "}" * depth

    message = gelf(text)

    assert message["short_message"] == text


@pytest.mark.parametrize(
    "text",
    [
        "plain text log line",
        "{not json at all",
        '["a", "json", "array"]',
        '"a JSON string"',
        '{"value": NaN}',
        '{"truncated": ',
    ],
)
def test_text_that_is_not_a_json_object_is_sent_as_is(text):
    message = gelf(text)

    assert message["short_message"] == text
    assert set(additional(message)) == {"aws_log_group", "aws_log_stream", "aws_kinesis_stream", "aws_owner"}


def test_parse_json_option():
    assert PipelineOptions([]).view_as(RawLogOptions).parse_json is False
    assert PipelineOptions(["--parse_json"]).view_as(RawLogOptions).parse_json is True


def test_dofn_gives_one_gelf_batch_per_log_event_batch():
    batches = [
        batch("plain", '{"user": "bob"}', '{"user": "eve"}'),
        batch(),
        batch("x", source=SourceCoordinates()),
    ]
    pipeline = beam.Pipeline(options=PipelineOptions([f"--runner={LOCAL_RUNNER}"]))
    to_gelf = RawLogsToGelf("web-logs", "configured-stream", parse_json=True)
    gelf_batches = (
        pipeline | beam.Create(batches) | beam.ParDo(to_gelf).with_outputs(DEAD_LETTER, main="gelf")
    )
    assert_that(
        gelf_batches.gelf
        | beam.Map(
            lambda payloads: [
                (m["host"], m["short_message"], m.get("_user"), m.get("_aws_kinesis_stream"))
                for m in map(json.loads, payloads)
            ]
        ),
        equal_to(
            [
                [
                    ("web-logs", "plain", None, "cwl"),
                    ("web-logs", '{"user": "bob"}', "bob", "cwl"),
                    ("web-logs", '{"user": "eve"}', "eve", "cwl"),
                ],
                [],
                [("web-logs", "x", None, "configured-stream")],
            ]
        ),
        label="one GELF batch per input batch",
    )
    assert_that(gelf_batches[DEAD_LETTER], equal_to([]), label="no dead letters")
    result = pipeline.run()
    result.wait_until_finish()

    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("rawlogs"))["counters"]
    }
    assert counters == {"events": 4, "json_events": 2}
