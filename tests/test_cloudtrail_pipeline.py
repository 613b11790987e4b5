"""pipelines.cloudtrail end to end, as a user runs it: the command line, moto_server (S3, SQS, SNS), and
the Node.js GELF receiver (graygelf, an independent decoder) over real sockets."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.measuring import peak_rss_mib
from pipelines.cloudtrail_samples import (
    announce_cloudtrail_via_sns,
    cloudtrail_log_files,
    cloudtrail_notification,
    cloudtrail_records,
    cloudtrail_validation_message,
    create_notification_queue,
    digest_key,
    enable_s3_event_notifications,
    eventbridge_object_created,
    put_cloudtrail_files,
    subscribe_queue_to_topic,
    write_cloudtrail_file,
)
from tests.conftest import REGION, REPO, NodeReceiver, aws_client, free_port
from tests.test_sqs import queue_counts
from transforms.deadletter import read_dead_letters

pytestmark = pytest.mark.slow

BUCKET = "org-trail"
# Trail files of recent days, as a live trail writes them: 09:00 UTC five days ago.
START = (datetime.now(UTC) - timedelta(days=5)).replace(hour=9, minute=0, second=0, microsecond=0).timestamp()


def day_of(when: float, days: int = 0, sep: str = "-") -> str:
    """The UTC date `days` after `when`, as `--s3_start_time` (`-`) or a CloudTrail key (`/`) writes it."""
    return (datetime.fromtimestamp(when, UTC) + timedelta(days=days)).strftime(f"%Y{sep}%m{sep}%d")


def cli_args(
    queue_url: str, endpoint: str, port: int, dead_letters: Path, protocol: str = "tcp"
) -> list[str]:
    """The command line of the issue, word for word."""
    return [
        "--runner=DirectRunner",
        f"--sqs_queue_url={queue_url}",
        f"--aws_endpoint_url={endpoint}",
        f"--region={REGION}",
        "--gelf_host=127.0.0.1",
        f"--gelf_port={port}",
        f"--gelf_protocol={protocol}",
        f"--dead_letter_path={dead_letters}",
    ]


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipelines.cloudtrail", *args]


def run_cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def summary_counters(log: str) -> dict[str, int]:
    """The counters of the run's last line: `cloudtrail finished (DONE): a/b=1, …`."""
    found = re.search(r"cloudtrail finished \((\w+)\): (.*)", log)
    assert found, f"no summary line in:\n{log[-3000:]}"
    pairs = (item.split("=", 1) for item in found.group(2).split(", ") if "=" in item)
    return {key: int(value) for key, value in pairs}


def event_ids(messages: list[dict]) -> Counter:
    return Counter(m["_event_id"] for m in messages if "_event_id" in m)


def records_of(files: list[tuple[str, bytes]]) -> list[dict]:
    return [r for _, content in files for r in json.loads(gzip.decompress(content))["Records"]]


@pytest.fixture
def aws(moto):
    return {name: aws_client(name, moto) for name in ("s3", "sqs", "sns")}


def test_files_announced_by_sns_s3_events_and_eventbridge_all_arrive_once_and_the_queue_empties(
    moto, aws, subprocess_env, tmp_path
):
    s3, sqs, sns = aws["s3"], aws["sqs"], aws["sns"]
    queue_url, queue_arn = create_notification_queue(sqs, "cloudtrail")
    files = cloudtrail_log_files(8, 60, seed=3, start_time=START)
    by_sns, by_raw_sns, by_s3_event, by_eventbridge = files[:2], files[2:3], files[3:5], files[5:]

    # CloudTrail → SNS → SQS (the SNS envelope), one notification naming two files; and raw delivery.
    topic = subscribe_queue_to_topic(sns, sqs, "trail", queue_url, queue_arn)
    sns.publish(TopicArn=topic, Message=cloudtrail_validation_message())
    put_cloudtrail_files(s3, BUCKET, by_sns)
    announce_cloudtrail_via_sns(sns, topic, BUCKET, [key for key, _ in by_sns])
    raw_topic = subscribe_queue_to_topic(sns, sqs, "trail-raw", queue_url, queue_arn, raw=True)
    put_cloudtrail_files(s3, BUCKET, by_raw_sns)
    announce_cloudtrail_via_sns(sns, raw_topic, BUCKET, [by_raw_sns[0][0]])
    digest = digest_key(START)
    put_cloudtrail_files(s3, BUCKET, [(digest, gzip.compress(b'{"digestStartTime":"x","logFiles":[]}'))])
    announce_cloudtrail_via_sns(sns, topic, BUCKET, [digest])
    # S3 event notifications straight to the queue (moto sends an s3:TestEvent first, as AWS does).
    enable_s3_event_notifications(s3, BUCKET, queue_arn, sqs=sqs)
    put_cloudtrail_files(s3, BUCKET, by_s3_event)
    # EventBridge "Object Created" events, from a bucket with no S3 notifications.
    put_cloudtrail_files(s3, "other-trail", by_eventbridge)
    for key, content in by_eventbridge:
        body = eventbridge_object_created("other-trail", key, len(content))
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    expected = records_of(files)
    dead_letters = tmp_path / "dead-letters"
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = cli_args(queue_url, moto, receiver.port, dead_letters) + ["--stop_when_idle=10"]
        started = time.monotonic()
        result = run_cli(args, subprocess_env)
        took = time.monotonic() - started
        messages = receiver.wait_for(len(expected))
    finally:
        receiver.stop()

    assert result.returncode == 0, result.stderr[-3000:]
    received = event_ids(messages)
    assert received == Counter(r["eventID"] for r in expected), "every record once, nothing else"
    assert queue_counts(sqs, queue_url) == (0, 0)
    counters = summary_counters(result.stderr)
    assert counters["s3/objects"] == len(files)
    assert counters["s3/records"] == len(expected)
    assert counters["s3/objects_filtered"] == 1, "the digest file is not downloaded"
    assert counters["sqs/messages_skipped"] == 3, "validation message, s3:TestEvent, digest-only"
    assert counters["sqs/messages_deleted"] == counters["sqs/messages_received"]
    assert not dead_letters.exists() or read_dead_letters(dead_letters) == []
    print(f"\n{len(messages)} records from {len(files)} files in {took:.1f} s (10 s idle included)")

    by_id = {m["_event_id"]: m for m in messages}
    for record in expected:
        check_fields(record, by_id[record["eventID"]])
    kinds = Counter(r.get("userIdentity", {}).get("type", "none") for r in expected)
    assert kinds["AssumedRole"] and kinds["IAMUser"] and any("errorCode" in r for r in expected)


def present(value):
    """What a GELF field holds for a record value: empty text is left out, as Graylog drops it."""
    return None if value in ("", None) else value


def check_fields(record: dict, message: dict) -> None:
    """The plugin's fields, the new ones, the short message, host, timestamp and full_message."""
    identity = record.get("userIdentity", {})
    issuer = identity.get("sessionContext", {}).get("sessionIssuer", {})
    user = identity.get("userName") or issuer.get("userName")
    assert message["host"] == "aws-cloudtrail"
    assert message["short_message"] == (
        f"{record['eventSource']}:{record['eventName']} in {record['awsRegion']} by "
        f"{record['sourceIPAddress']} / {user or '<unknown user_name>'}"
    )
    event_time = datetime.strptime(record["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert message["timestamp"] == event_time.timestamp()
    assert json.loads(message["full_message"]) == record
    plain = {
        "eventSource": "_event_source",
        "eventName": "_event_name",
        "awsRegion": "_aws_region",
        "sourceIPAddress": "_source_address",
        "userAgent": "_user_agent",
        "requestID": "_request_id",
        "eventType": "_event_type",
        "recipientAccountId": "_recipient_account_id",
        "errorCode": "_error_code",
        "errorMessage": "_error_message",
    }
    for key, field in plain.items():
        assert message.get(field) == present(record.get(key)), field
    for key, field in {
        "requestParameters": "_request_parameters",
        "responseElements": "_response_elements",
        "additionalEventData": "_additional_event_data",
        "resources": "_resources",
        "tlsDetails": "_tls_details",
    }.items():
        if record.get(key) is not None:
            assert json.loads(message[field]) == record[key], field
    assert message.get("_user_type") == present(identity.get("type"))
    assert message.get("_user_name") == present(user)
    assert message.get("_user_principal_arn") == present(identity.get("arn"))
    assert message.get("_user_access_key_id") == present(identity.get("accessKeyId"))
    if issuer:
        assert message["_session_issuer_user_name"] == issuer["userName"]
        assert message["_session_issuer_user_principal_arn"] == issuer["arn"]
    attributes = identity.get("sessionContext", {}).get("attributes")
    if attributes:
        assert message["_user_session_creation_date"] == attributes["creationDate"]
        assert message["_user_session_mfa_authenticated"] == attributes["mfaAuthenticated"]


def test_a_receiver_down_mid_run_deletes_no_message_whose_records_were_not_delivered(
    moto, aws, subprocess_env, tmp_path
):
    s3, sqs = aws["s3"], aws["sqs"]
    queue_url, _ = create_notification_queue(sqs, "cloudtrail", visibility_timeout=60)
    files = cloudtrail_log_files(16, 100, seed=5, start_time=START)
    put_cloudtrail_files(s3, BUCKET, files)
    for key, _ in files:
        sqs.send_message(QueueUrl=queue_url, MessageBody=cloudtrail_notification(BUCKET, [key]))
    file_of = {r["eventID"]: key for key, content in files for r in records_of([(key, content)])}
    port = free_port()
    args = cli_args(queue_url, moto, port, tmp_path / "dl", protocol="http") + [
        "--stop_when_idle=3",
        "--sqs_max_messages=2",
        "--gelf_retry_seconds=120",
    ]
    first = NodeReceiver(tmp_path, "http", port=port)
    process = subprocess.Popen(
        command(args),
        cwd=REPO,
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = None
    try:
        first.wait_for(300, timeout=120)
        first.stop()  # Graylog goes away while the pipeline is sending
        time.sleep(3)  # the sink retries; nothing may be deleted for what it could not deliver
        before = first.messages()
        delivered = Counter(file_of[m["_event_id"]] for m in before)
        complete_files = sum(1 for key, _ in files if delivered[key] == 100)
        visible, in_flight = queue_counts(sqs, queue_url)
        deleted = len(files) - visible - in_flight
        print(
            f"\nreceiver stopped after {len(before)} records: {complete_files} files complete, "
            f"{deleted} messages deleted, {visible + in_flight} still queued"
        )
        assert len(before) < 1600, "stopped mid-run"
        assert deleted <= complete_files, "a message was deleted before all its records were delivered"
        assert deleted > 0, "the messages of delivered files are deleted while the run goes on"

        second = NodeReceiver(tmp_path, "http", port=port)  # Graylog is back
        _, log = process.communicate(timeout=240)
        after = second.wait_for(1600 - len(set(event_ids(before))), timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        first.stop()
        if second is not None:
            second.stop()

    assert process.returncode == 0, log[-3000:]
    total = event_ids(before) + event_ids(after)
    assert set(total) == set(file_of), "every record arrived"
    duplicates = sum(total.values()) - len(total)
    print(f"after the receiver returned: {len(after)} more records; {duplicates} duplicates, 0 lost")
    assert queue_counts(sqs, queue_url) == (0, 0)
    assert summary_counters(log)["gelf/retries"] > 0


def test_a_corrupt_object_is_retried_then_dead_lettered_and_the_rest_goes_on(
    moto, aws, subprocess_env, tmp_path
):
    s3, sqs = aws["s3"], aws["sqs"]
    queue_url, _ = create_notification_queue(sqs, "cloudtrail", visibility_timeout=30)
    good = cloudtrail_log_files(2, 50, seed=9, start_time=START)
    first_record = json.dumps(next(cloudtrail_records(1, seed=4, start_time=START)))
    corrupt_key = f"AWSLogs/123456789012/CloudTrail/us-east-1/{day_of(START, sep='/')}/broken.json.gz"
    corrupt = gzip.compress(('{"Records":[' + first_record + ',{"eventTime": tru').encode())
    put_cloudtrail_files(s3, BUCKET, [*good, (corrupt_key, corrupt)])
    for key, _ in [*good, (corrupt_key, corrupt)]:
        sqs.send_message(QueueUrl=queue_url, MessageBody=cloudtrail_notification(BUCKET, [key]))
    dead_letters = tmp_path / "dl"
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = cli_args(queue_url, moto, receiver.port, dead_letters) + [
            "--stop_when_idle=2",
            "--max_receive_count=3",
            "--sqs_retry_delay_seconds=1",
        ]
        result = run_cli(args, subprocess_env)
        messages = receiver.wait_for(101)
    finally:
        receiver.stop()

    assert result.returncode == 0, result.stderr[-3000:]
    received = event_ids(messages)
    assert set(received) >= {r["eventID"] for r in records_of(good)}, "the good files were delivered"
    assert received[json.loads(first_record)["eventID"]] == 3, "the record before the damage, once a try"
    (letter,) = read_dead_letters(dead_letters)
    assert letter["stage"] == "s3"
    assert letter["s3_uri"] == f"s3://{BUCKET}/{corrupt_key}"
    assert "not valid JSON (after 1 records)" in letter["reason"]
    assert letter["raw"] == corrupt and letter["sqs_message_id"]
    counters = summary_counters(result.stderr)
    assert counters["sqs/messages_retried"] == 2
    assert counters["sqs/messages_dead_lettered"] == 1
    assert "(received 1 of 3 times) left for redelivery in 1 s" in result.stderr
    assert queue_counts(sqs, queue_url) == (0, 0)


def test_a_backfill_reads_the_files_of_its_time_range_without_sqs_and_ends(
    moto, aws, subprocess_env, tmp_path
):
    s3 = aws["s3"]
    days = [START + day * 86400 for day in range(3)]
    files = [f for when in days for f in cloudtrail_log_files(2, 30, seed=int(when) % 97, start_time=when)]
    put_cloudtrail_files(s3, BUCKET, files)
    wanted = [f for f in files if f"/{day_of(START, 1, '/')}/" in f[0]]
    assert len(wanted) == 2
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        result = run_cli(
            [
                "--runner=DirectRunner",
                f"--s3_prefix=s3://{BUCKET}/AWSLogs/123456789012/CloudTrail/{REGION}/",
                f"--s3_start_time={day_of(START, 1)}",
                f"--s3_end_time={day_of(START, 2)}",
                f"--aws_endpoint_url={moto}",
                f"--region={REGION}",
                "--gelf_host=127.0.0.1",
                f"--gelf_port={receiver.port}",
                "--gelf_protocol=tcp",
                f"--dead_letter_path={tmp_path / 'dl'}",
                f"--state_dir={tmp_path / 'state'}",
            ],
            subprocess_env,
        )
        messages = receiver.wait_for(60)
    finally:
        receiver.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert event_ids(messages) == Counter(r["eventID"] for r in records_of(wanted))
    assert summary_counters(result.stderr)["s3/objects"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--sqs_queue_url is required"),
        (["--sqs_queue_url=nope", "--s3_prefix=s3://b/p"], "exclude each other"),
        (["--sqs_queue_url=missing-queue"], "--sqs_queue_url=missing-queue: cannot find the queue"),
        (["--s3_prefix=s3://no-such-bucket/AWSLogs/"], "the bucket cannot be listed (NoSuchBucket)"),
        (["--sqs_queue_url=q", "--max_receive_count=0"], "--max_receive_count must be at least 1"),
        (["--s3_start_time=2026-11-01", "--sqs_queue_url=q"], "add --s3_prefix"),
        (
            [
                "--runner=FlinkRunner",
                "--flink_master=127.0.0.1:1",
                "--sqs_queue_url=q",
                "--sqs_visibility_timeout=10",
                "--checkpointing_interval=10000",
            ],
            "--sqs_visibility_timeout=10 s is too short for --checkpointing_interval=10000 ms",
        ),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_option(moto, subprocess_env, args, message):
    base = [f"--aws_endpoint_url={moto}", f"--region={REGION}", "--gelf_host=127.0.0.1"]
    result = run_cli(base + args, subprocess_env, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr


def test_help_lists_the_sqs_and_s3_options(subprocess_env):
    result = run_cli(["--help"], subprocess_env, timeout=60)
    assert result.returncode == 0
    for option in (
        "--sqs_queue_url",
        "--max_receive_count",
        "--stop_when_idle",
        "--s3_prefix",
        "--gelf_host",
    ):
        assert option in result.stdout


LARGE_BYTES = int(os.environ.get("CLOUDTRAIL_LARGE_BYTES", 50 * 1024 * 1024))


def run_measuring_memory(args: list[str], env: dict, log_path: Path) -> tuple[int, str, list[float]]:
    """Runs the CLI; returns its exit status, log, and its peak RSS (MiB) read every 50 ms."""
    peaks: list[float] = []
    with open(log_path, "w") as log:
        process = subprocess.Popen(command(args), cwd=REPO, env=env, stdout=log, stderr=log)
        while process.poll() is None:
            peak = peak_rss_mib(process.pid)
            if peak is not None:
                peaks.append(peak)
            time.sleep(0.05)
    return process.returncode, log_path.read_text(), peaks


def test_a_50_mb_file_is_read_with_bounded_memory_while_its_visibility_is_extended(
    moto, aws, subprocess_env, tmp_path
):
    """A 1 MiB file is the baseline: the 50 MiB file's run must not need much more memory."""
    s3, sqs = aws["s3"], aws["sqs"]
    queue_url, _ = create_notification_queue(sqs, "cloudtrail", visibility_timeout=30)
    s3.create_bucket(Bucket=BUCKET)
    sizes = {"small": 1024 * 1024, "large": LARGE_BYTES}
    receiver = NodeReceiver(tmp_path, "udp")
    runs = {}
    try:
        for name, size in sizes.items():
            path = tmp_path / f"{name}.json.gz"
            count = write_cloudtrail_file(path, size, seed=len(name))
            key = f"AWSLogs/123456789012/CloudTrail/{REGION}/{day_of(START, sep='/')}/{name}.json.gz"
            with open(path, "rb") as body:
                s3.upload_fileobj(body, BUCKET, key)
            sqs.send_message(QueueUrl=queue_url, MessageBody=cloudtrail_notification(BUCKET, [key]))
            args = cli_args(queue_url, moto, receiver.port, tmp_path / "dl", protocol="udp") + [
                "--stop_when_idle=2",
                "--sqs_visibility_timeout=4",
            ]
            started = time.monotonic()
            status, log, peaks = run_measuring_memory(args, subprocess_env, tmp_path / f"{name}.log")
            took = time.monotonic() - started
            runs[name] = (status, log, peaks[-1], count, took, path.stat().st_size)
            # The peak so far, every 5 s: it is reached at start-up and stays there.
            print(f"\n{name}: peak RSS every 5 s (MiB): {[round(p) for p in peaks[::100]]}")
    finally:
        receiver.stop()

    for name, (status, log, rss, count, took, size) in runs.items():
        assert status == 0, log[-3000:]
        counters = summary_counters(log)
        assert counters["s3/records"] == count
        print(
            f"\n{name}: {size / 2**20:.1f} MiB object, {count} records in {took:.1f} s, peak RSS "
            f"{rss:.0f} MiB, visibility extended {counters.get('sqs/visibility_extensions', 0)} times"
        )
    large_rss, small_rss = runs["large"][2], runs["small"][2]
    assert large_rss < small_rss * 1.25, "memory does not grow with the object's size"
    assert summary_counters(runs["large"][1])["sqs/visibility_extensions"] >= 2
    assert queue_counts(sqs, queue_url) == (0, 0)
