"""S3 log objects announced on SQS: `ReadS3NotificationsFromSqs` then `ReadS3Objects`.

The first polls the queue and says, for each message, which objects it announces (CloudTrail's SNS
envelope, S3 event notifications, EventBridge events; messages announcing nothing are recognised and
kept for deletion). The second downloads each object, streams its records into GELF payload batches
and ends the message's processing: it deletes the message from a bundle finalizer, so only once the
GELF sink fused after it has delivered every record of every object the message named (on Flink, once
the checkpoint holding the bundle completed). Deleting here rather than in the poller keeps that true
behind a Reshuffle, which spreads objects over workers on a cluster.

While a message's objects are read its visibility is extended from a background thread (a slow GELF
sink retrying counts too), up to `max_processing_seconds`. An object that cannot be read leaves its
message for redelivery after `retry_delay` seconds, until the message has been received
`max_receive_count` times: then the object goes to the dead letter and the message is deleted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Protocol

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput
from botocore.exceptions import BotoCoreError, ClientError

from transforms import metrics
from transforms.aws import AwsConfig
from transforms.cloudtrail import DEFAULT_SOURCE, cloudtrail_gelf, iter_records
from transforms.elements import DEAD_LETTER, DeadLetter, SourceCoordinates
from transforms.enrichment import Enricher, EntityLookups
from transforms.gelf import encode_message
from transforms.s3_notifications import (
    DEFAULT_KEY_EXCLUDE,
    KeyFilter,
    NotificationError,
    S3Object,
    parse_notification,
)
from transforms.sqs import (
    MAX_VISIBILITY_TIMEOUT,
    BundleDeleter,
    ReadFromSqs,
    SqsMessage,
    SqsReadConfig,
    extend_visibility,
)

_LOG = logging.getLogger(__name__)

#: GELF payloads per output element: Beam's per-element cost is paid per batch, not per record.
BATCH_RECORDS = 500
#: Bytes of a failed object kept as the dead letter's raw bytes (the object itself stays in S3).
MAX_DEAD_LETTER_OBJECT_BYTES = 8 * 1024 * 1024


# --------------------------------------------------------------------------------------------------------
# Options and settings
# --------------------------------------------------------------------------------------------------------


class SqsS3Options(PipelineOptions):
    """Where the notifications come from and how their messages are kept, retried and deleted."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("SQS notifications")
        group.add_argument(
            "--sqs_queue_url",
            default=None,
            help="URL or name of the SQS queue receiving the notifications: CloudTrail's SNS topic, "
            "S3 event notifications (direct or through SNS) or EventBridge 'Object Created' events.",
        )
        group.add_argument("--sqs_readers", type=int, default=1, help="Parallel polling readers (default 1).")
        group.add_argument(
            "--sqs_max_messages",
            type=int,
            default=10,
            help="Messages per ReceiveMessage call, 1-10 (default 10). Lower it for very large objects: "
            "the messages of one call wait while the first ones are read.",
        )
        group.add_argument(
            "--sqs_wait_seconds", type=int, default=20, help="Long-polling wait, 0-20 s (default 20)."
        )
        group.add_argument(
            "--sqs_visibility_timeout",
            type=int,
            default=300,
            help="Seconds a received message stays hidden (default 300); extended while its objects are "
            "read. On Flink it must exceed --checkpointing_interval: messages are deleted at checkpoints.",
        )
        group.add_argument(
            "--sqs_max_processing_seconds",
            type=int,
            default=3600,
            help="Longest a message is kept hidden by visibility extensions while its objects are read "
            "(default 3600); after that it may be delivered again.",
        )
        group.add_argument(
            "--sqs_retry_delay_seconds",
            type=int,
            default=30,
            help="When an object cannot be read, its message comes back after this many seconds "
            "(default 30).",
        )
        group.add_argument(
            "--max_receive_count",
            type=int,
            default=5,
            help="A message whose objects still cannot be read on its Nth receive goes to the dead "
            "letter and is deleted (default 5). Set the queue's own redrive maxReceiveCount higher.",
        )
        group.add_argument(
            "--stop_when_idle",
            type=float,
            default=None,
            help="Bounded run: finish once the queue has given nothing for this many seconds and no "
            "message is in flight (tests, demos, catching up). Default: stream for ever.",
        )
        s3 = parser.add_argument_group("S3 objects")
        s3.add_argument(
            "--s3_key_include",
            default=None,
            help="Regular expression: read only announced keys it finds (default: all).",
        )
        s3.add_argument(
            "--s3_key_exclude",
            default=DEFAULT_KEY_EXCLUDE,
            help=f"Regular expression: skip announced keys it finds, before download (default "
            f"{DEFAULT_KEY_EXCLUDE!r}: CloudTrail digest files). Empty to read every key.",
        )
        s3.add_argument(
            "--s3_prefix",
            default=None,
            help="Backfill: read the existing objects under s3://bucket/prefix instead of SQS "
            "notifications, then finish.",
        )
        s3.add_argument(
            "--s3_start_time",
            default=None,
            help="Backfill: only CloudTrail files delivered at or after this time (ISO-8601, or an age "
            "such as 24h or 7d).",
        )
        s3.add_argument(
            "--s3_end_time",
            default=None,
            help="Backfill: only CloudTrail files delivered before this time (ISO-8601 or an age).",
        )


@dataclass(frozen=True)
class ObjectSettings:
    """How `ReadS3Objects` keeps, retries and gives up on the messages whose objects it reads."""

    visibility_timeout: int = 300
    max_processing_seconds: int = 3600
    retry_delay: int = 30
    max_receive_count: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.visibility_timeout <= MAX_VISIBILITY_TIMEOUT:
            raise ValueError(
                f"--sqs_visibility_timeout must be between 1 and {MAX_VISIBILITY_TIMEOUT} seconds "
                "(default 300)."
            )
        if not 0 <= self.max_processing_seconds <= MAX_VISIBILITY_TIMEOUT:
            raise ValueError(
                f"--sqs_max_processing_seconds must be between 0 and {MAX_VISIBILITY_TIMEOUT} "
                "(SQS keeps a message hidden for at most 12 hours)."
            )
        if not 0 <= self.retry_delay <= MAX_VISIBILITY_TIMEOUT:
            raise ValueError("--sqs_retry_delay_seconds must be between 0 and 43200 (default 30).")
        if self.max_receive_count < 1:
            raise ValueError("--max_receive_count must be at least 1 (default 5).")


# --------------------------------------------------------------------------------------------------------
# Elements and formats
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Work:
    """What one SQS message asks for (or, in a backfill, one listed object): the objects to read.

    `error` is set when the message announces nothing usable; it is dead-lettered and deleted."""

    message: SqsMessage | None
    objects: tuple[S3Object, ...] = ()
    kind: str = "backfill"
    error: str | None = None


class RecordFormat(Protocol):
    """How the records of one kind of log object are read and turned into GELF messages."""

    def records(self, stream: BinaryIO) -> Iterator[Any]:
        """The object's records, streamed; raises ValueError when the object is unusable."""

    def to_gelf(self, record: Any, obj: S3Object, enricher: Enricher | None = None) -> dict:
        """One record's GELF message (with what its addresses are, given an `enricher`); raises
        ValueError for a record that cannot be used."""


@dataclass(frozen=True)
class CloudTrailFormat:
    """CloudTrail log files: one GELF message per record, with the object it came from."""

    source: str = DEFAULT_SOURCE

    def records(self, stream: BinaryIO) -> Iterator[Any]:
        return iter_records(stream)

    def to_gelf(self, record: Any, obj: S3Object, enricher: Enricher | None = None) -> dict:
        extra = {"aws_s3_bucket": obj.bucket, "aws_s3_key": obj.key}
        if enricher is not None and isinstance(record, dict):
            address = {"source_address": record.get("sourceIPAddress")}
            extra.update(
                enricher.fields(address, ("source_address",), account_id=record.get("recipientAccountId"))
            )
        return cloudtrail_gelf(record, self.source, extra_fields=extra)


def s3_uri(obj: S3Object) -> str:
    return f"s3://{obj.bucket}/{obj.key}"


def coordinates(message: SqsMessage | None, obj: S3Object | None = None) -> SourceCoordinates:
    return SourceCoordinates(
        s3_uri=s3_uri(obj) if obj is not None else None,
        sqs_message_id=message.message_id if message is not None else None,
    )


class _CountingReader:
    """Counts the bytes read from a stream (an S3 response body)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data


# --------------------------------------------------------------------------------------------------------
# Visibility
# --------------------------------------------------------------------------------------------------------


class VisibilityKeeper:
    """Keeps the messages being processed hidden, from a background thread.

    A message is extended to a fresh `visibility_timeout` whenever half of its current one has passed,
    while it is processed (including while the GELF sink downstream retries), up to
    `max_processing_seconds` after it was received. The thread cannot update Beam metrics, so it
    counts extensions for `process` to report."""

    def __init__(self, client, visibility_timeout: int, max_processing_seconds: int):
        self._client = client
        self._timeout = visibility_timeout
        self._limit = max_processing_seconds
        self._lock = threading.Lock()
        self._active: dict[str, tuple[SqsMessage, float]] = {}  # receipt handle -> (message, hidden from)
        self._extensions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-visibility", daemon=True)
        self._thread.start()

    def add(self, message: SqsMessage) -> None:
        with self._lock:
            self._active[message.receipt_handle] = (message, message.received_at or time.time())

    def remove(self, message: SqsMessage) -> None:
        with self._lock:
            self._active.pop(message.receipt_handle, None)

    def take_extensions(self) -> int:
        with self._lock:
            count, self._extensions = self._extensions, 0
            return count

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        period = max(0.2, min(self._timeout / 4, 5.0))
        while not self._stop.wait(period):
            now = time.time()
            with self._lock:
                due = [
                    (handle, message)
                    for handle, (message, since) in self._active.items()
                    if now - since >= self._timeout / 2
                ]
            for handle, message in due:
                self._extend(handle, message, now)

    def _extend(self, handle: str, message: SqsMessage, now: float) -> None:
        received = message.received_at or now
        if now - received + self._timeout > self._limit:
            _LOG.warning(
                "SQS message %s: processing for %.0f s, past --sqs_max_processing_seconds=%d; no longer "
                "extending its visibility (it may be delivered again)",
                message.message_id,
                now - received,
                self._limit,
            )
            self.remove(message)
            return
        try:
            extend_visibility(self._client, message.queue_url, handle, self._timeout)
        except (ClientError, BotoCoreError) as error:
            _LOG.warning("SQS message %s: could not extend its visibility: %s", message.message_id, error)
            return
        with self._lock:
            if handle in self._active:
                self._active[handle] = (message, now)
            self._extensions += 1


# --------------------------------------------------------------------------------------------------------
# Beam
# --------------------------------------------------------------------------------------------------------


class _ParseNotificationFn(beam.DoFn):
    """SQS message -> S3Work: the objects it announces that pass the key filter."""

    def __init__(self, key_filter: KeyFilter):
        self._key_filter = key_filter
        self._skipped = metrics.counter("sqs", "messages_skipped")
        self._unparseable = metrics.counter("sqs", "messages_unparseable")
        self._filtered = metrics.counter("s3", "objects_filtered")

    def process(self, message: SqsMessage) -> Iterator[S3Work]:
        try:
            notification = parse_notification(message.body)
        except NotificationError as error:
            self._unparseable.inc()
            yield S3Work(message, kind="unparseable", error=str(error))
            return
        kept, filtered = self._key_filter.split(notification.objects)
        if filtered:
            self._filtered.inc(len(filtered))
        if not kept:
            self._skipped.inc()
            reason = "; ".join(notification.skipped) or "every key filtered out"
            _LOG.info("SQS message %s announces nothing to read (%s)", message.message_id, reason)
        yield S3Work(message, kept, str(notification.kind))


class ReadS3NotificationsFromSqs(beam.PTransform):
    """Polls SQS and emits one `S3Work` per message, without deleting it (`ReadS3Objects` does).

    With `spread` (on a cluster) a Reshuffle hands the messages to any worker. On the DirectRunner a
    step behind a Reshuffle receives nothing until the streaming source ends, so there it stays fused.
    """

    def __init__(self, config: SqsReadConfig, key_filter: KeyFilter, spread: bool = False):
        super().__init__()
        self._config = config
        self._key_filter = key_filter
        self._spread = spread

    def expand(self, pbegin):
        messages = pbegin | "ReadSqs" >> ReadFromSqs(self._config, delete=False)
        work = messages | "ParseNotification" >> beam.ParDo(_ParseNotificationFn(self._key_filter))
        return work | "Spread" >> beam.Reshuffle() if self._spread else work


class _ReadObjectsFn(beam.DoFn):
    """S3Work -> GELF payload batches (and dead letters); deletes the message after the bundle."""

    def __init__(
        self,
        aws: AwsConfig,
        record_format: RecordFormat,
        settings: ObjectSettings,
        lookups: EntityLookups | None = None,
    ):
        self._aws = aws
        self._format = record_format
        self._settings = settings
        self._lookups = lookups
        self._deleter = BundleDeleter()
        self._objects = metrics.counter("s3", "objects")
        self._bytes = metrics.counter("s3", "bytes")
        self._records = metrics.counter("s3", "records")
        self._object_failures = metrics.counter("s3", "object_failures")
        self._bad_records = metrics.counter("s3", "records_rejected")
        self._retried = metrics.counter("sqs", "messages_retried")
        self._dead_lettered = metrics.counter("sqs", "messages_dead_lettered")
        self._extensions = metrics.counter("sqs", "visibility_extensions")

    def setup(self) -> None:
        if self._lookups is not None:
            self._lookups.setup()
        self._s3_clients: dict[str | None, Any] = {}
        self._sqs = self._aws.client("sqs", retries={"mode": "standard", "total_max_attempts": 3})
        settings = self._settings
        self._keeper = VisibilityKeeper(
            self._sqs, settings.visibility_timeout, settings.max_processing_seconds
        )

    def teardown(self) -> None:
        self._keeper.close()

    def start_bundle(self) -> None:
        self._to_delete: dict[str, list[str]] = {}

    def _s3(self, region: str | None):
        if region not in self._s3_clients:
            aws = replace(self._aws, region=region) if region else self._aws
            self._s3_clients[region] = aws.client("s3", retries={"mode": "standard", "total_max_attempts": 5})
        return self._s3_clients[region]

    def process(self, work: S3Work, finalizer=beam.DoFn.BundleFinalizerParam):
        message = work.message
        if message is not None:
            self._deleter.count(message.queue_url)
        if work.error is not None:
            self._dead_lettered.inc()
            yield self._dead_letter("notification", work.error, message.body.encode(), message)
            self._delete_after_bundle(message, finalizer)
            return
        limit = self._settings.max_receive_count
        if message is not None and message.receive_count > limit:
            self._dead_lettered.inc()
            where = ", ".join(s3_uri(obj) for obj in work.objects) or "no objects"
            reason = (
                f"received {message.receive_count} times, more than --max_receive_count={limit}; earlier "
                f"attempts did not finish (objects: {where})"
            )
            yield self._dead_letter("sqs", reason, message.body.encode(), message)
            self._delete_after_bundle(message, finalizer)
            return
        if message is not None:
            self._keeper.add(message)
        try:
            for obj in work.objects:
                failure = yield from self._read_object(obj, message)
                if failure is None:
                    continue
                if message is None or message.receive_count >= limit:
                    if message is not None:
                        self._dead_lettered.inc()
                    yield self._dead_letter("s3", failure, self._head_of(obj), message, obj)
                    continue
                self._retry_later(message, obj, failure)
                return
        finally:
            if message is not None:
                self._keeper.remove(message)
                self._extensions.inc(self._keeper.take_extensions())
        if message is not None:
            self._delete_after_bundle(message, finalizer)

    def _read_object(self, obj: S3Object, message: SqsMessage | None):
        """Yields the object's GELF batches and rejected records; returns why it failed, or None.

        Records read before a failure (a corrupt tail) are still sent: a retry may duplicate them,
        but none is lost."""
        self._objects.inc()
        metrics.HEALTH.heartbeat()
        enricher = self._lookups.enricher() if self._lookups is not None else None
        batch: list[bytes] = []
        count = 0
        body = None
        failure = None
        try:
            response = self._s3(obj.region).get_object(Bucket=obj.bucket, Key=obj.key)
            body = _CountingReader(response["Body"])
            for record in self._format.records(body):
                count += 1
                try:
                    batch.append(encode_message(self._format.to_gelf(record, obj, enricher)))
                except ValueError as error:
                    self._bad_records.inc()
                    yield self._dead_letter(
                        "cloudtrail", f"record {count}: {error}", _record_bytes(record), message, obj
                    )
                if len(batch) >= BATCH_RECORDS:
                    self._records.inc(len(batch))
                    yield batch
                    batch = []
        except (ValueError, OSError, ClientError, BotoCoreError) as error:
            self._object_failures.inc()
            failure = _failure_reason(obj, error)
            _LOG.warning("%s", failure)
        if batch:
            self._records.inc(len(batch))
            yield batch
        if body is not None:
            self._bytes.inc(body.count)
        if enricher is not None:
            self._lookups.report(enricher)
        return failure

    def _head_of(self, obj: S3Object) -> bytes:
        """The object's first bytes for the dead letter (it stays in S3), or nothing if unreadable."""
        try:
            response = self._s3(obj.region).get_object(
                Bucket=obj.bucket, Key=obj.key, Range=f"bytes=0-{MAX_DEAD_LETTER_OBJECT_BYTES - 1}"
            )
            return response["Body"].read()
        except (ClientError, BotoCoreError, OSError):
            return b""

    def _retry_later(self, message: SqsMessage, obj: S3Object, reason: str) -> None:
        """Leaves the message in the queue; it comes back after the retry delay with a higher count."""
        self._retried.inc()
        _LOG.warning(
            "SQS message %s (received %d of %d times) left for redelivery in %d s: %s",
            message.message_id,
            message.receive_count,
            self._settings.max_receive_count,
            self._settings.retry_delay,
            reason,
        )
        try:
            extend_visibility(
                self._sqs, message.queue_url, message.receipt_handle, self._settings.retry_delay
            )
        except (ClientError, BotoCoreError) as error:
            _LOG.warning("SQS message %s: could not set its visibility: %s", message.message_id, error)

    def _delete_after_bundle(self, message: SqsMessage, finalizer) -> None:
        handles = self._to_delete.get(message.queue_url)
        if handles is None:
            handles = self._to_delete[message.queue_url] = []
            self._deleter.delete_after_bundle(finalizer, self._sqs, message.queue_url, handles)
        handles.append(message.receipt_handle)

    @staticmethod
    def _dead_letter(
        stage: str, reason: str, raw: bytes, message: SqsMessage | None, obj: S3Object | None = None
    ) -> TaggedOutput:
        letter = DeadLetter(stage=stage, reason=reason, raw=raw, source=coordinates(message, obj))
        return TaggedOutput(DEAD_LETTER, letter)


def _record_bytes(record: Any) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return repr(record).encode("utf-8", "replace")


def _failure_reason(obj: S3Object, error: Exception) -> str:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        return f"{s3_uri(obj)}: cannot get the object ({code or error})"
    if isinstance(error, ValueError):  # CloudTrailFileError and other parse errors
        return f"{s3_uri(obj)}: {error}"
    return f"{s3_uri(obj)}: reading failed ({type(error).__name__}: {error})"


class ReadS3Objects(beam.PTransform):
    """Reads the objects of each `S3Work` into GELF payload batches (main output) and dead letters
    (`DEAD_LETTER`); deletes each SQS message once its bundle, and the GELF sink fused after it,
    completed. Keep the sink fused after it: no GroupByKey or Reshuffle in between.

    Metrics: s3/objects, bytes, records, object_failures, records_rejected; sqs/messages_retried,
    messages_dead_lettered, visibility_extensions, messages_deleted, delete_failures."""

    def __init__(
        self,
        aws: AwsConfig,
        record_format: RecordFormat,
        settings: ObjectSettings,
        lookups: EntityLookups | None = None,
    ):
        super().__init__()
        self._aws = aws
        self._format = record_format
        self._settings = settings
        self._lookups = lookups

    def expand(self, work):
        return work | "ReadObjects" >> beam.ParDo(
            _ReadObjectsFn(self._aws, self._format, self._settings, self._lookups)
        ).with_outputs(DEAD_LETTER, main="gelf")
