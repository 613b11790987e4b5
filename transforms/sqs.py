"""`ReadFromSqs`: polls an SQS queue and deletes each message only once the pipeline has handled it.

The CloudTrail/S3 source learns of new log objects from SQS notifications. A message must not be
deleted when it is received: if the pipeline then failed, the object it names would never be read. So
each message is deleted by a *bundle finalizer*, which the runner calls only after the bundle that
emitted the message has completed, including every step fused with the reader downstream (the GELF
sink flushes in `finish_bundle`). A failed bundle deletes nothing, and its messages come back after
their visibility timeout: delivery is at least once, never at most once.

The restriction is tiny (is the reader done, since when has the queue been empty): SQS itself keeps
what is unread, so a reader has no position to checkpoint. Several readers (`readers`) poll the same
queue in parallel; SQS hands each message to one of them at a time.

With `delete=False` the reader leaves deletion to a later step that ends each message's processing
(reading the S3 objects it names): that step deletes through its own `BundleDeleter`, so a message
is deleted only once everything it led to was delivered, even behind a Reshuffle.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from transforms import metrics
from transforms.aws import AwsConfig
from transforms.stopping import stop_requested

_LOG = logging.getLogger(__name__)

NAMESPACE = "sqs"
#: How often the reader counts the queue's visible and in-flight messages for its gauges.
QUEUE_GAUGE_SECONDS = 30.0
#: DeleteMessageBatch takes at most 10 entries.
DELETE_BATCH_SIZE = 10
#: SQS limits: ReceiveMessage's MaxNumberOfMessages and WaitTimeSeconds, a message's visibility timeout.
MAX_MESSAGES_LIMIT = 10
MAX_WAIT_SECONDS = 20
MAX_VISIBILITY_TIMEOUT = 12 * 60 * 60
#: Longest wait of one ReceiveMessage call, whatever `wait_seconds` allows. A process call blocks its
#: worker thread: the local runner checks stop requests and `stop_when_idle` only between calls, and
#: Flink handles checkpoints only between them. One second still long-polls (an idle reader costs one
#: request per second, and a message arriving during the wait is returned at once).
MAX_WAIT_PER_CALL_SECONDS = 1
#: With short polling (`wait_seconds=0`) an empty queue would be polled in a busy loop: the local runner
#: resumes deferred work at once, ignoring resume delays. The reader sleeps this long instead.
EMPTY_POLL_SLEEP_SECONDS = 0.5
#: A bounded reader waits for in-flight messages (deletes pending, retries due) at most this long
#: past `stop_when_idle`: a message another consumer holds must not keep it running for ever.
MAX_IN_FLIGHT_WAIT_SECONDS = 300
THROTTLING_ERRORS = frozenset(
    {"ThrottlingException", "RequestThrottled", "OverLimit", "ServiceUnavailable", "InternalError"}
)
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")


@dataclass(frozen=True)
class SqsReadConfig:
    queue_url: str
    aws: AwsConfig
    max_messages: int = 10  # per ReceiveMessage call, 1-10
    wait_seconds: int = 20  # long-poll limit, 0-20; each call waits at most MAX_WAIT_PER_CALL_SECONDS
    visibility_timeout: int | None = None  # None: the queue's own
    stop_when_idle: float | None = None  # bounded mode: finish once the queue gave nothing this long
    readers: int = 1  # parallel polling readers


class SqsMessage(NamedTuple):
    queue_url: str
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int  # ApproximateReceiveCount: 1 on first delivery, more after a failure
    sent_timestamp: float  # epoch seconds
    received_at: float = 0.0  # epoch seconds of the ReceiveMessage call: its visibility runs from then


# --- configuration -------------------------------------------------------------------------------


def sqs_config_from_values(
    queue_url: str | None,
    aws: AwsConfig,
    max_messages: int = 10,
    wait_seconds: int = 20,
    visibility_timeout: int | None = None,
    stop_when_idle: float | None = None,
    readers: int = 1,
) -> SqsReadConfig:
    """Validated reader settings; a wrong value fails at start, naming the option to fix.

    `queue_url` may be a queue name: the caller resolves it with `resolve_queue_url`."""
    if not queue_url:
        raise ValueError(
            "--sqs_queue_url is required: the URL (https://sqs.<region>.amazonaws.com/<account>/<name>) "
            "or name of the queue that receives the S3 or CloudTrail notifications."
        )
    if "://" not in queue_url and not QUEUE_NAME.match(queue_url):
        raise ValueError(
            f"--sqs_queue_url={queue_url!r} is neither a queue URL nor a queue name "
            "(1-80 letters, digits, - and _, optionally ending in .fifo)."
        )
    if not 1 <= max_messages <= MAX_MESSAGES_LIMIT:
        raise ValueError(f"--sqs_max_messages must be between 1 and {MAX_MESSAGES_LIMIT} (the SQS limit).")
    if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"--sqs_wait_seconds must be between 0 and {MAX_WAIT_SECONDS} (the SQS limit).")
    if visibility_timeout is not None and not 0 <= visibility_timeout <= MAX_VISIBILITY_TIMEOUT:
        raise ValueError(
            f"--sqs_visibility_timeout must be between 0 and {MAX_VISIBILITY_TIMEOUT} seconds, "
            "or left out to use the queue's own."
        )
    if stop_when_idle is not None and stop_when_idle <= 0:
        raise ValueError("--stop_when_idle must be a number of seconds above 0, or left out to stream.")
    if readers < 1:
        raise ValueError("--sqs_readers must be at least 1.")
    return SqsReadConfig(
        queue_url=queue_url,
        aws=aws,
        max_messages=max_messages,
        wait_seconds=wait_seconds,
        visibility_timeout=visibility_timeout,
        stop_when_idle=stop_when_idle,
        readers=readers,
    )


def resolve_queue_url(client, name_or_url: str) -> str:
    """The queue's URL: given as is, or looked up by name (GetQueueUrl)."""
    if "://" in name_or_url:
        return name_or_url
    try:
        return client.get_queue_url(QueueName=name_or_url)["QueueUrl"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise ValueError(
            f"--sqs_queue_url={name_or_url}: cannot find the queue ({code}); check the name and --region."
        ) from None


# --- SQS calls ------------------------------------------------------------------------------------


def extend_visibility(client, queue_url: str, receipt_handle: str, seconds: int) -> None:
    """Keeps a received message hidden for `seconds` more, from now (while a large object is read)."""
    client.change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=int(seconds)
    )


def queue_counts(client, queue_url: str) -> tuple[int, int]:
    """(visible, in flight): ApproximateNumberOfMessages and ApproximateNumberOfMessagesNotVisible."""
    attributes = client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )


class DeleteResult(NamedTuple):
    deleted: int
    failed: int


def delete_messages(client, queue_url: str, receipt_handles: Sequence[str]) -> DeleteResult:
    """Deletes messages in batches of 10; failed entries are retried once, then counted as failed.

    A message that could not be deleted comes back after its visibility timeout (a duplicate)."""
    deleted = failed = 0
    for start in range(0, len(receipt_handles), DELETE_BATCH_SIZE):
        pending = {
            str(i): handle for i, handle in enumerate(receipt_handles[start : start + DELETE_BATCH_SIZE])
        }
        for attempt in range(2):
            entries = [{"Id": entry_id, "ReceiptHandle": handle} for entry_id, handle in pending.items()]
            try:
                response = client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            except (ClientError, ConnectionError, HTTPClientError) as error:
                _LOG.warning(
                    "SQS %s: DeleteMessageBatch failed (attempt %d): %s", queue_url, attempt + 1, error
                )
                continue
            deleted += len(response.get("Successful", []))
            failures = response.get("Failed", [])
            for failure in failures:
                _LOG.warning(
                    "SQS %s: could not delete a message (attempt %d): %s %s",
                    queue_url,
                    attempt + 1,
                    failure.get("Code"),
                    failure.get("Message", ""),
                )
            pending = {f["Id"]: pending[f["Id"]] for f in failures if f.get("Id") in pending}
            if not pending:
                break
        failed += len(pending)
    return DeleteResult(deleted, failed)


def message_of(queue_url: str, raw: dict, received_at: float = 0.0) -> SqsMessage:
    attributes = raw.get("Attributes", {})
    return SqsMessage(
        queue_url=queue_url,
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        sent_timestamp=int(attributes.get("SentTimestamp", 0)) / 1000.0,
        received_at=received_at,
    )


class _DeletionTally:
    """Deletion results waiting to be counted, per queue, for every DoFn of this worker process.

    A bundle finalizer runs after the runner has collected the bundle's metrics (and the SDK resets
    them right after), so a counter incremented there is lost. The finalizer records its results here
    instead, and the next `process` call of a DoFn of that queue adds them to the counters. Only
    metrics depend on it: deletion itself never does."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: dict[str, DeleteResult] = {}

    def add(self, queue_url: str, result: DeleteResult) -> None:
        with self._lock:
            deleted, failed = self._pending.get(queue_url, DeleteResult(0, 0))
            self._pending[queue_url] = DeleteResult(deleted + result.deleted, failed + result.failed)

    def take(self, queue_url: str) -> DeleteResult:
        with self._lock:
            return self._pending.pop(queue_url, DeleteResult(0, 0))


_DELETIONS = _DeletionTally()


class BundleDeleter:
    """Deletes messages once the bundle that handled them has completed, from a bundle finalizer.

    Used by any DoFn that ends a message's processing (the reader itself, or the step that read the
    objects a message names): the runner calls the finalizer only after the bundle, with every step
    fused into it, has completed; on Flink only once the checkpoint holding it completed. A failed
    bundle deletes nothing. `count` adds the finalizers' results to the `sqs` counters."""

    def __init__(self):
        self._deleted = metrics.counter(NAMESPACE, "messages_deleted")
        self._delete_failures = metrics.counter(NAMESPACE, "delete_failures")

    def delete_after_bundle(self, finalizer, client, queue_url: str, receipt_handles: list[str]) -> None:
        """Registers the deletion of `receipt_handles` (the list may still grow during this bundle)."""
        finalizer.register(lambda: self._delete(client, queue_url, receipt_handles))

    @staticmethod
    def _delete(client, queue_url: str, receipt_handles: list[str]) -> None:
        if not receipt_handles:
            return
        result = delete_messages(client, queue_url, receipt_handles)
        _DELETIONS.add(queue_url, result)
        if result.failed:
            _LOG.warning(
                "SQS %s: %d messages not deleted; they come back after their visibility timeout",
                queue_url,
                result.failed,
            )

    def count(self, queue_url: str) -> None:
        """Counts what finalizers of this process deleted from `queue_url` since the last call."""
        result = _DELETIONS.take(queue_url)
        if result.deleted:
            self._deleted.inc(result.deleted)
        if result.failed:
            self._delete_failures.inc(result.failed)


# --- restriction ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqsRestriction:
    """One reader's state: SQS keeps the unread messages, so only idleness and the end are tracked."""

    idle_since: float | None = None  # epoch seconds of the first empty poll in a row
    done: bool = False


@dataclass(frozen=True)
class Poll:
    """One ReceiveMessage call was made; `idle_since` is None when it returned messages."""

    idle_since: float | None


@dataclass(frozen=True)
class Finish:
    """The reader ends: a stop was requested, or the queue stayed empty for `stop_when_idle`."""


class SqsPollTracker(RestrictionTracker):
    """Tracks an `SqsRestriction`; a checkpoint hands the reader on as the residual."""

    def __init__(self, restriction: SqsRestriction):
        self._restriction = restriction

    def current_restriction(self) -> SqsRestriction:
        return self._restriction

    def try_claim(self, position) -> bool:
        if self._restriction.done:
            return False
        if isinstance(position, Finish):
            self._restriction = replace(self._restriction, done=True)
        elif isinstance(position, Poll):
            self._restriction = replace(self._restriction, idle_since=position.idle_since)
        else:
            raise ValueError(f"unknown claim {position!r}")
        return True

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder != 0 or self._restriction.done:
            return None
        residual = self._restriction
        self._restriction = replace(residual, done=True)
        return self._restriction, residual

    def check_done(self):
        if not self._restriction.done:
            raise ValueError("SQS reader restriction left unfinished")

    def current_progress(self) -> RestrictionProgress:
        return RestrictionProgress(completed=0, remaining=0 if self._restriction.done else 1)

    def is_bounded(self) -> bool:
        return False


class SqsRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, element: int) -> SqsRestriction:
        return SqsRestriction()

    def create_tracker(self, restriction: SqsRestriction) -> SqsPollTracker:
        return SqsPollTracker(restriction)

    def restriction_size(self, element, restriction: SqsRestriction) -> float:
        return 0 if restriction.done else 1

    def truncate(self, element, restriction):
        return None  # on drain: unread messages stay in the queue


# --- reading --------------------------------------------------------------------------------------


class _PollQueueFn(beam.DoFn, SqsRestrictionProvider):
    """One polling reader (one element of `range(readers)`); its own restriction provider."""

    def __init__(self, config: SqsReadConfig, delete: bool = True):
        self._config = config
        self._delete = delete
        self._receive_calls = metrics.counter(NAMESPACE, "receive_calls")
        self._received = metrics.counter(NAMESPACE, "messages_received")
        self._visible = metrics.gauge(NAMESPACE, "queue_visible_messages")
        self._in_flight = metrics.gauge(NAMESPACE, "queue_in_flight_messages")
        self._queue_counted_at = 0.0
        self._deleter = BundleDeleter()

    def setup(self):
        wait = self._call_wait_seconds()
        self._client = self._config.aws.client(
            "sqs", retries={"mode": "standard", "total_max_attempts": 3}, read_timeout=wait + 10
        )

    def _call_wait_seconds(self) -> int:
        return min(self._config.wait_seconds, MAX_WAIT_PER_CALL_SECONDS)

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: int,
        # Before the tracker and the watermark estimator: after them Beam passes the tracker twice.
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        """One ReceiveMessage call; its messages are emitted, and deleted once the bundle completes."""
        config = self._config
        self._deleter.count(config.queue_url)
        restriction: SqsRestriction = tracker.current_restriction()
        now = time.time()
        if stop_requested() or (
            config.stop_when_idle is not None
            and restriction.idle_since is not None
            and now - restriction.idle_since >= config.stop_when_idle
            and (
                now - restriction.idle_since >= config.stop_when_idle + MAX_IN_FLIGHT_WAIT_SECONDS
                or self._nothing_in_flight()
            )
        ):
            tracker.try_claim(Finish())
            return
        if now - self._queue_counted_at >= QUEUE_GAUGE_SECONDS:
            try:
                self._count_queue()
            except (ClientError, ConnectionError, HTTPClientError) as error:
                _LOG.debug("SQS %s: cannot count the queue (%s)", config.queue_url, error)
        messages = self._receive()
        if not tracker.try_claim(Poll(idle_since=None if messages else restriction.idle_since or now)):
            # Checkpointed meanwhile: the messages come back after their visibility timeout. (A bare
            # return: Beam reads `return <anything>` beside a yield as a mistake and warns at each run.)
            return
        if messages:
            if self._delete:
                handles = [message.receipt_handle for message in messages]
                self._deleter.delete_after_bundle(finalizer, self._client, config.queue_url, handles)
            for message in messages:
                yield TimestampedValue(message, Timestamp.of(message.sent_timestamp))
        else:
            # Nothing waits unread (an in-flight message of a failed bundle may still come back late).
            self._advance_watermark(watermark, now)
            if self._call_wait_seconds() == 0:
                time.sleep(EMPTY_POLL_SLEEP_SECONDS)
        # Hand back to the runner: the bundle completes, the finalizer deletes, then the next poll.
        tracker.defer_remainder()

    def _count_queue(self) -> tuple[int, int]:
        """The queue's backlog and in-flight messages, as gauges (every QUEUE_GAUGE_SECONDS)."""
        self._queue_counted_at = time.time()
        visible, in_flight = queue_counts(self._client, self._config.queue_url)
        self._visible.set(visible)
        self._in_flight.set(in_flight)
        return visible, in_flight

    def _nothing_in_flight(self) -> bool:
        """A bounded reader ends only once no message it received is still in flight: on Flink the
        deletes wait for a checkpoint, and the job must not finish before them. SQS itself is asked,
        since the step that deletes may run elsewhere."""
        try:
            _, in_flight = self._count_queue()
        except (ClientError, ConnectionError, HTTPClientError) as error:
            _LOG.warning("SQS %s: cannot count in-flight messages (%s)", self._config.queue_url, error)
            return True
        if in_flight:
            _LOG.info("SQS %s: idle, waiting for %d in-flight messages", self._config.queue_url, in_flight)
        return in_flight == 0

    def _receive(self) -> list[SqsMessage]:
        config = self._config
        kwargs = {
            "QueueUrl": config.queue_url,
            "MaxNumberOfMessages": config.max_messages,
            "WaitTimeSeconds": self._call_wait_seconds(),
            # Both spellings: AttributeNames is deprecated on AWS but the only one some emulators know.
            "AttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
        if config.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = config.visibility_timeout
        try:
            response = self._client.receive_message(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code not in THROTTLING_ERRORS:
                raise
            metrics.HEALTH.failed("AWS SQS", code)
            self._pause_after(code)
            return []
        except (ConnectionError, HTTPClientError) as error:
            metrics.HEALTH.failed("AWS SQS", repr(error))
            self._pause_after(type(error).__name__)
            return []
        self._receive_calls.inc()
        metrics.HEALTH.succeeded("AWS SQS")
        metrics.HEALTH.heartbeat()
        now = time.time()
        messages = [message_of(config.queue_url, raw, now) for raw in response.get("Messages", [])]
        self._received.inc(len(messages))
        return messages

    def _pause_after(self, reason: str) -> None:
        _LOG.warning("SQS %s: ReceiveMessage failed (%s), retrying in 1s", self._config.queue_url, reason)
        time.sleep(1.0)

    @staticmethod
    def _advance_watermark(estimator, now: float) -> None:
        current = estimator.current_watermark()
        if current is None or Timestamp.of(now) > current:
            estimator.set_watermark(Timestamp.of(now))


class ReadFromSqs(beam.PTransform):
    """Emits each message of the queue as an `SqsMessage` timestamped with its SentTimestamp; deletes it
    once the bundle that emitted it (and the steps fused downstream) completed. With `delete=False`,
    a later step deletes it (see `BundleDeleter`)."""

    def __init__(self, config: SqsReadConfig, delete: bool = True):
        super().__init__()
        self._config = config
        self._delete = delete

    def expand(self, pbegin):
        readers = pbegin | "Readers" >> beam.Create(list(range(self._config.readers)))
        return readers | "PollQueue" >> beam.ParDo(
            _PollQueueFn(self._config, self._delete)
        ).with_output_types(SqsMessage)
