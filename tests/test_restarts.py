"""A local run restarted resumes where it delivered up to: no gap, and duplicates only from the bundle in
flight when the process was killed. Real processes, moto, and a GELF TCP receiver counting each event by
its unique timestamp."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest

from pipelines.sample_data import cloudwatch_start_ms, create_flow_log_stream, deliver_through_cloudwatch
from tests.conftest import REGION, REPO, NodeReceiver, aws_client
from tests.faultproxy import FaultPolicy, KinesisFaultProxy
from tests.test_pipelines import LOG_GROUP, STREAM

pytestmark = pytest.mark.slow

LINE = "2 123456789012 eni-0a1b2c3d 10.0.0.1 10.0.0.2 80 2264 6 10 840 1700000000 1700000060 ACCEPT OK"


def flowlogs_args(moto: str, port: int, tmp_path, *extra: str) -> list[str]:
    return [
        "--runner=DirectRunner",
        f"--stream_name={STREAM}",
        f"--region={REGION}",
        f"--aws_endpoint_url={moto}",
        "--initial_position=TRIM_HORIZON",
        "--gelf_host=127.0.0.1",
        f"--gelf_port={port}",
        "--gelf_protocol=tcp",
        f"--dead_letter_path={tmp_path / 'dl'}",
        f"--state_dir={tmp_path / 'state'}",
        *extra,
    ]


def start(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.flowlogs", *args], cwd=REPO, env=env, stdout=log, stderr=log
    )


def numbered_events(moto: str, count: int, batch_size: int = 500) -> int:
    """`count` flow-log events through CloudWatch Logs, each with its own millisecond; returns the first."""
    logs = aws_client("logs", moto)
    create_flow_log_stream(aws_client("kinesis", moto), logs, STREAM, LOG_GROUP, shards=2)
    first = cloudwatch_start_ms()
    deliver_through_cloudwatch(logs, LOG_GROUP, [LINE] * count, batch_size=batch_size, start_ms=first)
    return first


def arrivals(receiver: NodeReceiver) -> Counter:
    return Counter(m["timestamp"] for m in receiver.messages() if "timestamp" in m)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_finished_run_started_again_sends_nothing_twice(moto, subprocess_env, tmp_path):
    numbered_events(moto, 2_000)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        for run in range(2):
            with open(tmp_path / f"run{run}.log", "w") as log:
                args = flowlogs_args(moto, receiver.port, tmp_path, "--stop_at_latest")
                assert start(args, subprocess_env, log).wait(timeout=240) == 0
        counts = arrivals(receiver)
    finally:
        receiver.stop()
    second = (tmp_path / "run1.log").read_text()
    assert "resuming 2 from the positions" in second
    assert len(counts) == 2_000 and max(counts.values()) == 1, "the second run read on after the first"


STORES = {"file": (), "dynamodb": ("--position_store=dynamodb", "--position_table=positions")}


@pytest.mark.parametrize(
    ("how", "store"), [("SIGKILL", "file"), ("SIGTERM", "file"), ("SIGKILL", "dynamodb")]
)
def test_a_restart_after_a_kill_loses_nothing(moto, subprocess_env, tmp_path, how, store):
    total = 100_000
    numbered_events(moto, total)
    receiver = NodeReceiver(tmp_path, "tcp")
    logs = []
    try:
        # 2 records of 500 events a call, 5 calls a second a shard: about 10,000 events a second, so the
        # kill lands in the middle of the stream.
        args = flowlogs_args(moto, receiver.port, tmp_path, "--kinesis_max_records=2", *STORES[store])
        with open(tmp_path / "first.log", "w") as log:
            first = start(args, subprocess_env, log)
            wait_until(lambda: sum(arrivals(receiver).values()) >= total // 3, 240, "a third of the events")
            os.kill(first.pid, getattr(signal, how))
            assert first.wait(timeout=60) in (0, -signal.SIGKILL)
        before = sum(arrivals(receiver).values())
        with open(tmp_path / "second.log", "w") as log:
            second = start(args, subprocess_env, log)
            try:
                wait_until(lambda: len(arrivals(receiver)) >= total, 300, "every event")
                time.sleep(2)  # anything still coming would be a duplicate
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=60) == 0
        counts = arrivals(receiver)
    finally:
        receiver.stop()
        logs = [
            (tmp_path / name).read_text()[-2000:]
            for name in ("first.log", "second.log")
            if (tmp_path / name).exists()
        ]
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"\n{how} ({store} store) after {before} of {total} events: {len(counts)} distinct delivered, "
        f"{duplicates} duplicates"
    )
    assert before < total, "the first run was stopped before it had delivered everything"
    assert len(counts) == total, logs
    if how == "SIGTERM":
        assert duplicates == 0, "a clean stop saves what it delivered"
    else:
        # A bundle is at most one call's 2 Kinesis records per shard, of 500 events each.
        assert duplicates <= 2 * 2 * 500, duplicates


@pytest.mark.parametrize("store", ["file", "dynamodb"])
def test_a_second_reader_is_refused_while_the_first_runs_and_takes_over_once_it_is_killed(
    moto, subprocess_env, tmp_path, store
):
    numbered_events(moto, 1_000)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = flowlogs_args(moto, receiver.port, tmp_path, *STORES[store])
        with open(tmp_path / "first.log", "w") as log:
            first = start(args, subprocess_env, log)
            wait_until(lambda: len(arrivals(receiver)) >= 1_000, 120, "the first reader's events")
            refused = subprocess.run(
                [sys.executable, "-m", "pipelines.flowlogs", *args],
                cwd=REPO,
                env=subprocess_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert refused.returncode == 2
            assert f"is being read by {socket.gethostname()}:{first.pid}:" in refused.stderr
            first.kill()
            first.wait(timeout=30)
        with open(tmp_path / "second.log", "w") as log:
            second = start(args + ["--stop_at_latest"], subprocess_env, log)
            assert second.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()[-2000:]
        counts = arrivals(receiver)
    finally:
        receiver.stop()
    assert "resuming 2 from the positions" in (tmp_path / "second.log").read_text()
    assert len(counts) == 1_000


def test_a_stored_position_past_retention_is_read_from_trim_horizon_counted_and_delivered(
    moto, subprocess_env, tmp_path
):
    first = numbered_events(moto, 1_000, batch_size=50)  # 20 records: both shards get some
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        with open(tmp_path / "first.log", "w") as log:
            args = flowlogs_args(moto, receiver.port, tmp_path, "--stop_at_latest")
            assert start(args, subprocess_env, log).wait(timeout=240) == 0
        deliver_through_cloudwatch(
            aws_client("logs", moto), LOG_GROUP, [LINE] * 1_000, batch_size=500, start_ms=first + 1_000
        )
        # While the pipeline was down, the stream trimmed every record it had delivered.
        with KinesisFaultProxy(moto, FaultPolicy(trimmed_through=10**130)) as proxy:
            with open(tmp_path / "second.log", "w") as log:
                args = flowlogs_args(proxy.url, receiver.port, tmp_path, "--stop_at_latest")
                assert start(args, subprocess_env, log).wait(timeout=240) == 0
        counts = arrivals(receiver)
    finally:
        receiver.stop()
    second = (tmp_path / "second.log").read_text()
    assert proxy.injected["InvalidArgumentException"] == 2, "both shards resumed after a stored position"
    assert second.count("is no longer in the stream") == 2 and "reading from TRIM_HORIZON" in second
    assert "kinesis/positions_expired=2" in second
    assert len(counts) == 2_000, "the new events are delivered"
    # moto keeps every record, so TRIM_HORIZON here is the stream's start: the first run's events again.
    assert sorted(Counter(counts.values()).items()) == [(1, 1_000), (2, 1_000)]
