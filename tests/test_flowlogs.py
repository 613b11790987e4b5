"""VPC Flow Logs: format strings, line parsing, the plugin's summary line, and the DoFn in Beam."""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.runners import LOCAL_RUNNER
from transforms.elements import DEAD_LETTER, LogEvent, LogEventBatch, SourceCoordinates
from transforms.flowlogs import (
    DEFAULT_FORMAT,
    FIELDS,
    FlowLogOptions,
    FlowLogParseError,
    FlowLogsToGelf,
    flow_log_gelf,
    parse_flow_log,
    parse_format,
    short_message,
)
from transforms.protocols import PROTOCOL_NAMES, protocol_name

DEFAULT = parse_format(DEFAULT_FORMAT)

# The AWS documentation's own example records.
ACCEPT_LINE = (
    "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249"
    " 1418530010 1418530070 ACCEPT OK"
)
NODATA_LINE = "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA"
SKIPDATA_LINE = "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA"
IPV6_LINE = (
    "2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105"
    " 2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK"
)

#: The fields the Graylog plugin wrote for a flow log line (plus version, start and end, kept here).
PLUGIN_FIELDS = {
    "account_id",
    "interface_id",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol_number",
    "protocol",
    "packets",
    "bytes",
    "capture_window_duration_seconds",
    "action",
    "log_status",
}

ECS = "arn:aws:ecs:us-east-1:123456789010"

#: A plausible value for every field AWS documents, as it should come out of parsing; the line
#: carries its text.
SAMPLE: dict[str, object] = {
    "version": 11,
    "account-id": "123456789010",
    "interface-id": "eni-1235b8ca123456789",
    "srcaddr": "10.0.1.5",
    "dstaddr": "10.0.0.220",
    "srcport": 49153,
    "dstport": 443,
    "protocol": 6,
    "packets": 3,
    "bytes": 4096000000000,
    "start": 1620140661,
    "end": 1620140721,
    "action": "REJECT",
    "log-status": "OK",
    "vpc-id": "vpc-abcdefab012345678",
    "subnet-id": "subnet-aaaaaaaa012345678",
    "instance-id": "i-0c50d5961bcb2d47b",
    "tcp-flags": 19,
    "type": "IPv4",
    "pkt-srcaddr": "203.0.113.12",
    "pkt-dstaddr": "10.0.0.220",
    "region": "us-east-1",
    "az-id": "use1-az1",
    "sublocation-type": "outpost",
    "sublocation-id": "op-0123456789abcdef0",
    "pkt-src-aws-service": "S3",
    "pkt-dst-aws-service": "AMAZON",
    "flow-direction": "ingress",
    "traffic-path": 8,
    "ecs-cluster-arn": f"{ECS}:cluster/web",
    "ecs-cluster-name": "web",
    "ecs-container-instance-arn": f"{ECS}:container-instance/web/7f3e",
    "ecs-container-instance-id": "7f3e",
    "ecs-container-id": "3b9f0a",
    "ecs-second-container-id": "8c2d1e",
    "ecs-service-name": "frontend",
    "ecs-task-definition-arn": f"{ECS}:task-definition/frontend:3",
    "ecs-task-arn": f"{ECS}:task/web/5d2b",
    "ecs-task-id": "5d2b",
    "reject-reason": "BPA",
    "resource-id": "nat-0123456789abcdef0",
    "encryption-status": 1,
    "instance-tag": "team%3Dweb",
    "instance-tag-2": "prod",
    "interface-tag": "blue",
    "interface-tag-2": "green",
    "asg-tag": "web-asg",
    "asg-tag-2": "canary",
    "interface-type": "nat_gateway",
    "next-hop-interface-id": "eni-0fedcba9876543210",
    "next-hop-subnet-id": "subnet-bbbbbbbb012345678",
    "next-hop-az-id": "use1-az2",
    "next-hop-vpc-id": "vpc-0123456789abcdef0",
    "next-hop-interface-type": "vpc_endpoint",
}

V5_FIELDS = [name for name, spec in FIELDS.items() if spec.version <= 5]


def fmt_of(names) -> str:
    return " ".join(f"${{{name}}}" for name in names)


def line_of(names) -> str:
    return " ".join(str(SAMPLE[name]) for name in names)


def expected_record(names) -> dict[str, object]:
    record: dict[str, object] = {}
    for name in names:
        record[FIELDS[name].gelf_name] = SAMPLE[name]
    if "protocol" in names:
        record["protocol"] = "TCP"
    if "start" in names and "end" in names:
        record["capture_window_duration_seconds"] = 60
    return record


# --- the default (version 2) format ---------------------------------------------------------------


def test_default_line_has_the_plugin_values_with_their_types():
    record = parse_flow_log(ACCEPT_LINE, DEFAULT)

    assert record == {
        "version": 2,
        "account_id": "123456789010",
        "interface_id": "eni-1235b8ca123456789",
        "src_addr": "172.31.16.139",
        "dst_addr": "172.31.16.21",
        "src_port": 20641,
        "dst_port": 22,
        "protocol_number": 6,
        "protocol": "TCP",
        "packets": 20,
        "bytes": 4249,
        "start": 1418530010,
        "end": 1418530070,
        "capture_window_duration_seconds": 60,
        "action": "ACCEPT",
        "log_status": "OK",
    }
    integers = {
        "version",
        "src_port",
        "dst_port",
        "protocol_number",
        "packets",
        "bytes",
        "start",
        "end",
        "capture_window_duration_seconds",
    }
    for name, value in record.items():
        assert type(value) is (int if name in integers else str), name


def test_default_line_uses_the_plugin_field_names():
    assert PLUGIN_FIELDS <= set(parse_flow_log(ACCEPT_LINE, DEFAULT))


def test_default_line_short_message_is_the_plugins():
    assert short_message(parse_flow_log(ACCEPT_LINE, DEFAULT)) == (
        "eni-1235b8ca123456789 ACCEPT TCP 172.31.16.139:20641 -> 172.31.16.21:22"
    )


def test_default_format_is_the_14_version_2_fields():
    assert DEFAULT.fields == tuple(V5_FIELDS[:14])
    assert DEFAULT.version == 2
    assert str(DEFAULT) == DEFAULT_FORMAT


# --- custom formats -------------------------------------------------------------------------------


def test_every_v5_field_in_a_non_default_order():
    names = V5_FIELDS[::-1]  # log-status first, version last
    fmt = parse_format(fmt_of(names))

    assert fmt.version == 5
    assert parse_flow_log(line_of(names), fmt) == expected_record(names)


def test_every_supported_field_in_a_non_default_order():
    names = sorted(FIELDS)  # alphabetical: account-id, action, asg-tag, ..., vpc-id
    fmt = parse_format(fmt_of(names))
    record = parse_flow_log(line_of(names), fmt)

    assert record == expected_record(names)
    assert fmt.version == 11
    assert record["ecs_cluster_arn"] == f"{ECS}:cluster/web"
    assert record["ecs_second_container_id"] == "8c2d1e"
    assert record["reject_reason"] == "BPA"
    assert record["encryption_status"] == 1
    assert record["pkt_src_addr"] == "203.0.113.12"


def test_the_field_table_covers_every_documented_version():
    by_version: dict[int, list[str]] = {}
    for name, spec in FIELDS.items():
        by_version.setdefault(spec.version, []).append(name)

    assert {v: len(names) for v, names in by_version.items()} == {
        2: 14,
        3: 7,
        4: 4,
        5: 4,
        7: 10,
        8: 1,
        9: 1,
        10: 1,
        11: 12,
    }
    assert by_version[8] == ["reject-reason"]
    assert all(name.startswith("ecs-") for name in by_version[7])


@pytest.mark.parametrize(
    ("aws_name", "gelf_name"),
    [
        ("vpc-id", "vpc_id"),
        ("subnet-id", "subnet_id"),
        ("instance-id", "instance_id"),
        ("tcp-flags", "tcp_flags"),
        ("type", "type"),
        ("pkt-srcaddr", "pkt_src_addr"),
        ("pkt-dstaddr", "pkt_dst_addr"),
        ("az-id", "az_id"),
        ("sublocation-type", "sublocation_type"),
        ("pkt-src-aws-service", "pkt_src_aws_service"),
        ("flow-direction", "flow_direction"),
        ("traffic-path", "traffic_path"),
        ("ecs-task-definition-arn", "ecs_task_definition_arn"),
        ("reject-reason", "reject_reason"),
    ],
)
def test_newer_fields_are_named_in_snake_case(aws_name, gelf_name):
    assert FIELDS[aws_name].gelf_name == gelf_name


def test_integer_fields_are_numbers_and_the_rest_strings():
    record = parse_flow_log(line_of(FIELDS), parse_format(fmt_of(FIELDS)))

    for name, spec in FIELDS.items():
        assert isinstance(record[spec.gelf_name], int if spec.kind != "string" else str), name
    assert [name for name, spec in FIELDS.items() if spec.kind != "string"] == [
        "version",
        "srcport",
        "dstport",
        "protocol",
        "packets",
        "bytes",
        "start",
        "end",
        "tcp-flags",
        "traffic-path",
        "encryption-status",
    ]


# --- "-" means absent -----------------------------------------------------------------------------


@pytest.mark.parametrize("absent", list(FIELDS))
def test_a_dash_leaves_the_field_out_never_zero(absent):
    names = list(FIELDS)
    line = " ".join("-" if name == absent else str(SAMPLE[name]) for name in names)

    record = parse_flow_log(line, parse_format(fmt_of(names)))

    assert FIELDS[absent].gelf_name not in record
    if absent == "protocol":
        assert "protocol" not in record
    if absent in ("start", "end"):
        assert "capture_window_duration_seconds" not in record
    assert len(record) == len(expected_record([n for n in names if n != absent]))


def test_a_line_of_dashes_is_an_empty_record():
    names = list(FIELDS)
    assert parse_flow_log(" ".join("-" for _ in names), parse_format(fmt_of(names))) == {}


def test_nodata_record_is_kept_with_its_status():
    record = parse_flow_log(NODATA_LINE, DEFAULT)

    assert record == {
        "version": 2,
        "account_id": "123456789010",
        "interface_id": "eni-1235b8ca123456789",
        "start": 1431280876,
        "end": 1431280934,
        "capture_window_duration_seconds": 58,
        "log_status": "NODATA",
    }
    assert short_message(record) == "eni-1235b8ca123456789 NODATA"


def test_skipdata_record_is_kept_with_its_status():
    record = parse_flow_log(SKIPDATA_LINE, DEFAULT)

    assert record["log_status"] == "SKIPDATA"
    assert "src_addr" not in record and "packets" not in record
    assert short_message(record) == "eni-11111111aaaaaaaaa SKIPDATA"


# --- addresses, protocols, short messages ---------------------------------------------------------


def test_ipv6_addresses_are_kept_and_bracketed_in_the_short_message():
    record = parse_flow_log(IPV6_LINE, DEFAULT)

    assert record["src_addr"] == "2001:db8:1234:a100:8d6e:3477:df66:f105"
    assert record["dst_addr"] == "2001:db8:1234:a102:3304:8879:34cf:4071"
    assert short_message(record) == (
        "eni-1235b8ca123456789 ACCEPT TCP [2001:db8:1234:a100:8d6e:3477:df66:f105]:34892"
        " -> [2001:db8:1234:a102:3304:8879:34cf:4071]:22"
    )


def test_unknown_protocol_number_is_named_unknown():
    record = parse_flow_log(ACCEPT_LINE.replace(" 22 6 20 ", " 22 253 20 "), DEFAULT)

    assert record["protocol_number"] == 253
    assert record["protocol"] == "UNKNOWN"
    assert (
        short_message(record) == "eni-1235b8ca123456789 ACCEPT UNKNOWN 172.31.16.139:20641 -> 172.31.16.21:22"
    )


def test_protocol_table_is_the_plugins():
    assert len(PROTOCOL_NAMES) == 137
    assert [protocol_name(n) for n in (0, 1, 6, 17, 41, 47, 50, 58, 93, 107, 132, 138, 254)] == [
        "IP",
        "ICMP",
        "TCP",
        "UDP",
        "IPV6",
        "GRE",
        "ESP",
        "IPV6-ICMP",
        "AX.25",
        "A/N",
        "SCTP",
        "manet",
        "DIVERT",
    ]
    assert [protocol_name(n) for n in (61, 63, 99, 114, 143, 255, -1)] == ["UNKNOWN"] * 7


def test_short_message_without_interface_id_names_the_resource():
    names = ["resource-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "action"]
    record = parse_flow_log(line_of(names), parse_format(fmt_of(names)))

    assert short_message(record) == "nat-0123456789abcdef0 REJECT TCP 10.0.1.5:49153 -> 10.0.0.220:443"


def test_short_message_leaves_out_absent_parts():
    assert short_message({"src_addr": "10.0.0.1", "dst_addr": "10.0.0.2", "protocol": "ICMP"}) == (
        "ICMP 10.0.0.1 -> 10.0.0.2"
    )
    assert short_message({"action": "ACCEPT", "dst_port": 443}) == "ACCEPT - -> -:443"
    assert short_message({"action": "REJECT", "bytes": 10}) == "REJECT"
    assert short_message({"bytes": 10}) == ""


# --- lines that do not fit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20",
            "expected 14 fields, got 9",
        ),
        (ACCEPT_LINE + " extra", "expected 14 fields, got 15"),
        ("", "expected 14 fields, got 0"),
        (ACCEPT_LINE.replace(" 20641 ", " abc "), "srcport: 'abc' is not an integer"),
        (ACCEPT_LINE.replace(" 4249 ", " 4.2e3 "), "bytes: '4.2e3' is not an integer"),
        (ACCEPT_LINE.replace(" 6 ", " tcp "), "protocol: 'tcp' is not an integer"),
        ("CWL CONTROL MESSAGE: Checking health of destination Kinesis stream.", "expected 14 fields, got 9"),
    ],
)
def test_a_line_that_does_not_fit_raises_with_its_reason(line, reason):
    with pytest.raises(FlowLogParseError) as caught:
        parse_flow_log(line, DEFAULT)
    assert str(caught.value) == reason
    assert isinstance(caught.value, ValueError)


def test_extra_whitespace_is_tolerated():
    messy = "  " + ACCEPT_LINE.replace(" ", "  ").replace(" 22 ", "\t22 ") + " \r\n"
    assert parse_flow_log(messy, DEFAULT) == parse_flow_log(ACCEPT_LINE, DEFAULT)


# --- bad format strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "named"),
    [
        ("${version} ${srcaddr} ${no-such-field}", "${no-such-field}"),
        ("${version} ${srcaddr} ${version}", "${version}"),
        ("${version} srcaddr", "srcaddr"),
        ("${version}${srcaddr}", "${version}${srcaddr}"),
        ("${version} ${srcaddr", "${srcaddr"),
        ("${Version}", "${Version}"),
        ("", "empty"),
    ],
)
def test_a_bad_format_string_is_refused_naming_the_option_the_token_and_the_fields(fmt, named):
    with pytest.raises(ValueError) as caught:
        parse_format(fmt)
    message = str(caught.value)
    assert message.startswith("--flow_log_format: ")
    assert named in message
    assert "${ecs-cluster-arn}" in message and "${reject-reason}" in message


def test_options_default_to_the_aws_default_format():
    assert FlowLogOptions([]).flow_log_format == DEFAULT_FORMAT
    assert (
        FlowLogOptions(["--flow_log_format", "${srcaddr} ${dstaddr}"]).flow_log_format
        == "${srcaddr} ${dstaddr}"
    )


def test_the_dofn_refuses_a_bad_format_when_constructed():
    with pytest.raises(ValueError, match="--flow_log_format"):
        FlowLogsToGelf("${version} ${bogus}")


# --- GELF -----------------------------------------------------------------------------------------

BATCH = LogEventBatch(
    owner="123456789010",
    log_group="/vpc/flow-logs",
    log_stream="eni-1235b8ca123456789-all",
    subscription_filters=("to-kinesis",),
    events=(),
    source=SourceCoordinates(stream="flow-logs", shard_id="shardId-000000000000", sequence_number="49"),
)


def test_gelf_message_carries_the_record_and_where_it_came_from():
    event = LogEvent("3613", 1418530071500, ACCEPT_LINE)
    record = parse_flow_log(ACCEPT_LINE, DEFAULT)

    message = flow_log_gelf(record, event, BATCH, "aws-flowlogs", "flow-logs")

    assert message["host"] == "aws-flowlogs"
    assert message["timestamp"] == pytest.approx(1418530071.5)
    assert (
        message["short_message"] == "eni-1235b8ca123456789 ACCEPT TCP 172.31.16.139:20641 -> 172.31.16.21:22"
    )
    assert message["_src_addr"] == "172.31.16.139"
    assert message["_dst_port"] == 22
    assert message["_protocol"] == "TCP"
    assert message["_capture_window_duration_seconds"] == 60
    assert message["_aws_log_group"] == "/vpc/flow-logs"
    assert message["_aws_log_stream"] == "eni-1235b8ca123456789-all"
    assert message["_aws_source"] == "true"
    assert message["_aws_kinesis_stream"] == "flow-logs"
    assert message["_aws_owner"] == "123456789010"


def test_gelf_message_without_a_known_stream_has_no_stream_field():
    event = LogEvent("3613", 1418530071500, ACCEPT_LINE)
    message = flow_log_gelf(parse_flow_log(ACCEPT_LINE, DEFAULT), event, BATCH, "edge", None)

    assert message["host"] == "edge"
    assert "_aws_kinesis_stream" not in message


# --- the DoFn in a pipeline -----------------------------------------------------------------------


def _batch(stream: str, *lines: str) -> LogEventBatch:
    events = tuple(LogEvent(f"{stream}-{i}", 1431280940000 + i, line) for i, line in enumerate(lines))
    return LogEventBatch(
        owner="123456789010",
        log_group="/vpc/flow-logs",
        log_stream=f"{stream}-log-stream",
        subscription_filters=("to-kinesis",),
        events=events,
        source=SourceCoordinates(stream=stream, shard_id="shardId-000000000000", sequence_number="1"),
    )


def _summary(gelf_batch) -> tuple:
    """A GelfBatch as comparable data: per payload, its short message and a few fields."""
    messages = [json.loads(payload) for payload in gelf_batch]
    return tuple(
        (m["host"], m["short_message"], m["_aws_kinesis_stream"], m.get("_log_status")) for m in messages
    )


def test_dofn_emits_one_gelf_batch_per_input_and_dead_letters_bad_lines():
    batches = [
        _batch("s1", ACCEPT_LINE, NODATA_LINE, "not a flow log"),
        _batch("s2", SKIPDATA_LINE, ACCEPT_LINE.replace(" 22 ", " ssh ")),
        _batch("s3", "2 1 eni-1 - -"),
    ]
    pipeline = beam.Pipeline(options=PipelineOptions([f"--runner={LOCAL_RUNNER}"]))
    outputs = (
        pipeline
        | beam.Create(batches)
        | beam.ParDo(FlowLogsToGelf(DEFAULT_FORMAT, "edge-flowlogs")).with_outputs(DEAD_LETTER, main="gelf")
    )
    assert_that(
        outputs.gelf | "Summarise" >> beam.Map(_summary),
        equal_to(
            [
                (
                    (
                        "edge-flowlogs",
                        "eni-1235b8ca123456789 ACCEPT TCP 172.31.16.139:20641 -> 172.31.16.21:22",
                        "s1",
                        "OK",
                    ),
                    ("edge-flowlogs", "eni-1235b8ca123456789 NODATA", "s1", "NODATA"),
                ),
                (("edge-flowlogs", "eni-11111111aaaaaaaaa SKIPDATA", "s2", "SKIPDATA"),),
            ]
        ),
        label="one GelfBatch per batch with good lines",
    )
    assert_that(
        outputs[DEAD_LETTER]
        | "Letters"
        >> beam.Map(
            lambda d: (
                d.stage,
                d.reason,
                d.raw,
                d.log_stream,
                d.event_id,
                d.event_timestamp_ms,
                d.source.stream,
            )
        ),
        equal_to(
            [
                (
                    "flowlogs",
                    "expected 14 fields, got 4",
                    b"not a flow log",
                    "s1-log-stream",
                    "s1-2",
                    1431280940002,
                    "s1",
                ),
                (
                    "flowlogs",
                    "dstport: 'ssh' is not an integer",
                    ACCEPT_LINE.replace(" 22 ", " ssh ").encode(),
                    "s2-log-stream",
                    "s2-1",
                    1431280940001,
                    "s2",
                ),
                (
                    "flowlogs",
                    "expected 14 fields, got 5",
                    b"2 1 eni-1 - -",
                    "s3-log-stream",
                    "s3-0",
                    1431280940000,
                    "s3",
                ),
            ]
        ),
        label="dead letters with their reasons",
    )
    result = pipeline.run()
    result.wait_until_finish()

    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("flowlogs"))["counters"]
    }
    assert counters == {"events": 6, "parse_errors": 3, "nodata": 1, "skipdata": 1}


def test_dofn_falls_back_to_its_own_stream_name_and_the_plugin_source():
    batch = dataclasses.replace(_batch("unused", ACCEPT_LINE), source=SourceCoordinates())

    (gelf_batch,) = FlowLogsToGelf(DEFAULT_FORMAT, None, "configured-stream").process(batch)

    message = json.loads(gelf_batch[0])
    assert message["host"] == "aws-flowlogs"
    assert message["_aws_kinesis_stream"] == "configured-stream"
