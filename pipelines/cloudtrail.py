"""CloudTrail log files from S3, announced on SQS (or listed for a backfill), to Graylog over GELF.

    python -m pipelines.cloudtrail --runner=DirectRunner --sqs_queue_url=URL --region=R \
        --gelf_host=graylog --gelf_port=12201 [--stop_when_idle=60]
    python -m pipelines.cloudtrail --region=R --gelf_host=graylog \
        --s3_prefix=s3://bucket/AWSLogs/123456789012/CloudTrail/eu-west-1/ \
        --s3_start_time=2026-11-01 --s3_end_time=2026-11-02

The queue may receive CloudTrail's SNS notifications, S3 event notifications (direct or through SNS) or
EventBridge "Object Created" events. Each message is deleted once every record of every file it names
was delivered to Graylog; on Flink that happens when a checkpoint completes, so checkpointing is on.
A local backfill records each file once delivered (the position store, --state_dir) and a restart with
the same options skips those: transforms/s3_backfill.py.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import replace

import apache_beam as beam
from botocore.exceptions import BotoCoreError, ClientError

from pipelines.common import Plan, RunOptions, main_with_errors, run_cli
from pipelines.runners import runner_name
from transforms import stopping
from transforms.aws import AwsConfig, AwsOptions, aws_config_from_options
from transforms.cloudtrail import DEFAULT_SOURCE
from transforms.deadletter import DeadLetterOptions, WriteDeadLetters, dead_letter_path_from_options
from transforms.elements import DEAD_LETTER
from transforms.enrichment import EntityLookups, EntityOptions, lookup_config_from_options
from transforms.gelf import GelfOptions, WriteToGelf, gelf_config_from_options
from transforms.positions import (
    PositionOptions,
    PositionStoreConfig,
    StreamLease,
    position_store_from_options,
    reset_positions,
)
from transforms.s3_backfill import ListS3ObjectsInTurn, backfill_key
from transforms.s3_listing import ListS3Objects, backfill_range_from_values, is_age
from transforms.s3_notifications import KeyFilter
from transforms.sqs import queue_counts, resolve_queue_url, sqs_config_from_values
from transforms.sqs_s3 import (
    CloudTrailFormat,
    ObjectSettings,
    ReadS3NotificationsFromSqs,
    ReadS3Objects,
    S3Work,
    SqsS3Options,
)

NAME = "cloudtrail"
DESCRIPTION = "CloudTrail log files from S3 (announced on SQS, or an S3 backfill) to Graylog GELF."
OPTIONS = (
    RunOptions,
    AwsOptions,
    SqsS3Options,
    EntityOptions,
    GelfOptions,
    DeadLetterOptions,
    PositionOptions,
)

_LOG = logging.getLogger("pipelines")


def _backfill_work(obj) -> S3Work:
    return S3Work(message=None, objects=(obj,))


def check_queue(aws: AwsConfig, name_or_url: str) -> str:
    """The queue's URL, once it is known to exist and be readable; else a clear error."""
    client = aws.client("sqs", retries={"mode": "standard", "total_max_attempts": 2})
    url = resolve_queue_url(client, name_or_url)
    try:
        client.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise ValueError(
            f"--sqs_queue_url={name_or_url}: the queue cannot be read ({code}); check the URL, --region "
            "and the permissions sqs:ReceiveMessage, sqs:DeleteMessage, sqs:ChangeMessageVisibility, "
            "sqs:GetQueueAttributes."
        ) from None
    except BotoCoreError as error:
        raise ValueError(f"--sqs_queue_url={name_or_url}: cannot reach SQS ({error}).") from None
    return url


class QueueDrained:
    """True once the queue has held no message, visible or in flight, for `idle_seconds`: every
    message was then read, delivered and deleted. How a bounded run (--stop_when_idle) ends on Flink,
    where the job's idle sources cannot be shut down without stopping the checkpoints the deletes
    wait for."""

    def __init__(self, aws: AwsConfig, queue_url: str, idle_seconds: float):
        self._client = aws.client("sqs")
        self._queue_url = queue_url
        self._idle_seconds = idle_seconds
        self._empty_since: float | None = None

    def __call__(self) -> bool:
        now = time.monotonic()
        if queue_counts(self._client, self._queue_url) != (0, 0):
            self._empty_since = None
            return False
        if self._empty_since is None:
            self._empty_since = now
        return now - self._empty_since >= self._idle_seconds


def check_bucket(aws: AwsConfig, bucket: str, prefix_option: str) -> None:
    """The backfill's bucket exists and can be listed; else a clear error at start."""
    client = aws.client("s3", retries={"mode": "standard", "total_max_attempts": 2})
    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise ValueError(
            f"--s3_prefix={prefix_option}: the bucket cannot be listed ({code}); check the bucket name, "
            "--region and the permissions s3:ListBucket and s3:GetObject."
        ) from None
    except BotoCoreError as error:
        raise ValueError(f"--s3_prefix={prefix_option}: cannot reach S3 ({error}).") from None


def check_checkpointing(options, settings: ObjectSettings) -> None:
    """On Flink messages are deleted when a checkpoint completes: that must come before they reappear."""
    if runner_name(options).lower() != "flinkrunner":
        return
    # A Java option of the Flink runner: Python keeps it among the unknown options it passes on.
    value = options.get_all_options(retain_unknown_options=True).get("checkpointing_interval")
    try:
        interval = int(value) if value is not None else None
    except ValueError:
        raise ValueError(f"--checkpointing_interval={value} must be a number of milliseconds.") from None
    if interval is None or interval <= 0:
        raise ValueError(
            "--checkpointing_interval must be set on Flink (e.g. 10000): SQS messages are deleted when a "
            "checkpoint completes, so without checkpoints none would ever be deleted."
        )
    if interval / 1000 * 2 > settings.visibility_timeout:
        raise ValueError(
            f"--sqs_visibility_timeout={settings.visibility_timeout} s is too short for "
            f"--checkpointing_interval={interval} ms: messages are deleted at checkpoints and would "
            "reappear first. Make the visibility timeout at least twice the interval."
        )


def plan(options, local: bool) -> Plan:
    sqs = options.view_as(SqsS3Options)
    aws = aws_config_from_options(options)
    gelf_config = gelf_config_from_options(options)
    dead_letter_path = dead_letter_path_from_options(options)
    key_filter = KeyFilter.from_options(sqs.s3_key_include, sqs.s3_key_exclude)
    record_format = CloudTrailFormat(options.view_as(GelfOptions).gelf_source or DEFAULT_SOURCE)
    lookup_config = lookup_config_from_options(options, aws)
    lookups = EntityLookups(lookup_config) if lookup_config is not None else None
    settings = ObjectSettings(
        visibility_timeout=sqs.sqs_visibility_timeout,
        max_processing_seconds=sqs.sqs_max_processing_seconds,
        retry_delay=sqs.sqs_retry_delay_seconds,
        max_receive_count=sqs.max_receive_count,
    )
    gelf = f"GELF {gelf_config.protocol} {gelf_config.host}:{gelf_config.port}"
    target = f"{gelf}; dead letters in {dead_letter_path}"

    done = None
    hold = contextlib.nullcontext()
    if sqs.s3_prefix:
        if sqs.sqs_queue_url:
            raise ValueError(
                "--s3_prefix (a backfill of existing files) and --sqs_queue_url (new files as they are "
                "announced) exclude each other: give one of them."
            )
        backfill = backfill_range_from_values(sqs.s3_prefix, sqs.s3_start_time, sqs.s3_end_time)
        check_bucket(aws, backfill.bucket, sqs.s3_prefix)
        summary = f"backfill of {sqs.s3_prefix} ({aws.region}) → {target}"
        if local:  # one file a bundle, each recorded once delivered; a restart skips those
            stream = backfill_key(backfill, key_filter)
            positions = position_store_from_options(options, NAME, local, aws)
            if positions is not None:
                hold = backfill_lease(options, positions, stream)
                summary += f"; positions in {positions.where}"
            listing = ListS3ObjectsInTurn(backfill, aws, key_filter, positions, stream)
        else:  # a cluster: the files spread over the workers; a restarted job reads the range again
            listing = ListS3Objects(backfill, aws, key_filter)

        def read(pipeline):
            return pipeline | "ListS3" >> listing | "ToWork" >> beam.Map(_backfill_work)
    else:
        if sqs.s3_start_time or sqs.s3_end_time:
            raise ValueError("--s3_start_time and --s3_end_time select files of a backfill: add --s3_prefix.")
        if not sqs.sqs_queue_url:
            raise ValueError(
                "--sqs_queue_url is required: the URL or name of the queue receiving the CloudTrail or S3 "
                "notifications (or --s3_prefix=s3://bucket/prefix to read existing files; or try --demo)."
            )
        read_config = sqs_config_from_values(
            sqs.sqs_queue_url,
            aws,
            max_messages=sqs.sqs_max_messages,
            wait_seconds=sqs.sqs_wait_seconds,
            visibility_timeout=settings.visibility_timeout,
            stop_when_idle=sqs.stop_when_idle,
            readers=sqs.sqs_readers,
        )
        check_checkpointing(options, settings)
        read_config = replace(read_config, queue_url=check_queue(aws, read_config.queue_url))

        def read(pipeline):
            return pipeline | "ReadNotifications" >> ReadS3NotificationsFromSqs(
                read_config, key_filter, spread=not local
            )

        summary = f"reading notifications from {read_config.queue_url} ({aws.region}) → {target}"
        if read_config.stop_when_idle is not None:
            done = QueueDrained(aws, read_config.queue_url, read_config.stop_when_idle)

    def build(pipeline) -> None:
        work = read(pipeline)
        outputs = work | "ReadObjects" >> ReadS3Objects(aws, record_format, settings, lookups)
        undeliverable = outputs.gelf | "WriteGelf" >> WriteToGelf(gelf_config, NAME)
        outputs[DEAD_LETTER] | "DeadLettersObjects" >> WriteDeadLetters(dead_letter_path, NAME)
        undeliverable | "DeadLettersGelf" >> WriteDeadLetters(dead_letter_path, NAME)

    return Plan(build=build, summary=summary, done=done, hold=hold)


def backfill_lease(options, positions: PositionStoreConfig, stream: str) -> StreamLease:
    """The lease that keeps a second run of the same backfill on the same store from starting; with
    --reset_positions, the backfill's delivered objects are forgotten first."""
    sqs = options.view_as(SqsS3Options)
    relative = [
        f"{name}={value}"
        for name, value in (("--s3_start_time", sqs.s3_start_time), ("--s3_end_time", sqs.s3_end_time))
        if is_age(value)
    ]
    if relative:
        _LOG.warning(
            "%s is an age, resolved at each start: a restart is another backfill and reads its range from "
            "the start. Give ISO-8601 times to make this backfill resumable.",
            " and ".join(relative),
        )
    lease = StreamLease(positions, stream, stopping.request_stop)
    if options.view_as(PositionOptions).reset_positions:
        reset_positions(positions, stream, lease.owner)
    return lease


def demo(argv: list[str], run_pipeline) -> int:
    from pipelines.demo import run_cloudtrail_demo

    return run_cloudtrail_demo(argv, run_pipeline)


def run(argv: list[str]) -> int:
    return run_cli(NAME, DESCRIPTION, argv, OPTIONS, plan, demo=demo, needs_checkpoints=True)


if __name__ == "__main__":
    sys.exit(main_with_errors(run))
