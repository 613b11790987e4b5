"""Element types passed between the pipeline stages.

A Kinesis record from a CloudWatch Logs subscription carries hundreds of log events; the stages keep
one record's events together (a `LogEventBatch`, then a list of GELF payloads) so that Beam's
per-element cost is paid per record, not per event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

#: Tag of the dead-letter output of every DoFn that can reject input.
DEAD_LETTER = "dead_letter"


class KinesisRecord(NamedTuple):
    """One Kinesis record as read by `ReadFromKinesis`."""

    stream: str
    shard_id: str
    sequence_number: str
    partition_key: str
    arrival_time: float  # ApproximateArrivalTimestamp, seconds since the epoch
    data: bytes


@dataclass(frozen=True, slots=True)
class SourceCoordinates:
    """Where a piece of input came from, so a dead letter can be traced and replayed."""

    stream: str | None = None
    shard_id: str | None = None
    sequence_number: str | None = None
    partition_key: str | None = None
    s3_uri: str | None = None  # s3://bucket/key of the object the input came from
    sqs_message_id: str | None = None  # the SQS notification that announced it

    @classmethod
    def of(cls, record: KinesisRecord) -> SourceCoordinates:
        return cls(record.stream, record.shard_id, record.sequence_number, record.partition_key)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One CloudWatch Logs event. AWS sends `id` as a 56-digit string; it is kept as text."""

    event_id: str
    timestamp_ms: int
    message: str


@dataclass(frozen=True, slots=True)
class LogEventBatch:
    """The log events of one CloudWatch Logs subscription DATA_MESSAGE (one Kinesis record)."""

    owner: str
    log_group: str
    log_stream: str
    subscription_filters: tuple[str, ...]
    events: tuple[LogEvent, ...]
    source: SourceCoordinates = SourceCoordinates()


#: What the GELF sink consumes: the encoded (uncompressed JSON) GELF payloads of one input record.
GelfBatch = list[bytes]


@dataclass(slots=True)
class DeadLetter:
    """An input that could not be processed, with why, and its raw bytes so nothing is lost."""

    stage: str
    reason: str
    raw: bytes
    source: SourceCoordinates = SourceCoordinates()
    log_group: str | None = None
    log_stream: str | None = None
    event_id: str | None = None
    event_timestamp_ms: int | None = None
    time_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @classmethod
    def for_event(cls, stage: str, reason: str, event: LogEvent, batch: LogEventBatch) -> DeadLetter:
        """A log event that could not be processed, traced to its log group and Kinesis record."""
        return cls(
            stage=stage,
            reason=reason,
            raw=event.message.encode("utf-8", "surrogatepass"),
            source=batch.source,
            log_group=batch.log_group,
            log_stream=batch.log_stream,
            event_id=event.event_id,
            event_timestamp_ms=event.timestamp_ms,
        )
