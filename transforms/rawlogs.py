"""Raw CloudWatch Logs events from any log group → GELF, like the Graylog plugin's "AWS Logs" input.

The message is the event text verbatim, the host is "aws-raw-logs" unless overridden, and the event
timestamp is kept. With --parse_json, an event whose text is a JSON object also gets its keys as
fields, which the plugin left to Graylog extractors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import metrics
from transforms.elements import DEAD_LETTER, DeadLetter, GelfBatch, LogEvent, LogEventBatch
from transforms.gelf import RESERVED_FIELD_NAMES, build_message, encode_message, field_key

DEFAULT_SOURCE = "aws-raw-logs"
METRICS_NAMESPACE = "rawlogs"
DEAD_LETTER_STAGE = "rawlogs"

#: Prefix given to a JSON key that would shadow one of our fields or a name Graylog itself uses.
JSON_CLASH_PREFIX = "json_"


class RawLogOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--parse_json",
            action="store_true",
            default=False,
            help=(
                "When a log event's text is a JSON object, also send its keys as GELF fields: nested "
                "objects are flattened with '_' between the keys, lists are sent as JSON text, and a key "
                f"that would clash with a field set by the pipeline or by Graylog gets the prefix "
                f"'{JSON_CLASH_PREFIX}'. Events that are not JSON objects are sent as plain text."
            ),
        )


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in `text`, or None if it holds anything else (a plain log line, an array…).

    NaN and Infinity are refused: they are not JSON, and Graylog rejects a GELF message holding them.
    """
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def flatten_json(obj: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(name, value) pairs of a JSON object: nested keys joined by '_', lists as compact JSON text."""
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            yield from flatten_json(value, name)
        elif isinstance(value, list | dict):
            yield name, json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        else:
            yield name, value


#: GELF keys a JSON key must not take: the names Graylog reads or sets itself (gelf.field_key would
#: give them a `_` suffix; here they get the clearer JSON_CLASH_PREFIX instead).
_RESERVED_KEYS = frozenset(field_key(name) for name in RESERVED_FIELD_NAMES)


def _json_fields(parsed: Mapping[str, Any], taken: set[str]) -> Iterator[tuple[str, Any]]:
    """The flattened fields of a JSON log event, renamed where their GELF key is already `taken`.

    Keys are compared as `field_key` makes them (after sanitising), since that is where two names
    collide; without this, `"aws log group"` would overwrite `aws_log_group`.
    """
    for name, value in flatten_json(parsed):
        key = field_key(name)
        while key in taken or key in _RESERVED_KEYS or key.startswith("_x_gl2_"):
            name = JSON_CLASH_PREFIX + name
            key = field_key(name)
        taken.add(key)
        yield name, value


def _event_gelf(
    event: LogEvent, batch: LogEventBatch, source: str, stream: str | None, parse_json: bool
) -> tuple[dict, bool]:
    fields: dict[str, Any] = {"aws_log_group": batch.log_group, "aws_log_stream": batch.log_stream}
    if stream:
        fields["aws_kinesis_stream"] = stream
    if batch.owner:
        fields["aws_owner"] = batch.owner
    parsed = parse_json_object(event.message) if parse_json else None
    if parsed is not None:
        try:
            json_fields = list(_json_fields(parsed, {field_key(name) for name in fields}))
        except RecursionError:  # absurdly deep nesting: send the text alone
            parsed = None
        else:
            fields.update(json_fields)
    message = build_message(event.message, source, event.timestamp_ms / 1000, fields)
    return message, parsed is not None


def raw_event_gelf(
    event: LogEvent, batch: LogEventBatch, source: str, stream: str | None, parse_json: bool
) -> dict:
    """The GELF message of one raw log event (see the module docstring for what it holds)."""
    return _event_gelf(event, batch, source, stream, parse_json)[0]


class RawLogsToGelf(beam.DoFn):
    """LogEventBatch → one GelfBatch holding the encoded GELF payload of each of its events.

    `stream` names the Kinesis stream for records that do not carry it themselves. An event that
    GELF encoding refuses goes to DEAD_LETTER; an event that is merely not JSON is sent as text.
    """

    def __init__(
        self, source: str | None = None, stream: str | None = None, parse_json: bool = False
    ) -> None:
        self.source = source or DEFAULT_SOURCE
        self.stream = stream
        self.parse_json = parse_json
        self.events = metrics.counter(METRICS_NAMESPACE, "events")
        self.json_events = metrics.counter(METRICS_NAMESPACE, "json_events")
        self.encode_errors = metrics.counter(METRICS_NAMESPACE, "encode_errors")

    def process(self, batch: LogEventBatch) -> Iterator[GelfBatch | beam.pvalue.TaggedOutput]:
        stream = batch.source.stream or self.stream
        payloads: GelfBatch = []
        json_events = 0
        for event in batch.events:
            try:
                message, was_json = _event_gelf(event, batch, self.source, stream, self.parse_json)
                payloads.append(encode_message(message))
            except ValueError as err:  # a value GELF encoding refused
                self.encode_errors.inc()
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER,
                    DeadLetter.for_event(DEAD_LETTER_STAGE, f"GELF encoding failed: {err}", event, batch),
                )
                continue
            json_events += was_json
        self.events.inc(len(payloads))
        if json_events:
            self.json_events.inc(json_events)
        yield payloads
