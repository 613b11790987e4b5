"""`--demo`: the flow-log and CloudTrail pipelines end to end on one machine, with no AWS account.

Starts a local AWS emulator (moto_server), creates a 2-shard Kinesis stream fed by a CloudWatch Logs
subscription filter, writes sample flow logs through CloudWatch Logs (so the stream holds the real
subscription format), starts a local GELF receiver, runs the pipeline with `--stop_at_latest`, and
prints what arrived.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3

from pipelines.gelf_receiver import GelfReceiver
from pipelines.sample_data import create_flow_log_stream, deliver_through_cloudwatch, flow_log_lines
from transforms.sqs import queue_counts

REGION = "us-east-1"
STREAM = "demo-flowlogs"
LOG_GROUP = "/demo/vpc-flow-logs"
EVENTS = 5000
MALFORMED = ["2 123456789012 eni-0bad this line is cut short", "not a flow log at all"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto_server as a child process on a free loopback port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
            "moto_server"
        )
        if not exe:
            raise RuntimeError("moto_server is not installed: run `make demo` (it installs it into .venv).")
        self._log = open(workdir / "moto_server.log", "wb")
        self._proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).read()
                return
            except Exception:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(
                        f"moto_server did not start; see {workdir / 'moto_server.log'}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._log.close()


def _progress(receiver: GelfReceiver, expected: int, done: threading.Event) -> None:
    last = -1
    while not done.wait(1.0):
        count = receiver.count
        if count != last:
            print(f"  … {count:>6} / {expected} GELF messages received", flush=True)
            last = count


def _use_emulator_credentials() -> None:
    """Test keys for the local emulator; a profile from ~/.aws must not send the demo to AWS."""
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(key, value)
    os.environ.pop("AWS_PROFILE", None)


def _run_showing_progress(
    run_pipeline: Callable[[list[str]], int], args: list[str], receiver: GelfReceiver, expected: int
) -> int:
    """Runs the pipeline while printing what the receiver got; waits briefly for the last messages."""
    done = threading.Event()
    progress = threading.Thread(target=_progress, args=(receiver, expected, done), daemon=True)
    progress.start()
    started = time.monotonic()
    try:
        status = run_pipeline(args)
        deadline = time.monotonic() + 3
        while receiver.count < expected and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
    print(f"Pipeline finished in {time.monotonic() - started:.1f} s.")
    return status


def _summary(messages: list[dict], expected: int, dead_letter_dir: Path) -> None:
    from transforms.deadletter import read_dead_letters

    print()
    print(f"Received {len(messages)} GELF messages (expected {expected}).")
    actions = collections.Counter(m.get("_action", m.get("_log_status", "?")) for m in messages)
    protocols = collections.Counter(m.get("_protocol", "-") for m in messages)
    print("By action:   " + ", ".join(f"{k} {v}" for k, v in actions.most_common()))
    print("By protocol: " + ", ".join(f"{k} {v}" for k, v in protocols.most_common()))
    print("\nA few of them, as Graylog receives them:")
    for message in messages[:3]:
        print(json.dumps(message, indent=2, sort_keys=True))
    letters = read_dead_letters(str(dead_letter_dir)) if dead_letter_dir.exists() else []
    print(f"\nDead letters (lines that are not flow logs): {len(letters)} in {dead_letter_dir}")
    for letter in letters[:5]:
        print(f"  [{letter['stage']}] {letter['reason']}: {letter['raw'][:60]!r}")


def run_demo(extra_args: list[str], run_pipeline: Callable[[list[str]], int]) -> int:
    _use_emulator_credentials()
    workdir = Path(tempfile.mkdtemp(prefix="aws-gelf-demo-"))
    dead_letter_dir = workdir / "dead-letter"
    print(
        f"Demo: local AWS emulator, {EVENTS} sample flow log events, local GELF receiver (files in {workdir})"
    )
    moto = MotoServer(workdir)
    receiver = GelfReceiver(protocol="udp", host="127.0.0.1", port=0)
    receiver.start()
    try:
        session = boto3.Session(region_name=REGION)
        kinesis = session.client("kinesis", endpoint_url=moto.url)
        logs = session.client("logs", endpoint_url=moto.url)
        create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
        lines = flow_log_lines(EVENTS)
        calls = deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=250)
        deliver_through_cloudwatch(logs, LOG_GROUP, MALFORMED, log_stream="eni-broken")
        print(
            f"Wrote {EVENTS} flow log events and {len(MALFORMED)} malformed lines through CloudWatch Logs "
            f"({calls + 1} PutLogEvents calls) into the 2-shard stream {STREAM!r}."
        )
        print(f"GELF receiver listening on udp://127.0.0.1:{receiver.port}; running pipelines.flowlogs:")
        args = [
            f"--stream_name={STREAM}",
            f"--region={REGION}",
            f"--aws_endpoint_url={moto.url}",
            "--initial_position=TRIM_HORIZON",
            "--stop_at_latest",
            "--gelf_host=127.0.0.1",
            f"--gelf_port={receiver.port}",
            "--gelf_protocol=udp",
            f"--dead_letter_path={dead_letter_dir}",
            f"--state_dir={workdir / 'state'}",
            *extra_args,
        ]
        status = _run_showing_progress(run_pipeline, args, receiver, EVENTS)
        _summary(receiver.messages, EVENTS, dead_letter_dir)
        return status
    finally:
        receiver.stop()
        moto.stop()


CLOUDTRAIL_BUCKET = "demo-cloudtrail"
CLOUDTRAIL_QUEUE = "demo-cloudtrail-notifications"
CLOUDTRAIL_TOPIC = "demo-cloudtrail"
CLOUDTRAIL_FILES = 20
CLOUDTRAIL_RECORDS_PER_FILE = 100


def _cloudtrail_summary(messages: list[dict], expected: int, dead_letter_dir: Path) -> None:
    from transforms.deadletter import read_dead_letters

    print()
    print(f"Received {len(messages)} GELF messages (expected {expected}).")
    users = collections.Counter(m.get("_user_type", "(none)") for m in messages)
    sources = collections.Counter(m.get("_event_source", "?") for m in messages)
    errors = sum(1 for m in messages if "_error_code" in m)
    print("By user type:    " + ", ".join(f"{k} {v}" for k, v in users.most_common()))
    print("By event source: " + ", ".join(f"{k} {v}" for k, v in sources.most_common(6)) + ", …")
    print(f"Failed calls (error_code set): {errors}")
    assumed = next((m for m in messages if m.get("_user_type") == "AssumedRole"), None)
    print("\nOne of them (an assumed role's call), as Graylog receives it:")
    shown = dict(assumed or messages[0]) if messages else {}
    if "full_message" in shown:
        shown["full_message"] = shown["full_message"][:200] + "…"
    print(json.dumps(shown, indent=2, sort_keys=True))
    letters = read_dead_letters(str(dead_letter_dir)) if dead_letter_dir.exists() else []
    print(f"\nDead letters: {len(letters)} in {dead_letter_dir}")
    for letter in letters[:5]:
        print(f"  [{letter['stage']}] {letter['reason'][:120]}")


def run_cloudtrail_demo(extra_args: list[str], run_pipeline: Callable[[list[str]], int]) -> int:
    """CloudTrail end to end: log files in the local S3, announced through SNS to SQS as CloudTrail
    does, read by pipelines.cloudtrail, delivered over GELF TCP to a local receiver."""
    from pipelines.cloudtrail_samples import (
        announce_cloudtrail_via_sns,
        cloudtrail_log_files,
        cloudtrail_validation_message,
        create_notification_queue,
        digest_key,
        put_cloudtrail_files,
        subscribe_queue_to_topic,
    )

    _use_emulator_credentials()
    workdir = Path(tempfile.mkdtemp(prefix="aws-gelf-demo-cloudtrail-"))
    dead_letter_dir = workdir / "dead-letter"
    expected = CLOUDTRAIL_FILES * CLOUDTRAIL_RECORDS_PER_FILE
    print(
        f"Demo: local AWS emulator, {CLOUDTRAIL_FILES} CloudTrail log files ({expected} records) "
        f"announced through SNS to SQS, local GELF receiver (files in {workdir})"
    )
    moto = MotoServer(workdir)
    receiver = GelfReceiver(protocol="tcp", host="127.0.0.1", port=0)
    receiver.start()
    try:
        session = boto3.Session(region_name=REGION)
        s3 = session.client("s3", endpoint_url=moto.url)
        sqs = session.client("sqs", endpoint_url=moto.url)
        sns = session.client("sns", endpoint_url=moto.url)
        queue_url, queue_arn = create_notification_queue(sqs, CLOUDTRAIL_QUEUE)
        topic_arn = subscribe_queue_to_topic(sns, sqs, CLOUDTRAIL_TOPIC, queue_url, queue_arn)
        sns.publish(TopicArn=topic_arn, Message=cloudtrail_validation_message())
        files = cloudtrail_log_files(CLOUDTRAIL_FILES, CLOUDTRAIL_RECORDS_PER_FILE, seed=11)
        put_cloudtrail_files(s3, CLOUDTRAIL_BUCKET, files)
        for key, _ in files:
            announce_cloudtrail_via_sns(sns, topic_arn, CLOUDTRAIL_BUCKET, [key])
        digest = digest_key(time.time())
        put_cloudtrail_files(s3, CLOUDTRAIL_BUCKET, [(digest, b'{"digestStartTime": "-"}')])
        announce_cloudtrail_via_sns(sns, topic_arn, CLOUDTRAIL_BUCKET, [digest])
        sqs.send_message(QueueUrl=queue_url, MessageBody="this is not a notification")
        print(
            f"Put {CLOUDTRAIL_FILES} log files and 1 digest file into s3://{CLOUDTRAIL_BUCKET}; the queue "
            f"{CLOUDTRAIL_QUEUE!r} holds their notifications, CloudTrail's validation message and 1 stray "
            "message."
        )
        print(f"GELF receiver listening on tcp://127.0.0.1:{receiver.port}; running pipelines.cloudtrail:")
        args = [
            f"--sqs_queue_url={queue_url}",
            f"--region={REGION}",
            f"--aws_endpoint_url={moto.url}",
            "--stop_when_idle=2",
            "--gelf_host=127.0.0.1",
            f"--gelf_port={receiver.port}",
            "--gelf_protocol=tcp",
            f"--dead_letter_path={dead_letter_dir}",
            *extra_args,
        ]
        status = _run_showing_progress(run_pipeline, args, receiver, expected)
        visible, in_flight = queue_counts(sqs, queue_url)
        print(f"Messages left in the queue: {visible} visible, {in_flight} in flight.")
        _cloudtrail_summary(receiver.messages, expected, dead_letter_dir)
        return status
    finally:
        receiver.stop()
        moto.stop()
