"""A CloudTrail backfill restarted after a crash goes on after the last file it delivered: no record lost,
duplicates only from the file in flight. Real processes, moto_server's S3, the Node.js GELF receiver
counting every record by its own eventID, and the position store read back through its interface."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.cloudtrail_samples import cloudtrail_key, cloudtrail_log_files, put_cloudtrail_files
from tests.conftest import REGION, REPO, NodeReceiver, aws_client, free_port
from tests.test_cloudtrail_pipeline import command, day_of, event_ids, records_of, summary_counters
from transforms.aws import aws_config_from_options
from transforms.deadletter import read_dead_letters
from transforms.positions import position_store_from_options
from transforms.s3_backfill import backfill_key
from transforms.s3_listing import backfill_range_from_values, list_objects
from transforms.s3_notifications import KeyFilter
from transforms.sqs_s3 import SqsS3Options

BUCKET = "trail-backfill"
PREFIX = f"s3://{BUCKET}/AWSLogs/123456789012/CloudTrail/{REGION}/"
# Files of a day as a live trail writes them, from 09:00 UTC five days ago (the day folders are listed).
START = (datetime.now(UTC) - timedelta(days=5)).replace(hour=9, minute=0, second=0, microsecond=0).timestamp()
RECORDS_PER_FILE = 50
STORES = {"file": (), "dynamodb": ("--position_store=dynamodb", "--position_table=positions")}


def put_files(moto: str, count: int, seed: int) -> dict[str, str]:
    """`count` CloudTrail files of RECORDS_PER_FILE records into the bucket; eventID -> key of its file."""
    files = cloudtrail_log_files(count, RECORDS_PER_FILE, seed=seed, start_time=START)
    put_cloudtrail_files(aws_client("s3", moto), BUCKET, files)
    file_of = {r["eventID"]: key for key, content in files for r in records_of([(key, content)])}
    assert len(file_of) == count * RECORDS_PER_FILE, "every record has its own eventID"
    return file_of


def backfill_args(moto: str, port: int, tmp_path, protocol: str = "tcp", *extra: str) -> list[str]:
    return [
        "--runner=DirectRunner",
        f"--s3_prefix={PREFIX}",
        f"--s3_start_time={day_of(START)}",
        f"--s3_end_time={day_of(START, 1)}",
        f"--aws_endpoint_url={moto}",
        f"--region={REGION}",
        "--gelf_host=127.0.0.1",
        f"--gelf_port={port}",
        f"--gelf_protocol={protocol}",
        f"--dead_letter_path={tmp_path / 'dl'}",
        f"--state_dir={tmp_path / 'state'}",
        *extra,
    ]


def start(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(command(args), cwd=REPO, env=env, stdout=log, stderr=log)


def recorded(args: list[str]) -> set[str]:
    """The files the position store holds as delivered for the backfill of `args`."""
    options = PipelineOptions(args)
    sqs = options.view_as(SqsS3Options)
    backfill = backfill_range_from_values(sqs.s3_prefix, sqs.s3_start_time, sqs.s3_end_time)
    key = backfill_key(backfill, KeyFilter.from_options(sqs.s3_key_include, sqs.s3_key_exclude))
    config = position_store_from_options(options, "cloudtrail", True, aws_config_from_options(options))
    if config is None:  # --position_store=none
        return set()
    store = config.open()
    try:
        return {shard for shard, state in store.load(key).items() if state.finished}
    finally:
        store.close()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_listing_resumed_after_a_key_lists_exactly_the_keys_after_it(moto):
    """What a restarted (or re-listed) backfill relies on: across day folders, in key order."""
    s3 = aws_client("s3", moto)
    days = [START + day * 86400 for day in range(3)]
    for when in days:
        put_cloudtrail_files(s3, BUCKET, cloudtrail_log_files(3, 2, seed=int(when) % 89, start_time=when))
    backfill = backfill_range_from_values(PREFIX, day_of(START), day_of(START, 3))
    every = [o.key for o in list_objects(s3, backfill, KeyFilter(), page_size=2)]
    assert len(every) == 9 and every == sorted(every)
    for i, key in enumerate(every):
        after = [o.key for o in list_objects(s3, backfill, KeyFilter(), page_size=2, start_after=key)]
        assert after == every[i + 1 :], key


def test_another_range_or_key_filter_is_another_backfill():
    day = backfill_range_from_values(PREFIX, "2026-11-01", "2026-11-02")
    same = backfill_range_from_values(PREFIX, "2026-11-01T00:00:00Z", "2026-11-02T00:00+00:00")
    assert backfill_key(day, KeyFilter()) == backfill_key(same, KeyFilter())
    keys = {
        backfill_key(day, KeyFilter()),
        backfill_key(backfill_range_from_values(PREFIX, "2026-11-01", "2026-11-03"), KeyFilter()),
        backfill_key(backfill_range_from_values(PREFIX + "2026/", "2026-11-01", "2026-11-02"), KeyFilter()),
        backfill_key(day, KeyFilter.from_options("Insight")),
        backfill_key(day, KeyFilter.from_options(None, None)),
    }
    assert len(keys) == 5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "store"), [("SIGKILL", "file"), ("SIGTERM", "file"), ("SIGKILL", "dynamodb")]
)
def test_a_backfill_stopped_halfway_and_restarted_delivers_every_record(
    moto, subprocess_env, tmp_path, how, store
):
    files, total = 200, 200 * RECORDS_PER_FILE
    file_of = put_files(moto, files, seed=13)
    receiver = NodeReceiver(tmp_path, "tcp")
    logs = tmp_path / "first.log", tmp_path / "second.log"
    try:
        args = backfill_args(moto, receiver.port, tmp_path, "tcp", *STORES[store])
        began = time.monotonic()
        with open(logs[0], "w") as log:
            first = start(args, subprocess_env, log)
            wait_until(lambda: len(receiver.records()) >= total // 2, 240, "half of the records")
            os.kill(first.pid, getattr(signal, how))
            code = first.wait(timeout=60)
        first_seconds = time.monotonic() - began
        assert code == (0 if how == "SIGTERM" else -signal.SIGKILL), logs[0].read_text()[-3000:]
        at_stop = event_ids(receiver.records())
        kept = recorded(args)
        began = time.monotonic()
        with open(logs[1], "w") as log:
            assert start(args, subprocess_env, log).wait(timeout=300) == 0, logs[1].read_text()[-3000:]
        second_seconds = time.monotonic() - began
        receiver.wait_for(total, timeout=10)
        time.sleep(1)  # anything still coming would be a duplicate
        counts = event_ids(receiver.records())
    finally:
        receiver.stop()

    second_log = logs[1].read_text()
    duplicates = sum(counts.values()) - len(counts)
    twice = {file_of[event] for event, seen in counts.items() if seen > 1}
    print(
        f"\n{how} ({store} store) after {sum(at_stop.values())} of {total} records ({len(kept)} of {files} "
        f"files recorded, {first_seconds:.1f} s); restart {second_seconds:.1f} s: {len(counts)} distinct "
        f"delivered, {duplicates} duplicates from {len(twice)} file(s)"
    )
    assert 0 < len(kept) < files, "stopped halfway, with the files delivered so far recorded"
    assert f"{len(kept)} objects delivered by earlier runs" in second_log
    assert set(counts) == set(file_of), "every record delivered"
    if how == "SIGTERM":
        assert duplicates == 0, "a clean stop records the file it finished"
        assert "stopping after" in logs[0].read_text()
    else:
        # The file in flight (read, maybe sent, not yet recorded) is the only one sent again.
        assert len(twice) <= 1 and duplicates <= RECORDS_PER_FILE, (duplicates, twice)
    assert summary_counters(second_log)["s3/objects"] == files - len(kept)


@pytest.mark.slow
def test_a_finished_backfill_run_again_sends_nothing_until_its_positions_are_reset(
    moto, subprocess_env, tmp_path
):
    files = 20
    file_of = put_files(moto, files, seed=17)
    # A file that cannot be read is done once it is in the dead letter, as its SQS message would be.
    broken = cloudtrail_key(START + 600, unique="BROKEN0000000000")
    put_cloudtrail_files(aws_client("s3", moto), BUCKET, [(broken, gzip.compress(b'{"Records": [{"eventTi'))])
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = backfill_args(moto, receiver.port, tmp_path)
        runs = []
        for extra in ([], [], ["--reset_positions"]):
            done = subprocess.run(
                command(args + extra),
                cwd=REPO,
                env=subprocess_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            time.sleep(1)  # what a run sent has arrived
            letters = [letter["s3_uri"] for letter in read_dead_letters(tmp_path / "dl")]
            runs.append((done.stderr, sum(event_ids(receiver.records()).values()), letters))
    finally:
        receiver.stop()
    (first, after_first, letters_first), (again, after_again, letters_again), (reset, after_reset, _) = runs
    print(f"\nreceived after each run: {after_first}, {after_again}, {after_reset}")
    assert after_first == len(file_of)
    assert letters_first == [f"s3://{BUCKET}/{broken}"]
    assert after_again == after_first, "the finished backfill sent nothing again"
    assert letters_again == letters_first, "nor dead-lettered anything again"
    assert f"{files + 1} objects delivered by earlier runs" in again
    assert summary_counters(again).get("s3/objects_already_delivered") == files + 1
    assert f"forgot the positions of {files + 1} shards" in reset
    assert after_reset == 2 * len(file_of), "--reset_positions reads the range again"


@pytest.mark.slow
def test_no_file_is_recorded_before_its_records_were_delivered_and_a_second_run_is_refused(
    moto, subprocess_env, tmp_path
):
    files = 40
    file_of = put_files(moto, files, seed=19)
    port = free_port()
    args = backfill_args(moto, port, tmp_path, "http", "--gelf_retry_seconds=120")
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
        first.wait_for(files * RECORDS_PER_FILE // 4, timeout=120)
        first.stop()  # Graylog goes away while the backfill is sending
        time.sleep(3)  # the sink retries; no file may be recorded for what it could not deliver
        before = event_ids(first.records())
        complete = {key for key, n in Counter(file_of[e] for e in before).items() if n == RECORDS_PER_FILE}
        kept = recorded(args)
        print(
            f"\nreceiver stopped after {len(before)} records: {len(complete)} files complete, "
            f"{len(kept)} recorded"
        )
        assert len(complete) < files, "stopped mid-run"
        assert kept <= complete, "a file was recorded before all its records were delivered"
        assert kept, "delivered files are recorded while the backfill goes on"

        refused = subprocess.run(
            command(args), cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"is being read by {socket.gethostname()}:{process.pid}:" in refused.stderr

        second = NodeReceiver(tmp_path, "http", port=port)  # Graylog is back
        _, log = process.communicate(timeout=240)
        after = event_ids(second.wait_for(len(file_of) - len(before), timeout=10))
    finally:
        if process.poll() is None:
            process.kill()
        first.stop()
        if second is not None:
            second.stop()
    assert process.returncode == 0, log[-3000:]
    assert set(before + after) == set(file_of), "every record arrived"
    assert recorded(args) == set(file_of.values()), "every file recorded once delivered"


@pytest.mark.slow
def test_a_backfill_whose_receiver_refuses_every_connection_records_nothing(moto, subprocess_env, tmp_path):
    put_files(moto, 5, seed=23)
    args = backfill_args(moto, free_port(), tmp_path, "tcp", "--gelf_retry_seconds=2")
    done = subprocess.run(
        command(args), cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0, "the run fails: nothing could be delivered"
    assert "failed for 2 s (--gelf_retry_seconds)" in done.stderr, done.stderr[-3000:]
    assert recorded(args) == set()
