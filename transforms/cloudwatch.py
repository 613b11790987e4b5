"""CloudWatch Logs subscription payloads, as delivered to Kinesis, decoded into `LogEventBatch`es.

Unlike the Graylog plugin, which ignored `messageType`, CONTROL_MESSAGE health checks are dropped
here instead of being turned into log messages, and every record that cannot be decoded goes to the
dead-letter output with the reason, instead of being logged and lost.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam

from transforms import metrics
from transforms.elements import (
    DEAD_LETTER,
    DeadLetter,
    KinesisRecord,
    LogEvent,
    LogEventBatch,
    SourceCoordinates,
)

#: Largest decompressed payload accepted. A Kinesis record is at most 1 MiB, and log text rarely
#: compresses better than 1:20, so anything beyond this is a gzip bomb, not a subscription payload.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024

DATA_MESSAGE = "DATA_MESSAGE"
CONTROL_MESSAGE = "CONTROL_MESSAGE"

_GZIP_MAGIC = b"\x1f\x8b"
_UNKNOWN_SOURCE = SourceCoordinates()


class SubscriptionDecodeError(ValueError):
    """A Kinesis record that is not a valid CloudWatch Logs subscription payload; the message says why."""


def gunzip(data: bytes, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress gzip data (one or more members), refusing more than `limit` bytes of output."""
    if data[:2] != _GZIP_MAGIC:
        raise SubscriptionDecodeError(
            f"not gzip: payload starts with {data[:4].hex() or 'nothing'}, expected 1f8b"
            " (CloudWatch Logs always gzips subscription data)"
        )
    out = bytearray()
    rest = data
    while True:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += decompressor.decompress(rest, limit + 1 - len(out))
        except zlib.error as err:
            raise SubscriptionDecodeError(f"corrupt gzip: {err}") from None
        if len(out) > limit:
            raise SubscriptionDecodeError(
                f"decompressed payload exceeds {limit} bytes (from {len(data)} compressed bytes)"
            )
        if not decompressor.eof:
            raise SubscriptionDecodeError(f"truncated gzip: stream ends early after {len(data)} bytes")
        rest = decompressor.unused_data
        if not rest:
            return bytes(out)
        if rest[:2] != _GZIP_MAGIC:
            raise SubscriptionDecodeError(f"{len(rest)} unexpected bytes after the end of the gzip data")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _field(obj: Mapping[str, Any], key: str, expected: type, where: str = "") -> Any:
    if key not in obj:
        raise SubscriptionDecodeError(f"missing {where}{key}")
    value = obj[key]
    # bool is an int subclass in Python, but no field of the payload is a boolean.
    if not isinstance(value, expected) or isinstance(value, bool):
        raise SubscriptionDecodeError(f"{where}{key} is {_type_name(value)}, expected {expected.__name__}")
    return value


def _event(raw: object, index: int) -> LogEvent:
    where = f"logEvents[{index}]."
    if not isinstance(raw, dict):
        raise SubscriptionDecodeError(f"logEvents[{index}] is {_type_name(raw)}, expected object")
    # AWS sends the id as a 56-digit string, moto as an int; both are kept as text.
    if "id" not in raw:
        raise SubscriptionDecodeError(f"missing {where}id")
    event_id = raw["id"]
    if isinstance(event_id, bool) or not isinstance(event_id, str | int):
        raise SubscriptionDecodeError(f"{where}id is {_type_name(event_id)}, expected str")
    return LogEvent(
        event_id=str(event_id),
        timestamp_ms=_field(raw, "timestamp", int, where),
        message=_field(raw, "message", str, where),
    )


def decode_subscription(data: bytes, source: SourceCoordinates = _UNKNOWN_SOURCE) -> LogEventBatch | None:
    """Decode one Kinesis record written by a CloudWatch Logs subscription filter.

    Returns the record's events as one batch, or None for a CONTROL_MESSAGE (the health check AWS
    writes when a subscription is created). Raises `SubscriptionDecodeError` for anything else.
    """
    text = gunzip(data)
    try:
        payload = json.loads(text)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise SubscriptionDecodeError(f"not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise SubscriptionDecodeError(f"JSON is {_type_name(payload)}, expected an object")
    message_type = _field(payload, "messageType", str)
    if message_type == CONTROL_MESSAGE:
        return None
    if message_type != DATA_MESSAGE:
        raise SubscriptionDecodeError(f"unknown messageType {message_type!r}")
    filters = _field(payload, "subscriptionFilters", list)
    for i, name in enumerate(filters):
        if not isinstance(name, str):
            raise SubscriptionDecodeError(f"subscriptionFilters[{i}] is {_type_name(name)}, expected str")
    events = _field(payload, "logEvents", list)
    return LogEventBatch(
        owner=_field(payload, "owner", str),
        log_group=_field(payload, "logGroup", str),
        log_stream=_field(payload, "logStream", str),
        subscription_filters=tuple(filters),
        events=tuple(_event(raw, i) for i, raw in enumerate(events)),
        source=source,
    )


class DecodeSubscription(beam.DoFn):
    """KinesisRecord → one LogEventBatch per DATA_MESSAGE record; undecodable records to DEAD_LETTER.

    A record's events stay together in one element so that Beam's per-element cost is paid per record.
    """

    def __init__(self) -> None:
        self.records = metrics.counter("cloudwatch", "records")
        self.events = metrics.counter("cloudwatch", "events")
        self.control_messages = metrics.counter("cloudwatch", "control_messages")
        self.decode_errors = metrics.counter("cloudwatch", "decode_errors")

    def process(self, record: KinesisRecord) -> Iterator[LogEventBatch | beam.pvalue.TaggedOutput]:
        self.records.inc()
        source = SourceCoordinates.of(record)
        try:
            batch = decode_subscription(record.data, source)
        except SubscriptionDecodeError as err:
            self.decode_errors.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, DeadLetter(stage="cloudwatch", reason=str(err), raw=record.data, source=source)
            )
            return
        if batch is None:
            self.control_messages.inc()
            return
        self.events.inc(len(batch.events))
        yield batch
