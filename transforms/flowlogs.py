"""VPC Flow Log records (one CloudWatch Logs event each) turned into GELF messages.

The Graylog AWS plugin parsed only the 14-field default (version 2) format, wrote `-` as 0 and
dropped every other line with a log warning. Here the format is the one given to AWS (any fields,
any order, every version AWS documents), `-` leaves the field out, and a line that does not fit
goes to the dead-letter output with the reason. The v2 field names stay the plugin's, so existing
searches, dashboards and the `aws_source` lookups keep working.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import metrics
from transforms.elements import DEAD_LETTER, DeadLetter, GelfBatch, LogEvent, LogEventBatch
from transforms.enrichment import Enricher, EntityLookups
from transforms.gelf import additional_fields, build_message, encode_message, field_key
from transforms.protocols import protocol_name

DEFAULT_FORMAT = (
    "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport}"
    " ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}"
)

#: GELF host (Graylog `source`) unless `--gelf_source` overrides it; the plugin's default.
DEFAULT_SOURCE = "aws-flowlogs"

METRICS_NAMESPACE = "flowlogs"
DEAD_LETTER_STAGE = "flowlogs"

#: AWS writes this for a field that does not apply to, or could not be computed for, a record.
ABSENT = "-"
#: No flow log field is longer (tags, the longest, are at most 256): a longer value is not a flow log's.
MAX_VALUE_CHARS = 4096

#: The fields holding IP addresses, enriched with `--entity_lookups` (the plugin did the first two).
ADDRESS_FIELDS = ("src_addr", "dst_addr", "pkt_src_addr", "pkt_dst_addr")

NODATA = "NODATA"
SKIPDATA = "SKIPDATA"

# How a field's text is converted. PROTOCOL is an integer that also yields the protocol's name.
# Compared with ==, not `is`: the format travels pickled to the workers, which breaks identity.
STRING = "string"
INTEGER = "integer"
PROTOCOL = "protocol"


class FieldSpec(NamedTuple):
    """One flow log field: its name in the AWS format string, its GELF field name, type, version."""

    aws_name: str
    gelf_name: str
    kind: str
    version: int


def _spec(aws_name: str, kind: str, version: int, gelf_name: str | None = None) -> FieldSpec:
    return FieldSpec(aws_name, gelf_name or aws_name.replace("-", "_"), kind, version)


#: Every field AWS documents for VPC Flow Logs records (versions 2-11; version 6 added none).
#: The version 2 names are the plugin's; newer fields are the AWS name in snake_case.
FIELDS: dict[str, FieldSpec] = {
    spec.aws_name: spec
    for spec in (
        _spec("version", INTEGER, 2),
        _spec("account-id", STRING, 2),
        _spec("interface-id", STRING, 2),
        _spec("srcaddr", STRING, 2, "src_addr"),
        _spec("dstaddr", STRING, 2, "dst_addr"),
        _spec("srcport", INTEGER, 2, "src_port"),
        _spec("dstport", INTEGER, 2, "dst_port"),
        # Becomes two GELF fields: protocol_number (the int) and protocol (the name).
        _spec("protocol", PROTOCOL, 2, "protocol_number"),
        _spec("packets", INTEGER, 2),
        _spec("bytes", INTEGER, 2),
        _spec("start", INTEGER, 2),
        _spec("end", INTEGER, 2),
        _spec("action", STRING, 2),
        _spec("log-status", STRING, 2),
        _spec("vpc-id", STRING, 3),
        _spec("subnet-id", STRING, 3),
        _spec("instance-id", STRING, 3),
        _spec("tcp-flags", INTEGER, 3),
        _spec("type", STRING, 3),
        _spec("pkt-srcaddr", STRING, 3, "pkt_src_addr"),
        _spec("pkt-dstaddr", STRING, 3, "pkt_dst_addr"),
        _spec("region", STRING, 4),
        _spec("az-id", STRING, 4),
        _spec("sublocation-type", STRING, 4),
        _spec("sublocation-id", STRING, 4),
        _spec("pkt-src-aws-service", STRING, 5),
        _spec("pkt-dst-aws-service", STRING, 5),
        _spec("flow-direction", STRING, 5),
        _spec("traffic-path", INTEGER, 5),
        _spec("ecs-cluster-arn", STRING, 7),
        _spec("ecs-cluster-name", STRING, 7),
        _spec("ecs-container-instance-arn", STRING, 7),
        _spec("ecs-container-instance-id", STRING, 7),
        _spec("ecs-container-id", STRING, 7),
        _spec("ecs-second-container-id", STRING, 7),
        _spec("ecs-service-name", STRING, 7),
        _spec("ecs-task-definition-arn", STRING, 7),
        _spec("ecs-task-arn", STRING, 7),
        _spec("ecs-task-id", STRING, 7),
        _spec("reject-reason", STRING, 8),
        _spec("resource-id", STRING, 9),
        _spec("encryption-status", INTEGER, 10),
        # Tag values arrive percent-encoded by AWS; they are kept exactly as delivered.
        _spec("instance-tag", STRING, 11),
        _spec("instance-tag-2", STRING, 11),
        _spec("interface-tag", STRING, 11),
        _spec("interface-tag-2", STRING, 11),
        _spec("asg-tag", STRING, 11),
        _spec("asg-tag-2", STRING, 11),
        _spec("interface-type", STRING, 11),
        _spec("next-hop-interface-id", STRING, 11),
        _spec("next-hop-subnet-id", STRING, 11),
        _spec("next-hop-az-id", STRING, 11),
        _spec("next-hop-vpc-id", STRING, 11),
        _spec("next-hop-interface-type", STRING, 11),
    )
}

_TOKEN = re.compile(r"\$\{([^${}\s]+)\}")


class FlowLogOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--flow_log_format",
            default=DEFAULT_FORMAT,
            help=(
                "Field layout of the flow log records: pass the same format string you gave AWS"
                " (LogFormat of the flow log, e.g. '${version} ${vpc-id} ${srcaddr} ...')."
                " Default: the AWS default (version 2) format."
            ),
        )


@dataclass(frozen=True)
class FlowLogFormat:
    """A validated flow log format: the fields of a line in order, with their converters ready."""

    fields: tuple[str, ...]
    #: (aws_name, gelf_name, kind) per position.
    columns: tuple[tuple[str, str, str], ...]

    @cached_property
    def gelf_names(self) -> tuple[str, ...]:
        """The GELF name of each position: a line is zipped with these."""
        return tuple(gelf_name for _, gelf_name, _ in self.columns)

    @cached_property
    def integers(self) -> tuple[tuple[str, str], ...]:
        """(gelf_name, aws_name) of the integer fields, converted after the zip."""
        return tuple((gelf_name, aws_name) for aws_name, gelf_name, kind in self.columns if kind != STRING)

    @property
    def version(self) -> int:
        """The record version AWS writes for this format: the highest version among its fields."""
        return max(FIELDS[name].version for name in self.fields)

    def __str__(self) -> str:
        return " ".join(f"${{{name}}}" for name in self.fields)


def _format_error(problem: str) -> ValueError:
    known = " ".join(f"${{{name}}}" for name in FIELDS)
    return ValueError(f"--flow_log_format: {problem}. Known fields: {known}")


def parse_format(fmt: str) -> FlowLogFormat:
    """Validate a flow log format string such as DEFAULT_FORMAT; ValueError says what is wrong."""
    tokens = fmt.split()
    if not tokens:
        raise _format_error("the format is empty; give at least one ${field}")
    fields: list[str] = []
    for token in tokens:
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise _format_error(f"{token!r} is not a ${{field}} token (fields are separated by spaces)")
        name = match.group(1)
        if name not in FIELDS:
            raise _format_error(f"unknown field {token!r}")
        if name in fields:
            raise _format_error(f"field {token!r} appears more than once")
        fields.append(name)
    columns = tuple((name, FIELDS[name].gelf_name, FIELDS[name].kind) for name in fields)
    return FlowLogFormat(fields=tuple(fields), columns=columns)


class FlowLogParseError(ValueError):
    """A line that does not fit the flow log format; the message says why."""


def parse_flow_log(line: str, fmt: FlowLogFormat) -> dict[str, object]:
    """The GELF fields of one flow log line: integers as ints, `-` left out.

    Adds `protocol` (the protocol's name) next to `protocol_number`, and
    `capture_window_duration_seconds` when both `start` and `end` are present. The values are
    GELF-ready as they are (non-blank strings well under Graylog's term limit, 64-bit integers), so
    `flow_log_gelf` adds them unchecked; a line whose values are not is refused.
    """
    tokens = line.split()
    columns = fmt.columns
    if len(tokens) != len(columns):
        raise FlowLogParseError(f"expected {len(columns)} fields, got {len(tokens)}")
    if len(line) > MAX_VALUE_CHARS:
        for (aws_name, _, _), token in zip(columns, tokens, strict=True):
            if len(token) > MAX_VALUE_CHARS:
                raise FlowLogParseError(f"{aws_name}: {len(token)} characters, more than any flow log field")
    if ABSENT in tokens:
        record: dict[str, object] = {
            name: token for name, token in zip(fmt.gelf_names, tokens, strict=True) if token != ABSENT
        }
    else:
        record = dict(zip(fmt.gelf_names, tokens, strict=True))
    for gelf_name, aws_name in fmt.integers:
        token = record.get(gelf_name)
        if token is None:
            continue
        try:
            number = int(token)
        except ValueError:
            raise FlowLogParseError(f"{aws_name}: {token!r} is not an integer") from None
        if len(token) > 18 and not -(2**63) <= number < 2**63:
            raise FlowLogParseError(f"{aws_name}: {token} is beyond 64 bits")
        record[gelf_name] = number
    number = record.get("protocol_number")
    if number is not None:
        record["protocol"] = protocol_name(number)
    start = record.get("start")
    end = record.get("end")
    if start is not None and end is not None:
        record["capture_window_duration_seconds"] = end - start  # type: ignore[operator]
    return record


def _endpoint(addr: object, port: object) -> str | None:
    if addr is None and port is None:
        return None
    text = ABSENT if addr is None else str(addr)
    if port is None:
        return text
    if ":" in text:  # IPv6: brackets keep the port readable
        text = f"[{text}]"
    return f"{text}:{port}"


def short_message(record: dict) -> str:
    """The plugin's summary line, e.g. `eni-0a1b2c ACCEPT TCP 10.0.0.1:80 -> 10.0.0.2:2264`.

    Absent parts are left out instead of printed as 0; NODATA/SKIPDATA records say only that
    (`eni-0a1b2c NODATA`). Without interface-id (a regional NAT gateway, or a format without it)
    the resource-id names the subject. Returns "" when the record holds none of these fields.
    """
    subject = record.get("interface_id") or record.get("resource_id")
    status = record.get("log_status")
    if status == NODATA or status == SKIPDATA:
        parts = [subject, status]
    else:
        parts = [subject, record.get("action"), record.get("protocol")]
        src = _endpoint(record.get("src_addr"), record.get("src_port"))
        dst = _endpoint(record.get("dst_addr"), record.get("dst_port"))
        if src is not None or dst is not None:
            parts.append(f"{src or ABSENT} -> {dst or ABSENT}")
    return " ".join(str(part) for part in parts if part)


def batch_fields(batch: LogEventBatch, stream: str | None) -> dict:
    """The GELF fields every message of a batch carries, checked once per batch."""
    fields = {
        "aws_log_group": batch.log_group,
        "aws_log_stream": batch.log_stream,
        # A string: Graylog drops boolean fields, and the plugin's lookups key on aws_source.
        "aws_source": "true",
    }
    if stream:
        fields["aws_kinesis_stream"] = stream
    if batch.owner:
        fields["aws_owner"] = batch.owner
    return additional_fields(fields)


_GELF_KEYS = {
    name: field_key(name)
    for name in (*(spec.gelf_name for spec in FIELDS.values()), "protocol", "capture_window_duration_seconds")
}


def flow_log_gelf(
    record: dict,
    event: LogEvent,
    batch: LogEventBatch,
    source: str,
    stream: str | None,
    shared: dict | None = None,
) -> dict:
    """The GELF message of one parsed flow log record, stamped with the CloudWatch event time.
    `shared`: the batch's `batch_fields`, when the caller made them once for all its records."""
    message = build_message(
        short_message=short_message(record) or event.message.strip(),
        host=source,
        timestamp=event.timestamp_ms / 1000,
        fields={},
    )
    keys = _GELF_KEYS
    for name, value in record.items():  # GELF-ready as parsed
        message[keys[name]] = value
    message.update(batch_fields(batch, stream) if shared is None else shared)
    return message


def address_fields(fmt: FlowLogFormat) -> tuple[str, ...]:
    """The address fields a format has, in the order their entity fields are added."""
    present = {gelf_name for _, gelf_name, _ in fmt.columns}
    return tuple(name for name in ADDRESS_FIELDS if name in present)


@dataclass
class Converted:
    """One batch's flow log lines as GELF: the payloads, the lines that failed (with why), counts."""

    payloads: GelfBatch
    failures: list[tuple[LogEvent, str]]
    nodata: int = 0
    skipdata: int = 0


def flow_logs_to_gelf(
    batch: LogEventBatch,
    fmt: FlowLogFormat,
    source: str,
    stream: str | None,
    enricher: Enricher | None = None,
    addresses: Sequence[str] = ADDRESS_FIELDS,
) -> Converted:
    """A batch's lines parsed and encoded as GELF payloads (with their addresses' entity fields given
    an `enricher`); a line that does not fit is a failure, the others go on."""
    payloads: GelfBatch = []
    failures: list[tuple[LogEvent, str]] = []
    nodata = skipdata = 0
    shared = batch_fields(batch, stream)
    for event in batch.events:
        try:
            record = parse_flow_log(event.message, fmt)
            message = flow_log_gelf(record, event, batch, source, stream, shared)
            if enricher is None:
                payloads.append(encode_message(message))
            else:
                payloads.append(encode_message(message, enricher.encoded(record, addresses)))
        except ValueError as err:  # FlowLogParseError, or a value GELF encoding refused
            failures.append((event, str(err)))
            continue
        status = record.get("log_status")
        if status == NODATA:
            nodata += 1
        elif status == SKIPDATA:
            skipdata += 1
    return Converted(payloads, failures, nodata, skipdata)


class FlowLogsToGelf(beam.DoFn):
    """LogEventBatch of flow log lines -> one GelfBatch; lines that do not fit -> DEAD_LETTER.

    Emits one GelfBatch per input batch with at least one good line (none for a batch whose lines
    all failed), so Beam's per-element cost is paid per Kinesis record, not per flow.
    """

    def __init__(
        self,
        flow_log_format: str = DEFAULT_FORMAT,
        source: str | None = None,
        stream: str | None = None,
        lookups: EntityLookups | None = None,
    ) -> None:
        """`stream`: the Kinesis stream read, for batches whose SourceCoordinates do not name one.
        `lookups`: add what each address is in the AWS estate (`--entity_lookups`)."""
        # Parsed here so that a bad --flow_log_format fails the pipeline at construction.
        self._format = parse_format(flow_log_format)
        self._addresses = address_fields(self._format)
        self._source = source or DEFAULT_SOURCE
        self._stream = stream
        self._lookups = lookups
        self.events = metrics.counter(METRICS_NAMESPACE, "events")
        self.parse_errors = metrics.counter(METRICS_NAMESPACE, "parse_errors")
        self.nodata = metrics.counter(METRICS_NAMESPACE, "nodata")
        self.skipdata = metrics.counter(METRICS_NAMESPACE, "skipdata")

    def setup(self) -> None:
        if self._lookups is not None:
            self._lookups.setup()

    def process(self, batch: LogEventBatch) -> Iterator[GelfBatch | beam.pvalue.TaggedOutput]:
        enricher = self._lookups.enricher() if self._lookups is not None else None
        stream = batch.source.stream or self._stream
        converted = flow_logs_to_gelf(batch, self._format, self._source, stream, enricher, self._addresses)
        for event, reason in converted.failures:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, DeadLetter.for_event(DEAD_LETTER_STAGE, reason, event, batch)
            )
        # Counted once per batch: a metric update costs about as much as parsing a field.
        self.events.inc(len(batch.events))
        if converted.failures:
            self.parse_errors.inc(len(converted.failures))
        if converted.nodata:
            self.nodata.inc(converted.nodata)
        if converted.skipdata:
            self.skipdata.inc(converted.skipdata)
        if enricher is not None:
            self._lookups.report(enricher)
        if converted.payloads:
            yield converted.payloads
