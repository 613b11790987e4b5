"""Streaming latency on the DirectRunner: from CloudWatch Logs `PutLogEvents` to a GELF message received.

    .venv/bin/python -m bench.latency [--seconds 30] [--rate 1000]

moto_server holds a 1-shard stream fed by a log group's subscription filter; `python -m
pipelines.flowlogs` streams from it (`--initial_position=LATEST`, the reader's default settings, as
users run it) to a GELF UDP receiver in this process. Events are written at a steady rate in small
`PutLogEvents` calls; each carries its number in the `bytes` field, so the message that arrives maps
back to the call that wrote it. Latency = arrival time − write time, where the write time is taken
just before the call (so it includes CloudWatch → Kinesis delivery, which moto does within the call).

At 10 calls a second the reader (5 polls a second per shard) hardly ever finds the shard idle; below
5 calls a second the idle poll interval adds up to `--kinesis_idle_poll_seconds` (try `--rate 2`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from apache_beam.options.pipeline_options import PipelineOptions

from bench.report import Figure, table
from pipelines.demo import MotoServer
from pipelines.gelf_receiver import GelfReceiver
from pipelines.sample_data import ACCOUNT, create_flow_log_stream
from transforms.kinesis import KinesisOptions

REPO = Path(__file__).resolve().parent.parent
STREAM = "bench-latency"
LOG_GROUP = "/bench/latency"
LOG_STREAM = "eni-all"
#: Warm-up events come from one interface and measured events from another, so late warm-ups are ignored.
WARMUP_ENI = "eni-0aaaaaaaaaaaaaaaa"
MEASURED_ENI = "eni-0bbbbbbbbbbbbbbbb"
GOAL_SECONDS = 2.0


def flow_log_line(interface_id: str, number: int, now: float) -> str:
    """A default-format flow log line whose `bytes` is `number`."""
    end = int(now)
    return f"2 {ACCOUNT} {interface_id} 10.0.1.5 52.94.1.1 40000 443 6 10 {number} {end - 60} {end} ACCEPT OK"


def put(logs, interface_id: str, numbers: range) -> float:
    """Writes one event per number in one call; returns the time just before the call."""
    written = time.time()
    events = [
        {"timestamp": int(written * 1000), "message": flow_log_line(interface_id, n, written)}
        for n in numbers
    ]
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=LOG_STREAM, logEvents=events)
    return written


def start_pipeline(moto: MotoServer, receiver: GelfReceiver, workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", PYTHONPATH=str(REPO))
    env.pop("AWS_PROFILE", None)
    args = [
        "--runner=DirectRunner",
        f"--stream_name={STREAM}",
        "--region=us-east-1",
        f"--aws_endpoint_url={moto.url}",
        "--initial_position=LATEST",
        "--gelf_host=127.0.0.1",
        f"--gelf_port={receiver.port}",
        "--gelf_protocol=udp",
        f"--dead_letter_path={workdir / 'dl'}",
    ]
    with open(workdir / "pipeline.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.flowlogs", *args], cwd=REPO, env=env, stdout=log, stderr=log
        )


def stop_pipeline(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def warm_up(logs, arrivals: dict, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Writes a warm-up event every 2 s until one arrives: from then on the reader follows the shard."""
    deadline = time.monotonic() + timeout
    number = 0
    while not arrivals[WARMUP_ENI]:
        if process.poll() is not None:
            raise RuntimeError(f"the pipeline exited with status {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no warm-up event arrived within {timeout:.0f} s; see {log}")
        put(logs, WARMUP_ENI, range(number, number + 1))
        number += 1
        time.sleep(2)


def measure(seconds: float = 30, rate: int = 1000, *, workdir: Path) -> list[Figure]:
    workdir.mkdir(parents=True, exist_ok=True)
    idle_poll = PipelineOptions([]).view_as(KinesisOptions).kinesis_idle_poll_seconds
    # At most 10 calls a second: moto's subscription delivers one Kinesis record per call.
    per_call = max(1, math.ceil(rate / 10))
    interval = per_call / rate
    arrivals: dict[str, dict[int, float]] = {WARMUP_ENI: {}, MEASURED_ENI: {}}

    def arrived(message: dict) -> None:
        arrivals.get(message.get("_interface_id"), {}).setdefault(message.get("_bytes"), time.time())

    moto = MotoServer(workdir)
    receiver = GelfReceiver(protocol="udp", on_message=arrived).start()
    process = None
    written: dict[int, float] = {}
    try:
        session = boto3.Session(
            region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        logs = session.client("logs", endpoint_url=moto.url)
        create_flow_log_stream(
            session.client("kinesis", endpoint_url=moto.url), logs, STREAM, LOG_GROUP, shards=1
        )
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=LOG_STREAM)
        process = start_pipeline(moto, receiver, workdir)
        warm_up(logs, arrivals, process, workdir / "pipeline.log")

        calls = max(1, round(seconds / interval))
        started = time.monotonic()
        for call in range(calls):
            time.sleep(max(0.0, started + call * interval - time.monotonic()))
            numbers = range(call * per_call, (call + 1) * per_call)
            written.update(dict.fromkeys(numbers, put(logs, MEASURED_ENI, numbers)))
        writing = time.monotonic() - started
        deadline = time.monotonic() + 30
        while len(arrivals[MEASURED_ENI]) < len(written) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if process is not None:
            stop_pipeline(process)
        receiver.stop()
        moto.stop()

    received = arrivals[MEASURED_ENI]
    if not received:
        raise RuntimeError(f"none of {len(written)} events arrived; see {workdir / 'pipeline.log'}")
    latencies = sorted(at - written[number] for number, at in received.items())
    percentiles = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p99 = percentiles[49], percentiles[98]
    reader = f"reader defaults: --kinesis_idle_poll_seconds={idle_poll:g}"
    lost = len(written) - len(received)
    return [
        Figure("latency", "p50 write → GELF received", p50, "s", note=reader),
        Figure(
            "latency",
            "p99 write → GELF received",
            p99,
            "s",
            goal=f"p99 ≤ {GOAL_SECONDS:g} s",
            met=p99 <= GOAL_SECONDS,
            note=f"max {latencies[-1]:.2f} s",
        ),
        Figure(
            "latency",
            "events written",
            len(written),
            "events",
            note=f"{len(written) / writing:,.0f} events/s in {calls} calls over {writing:.1f} s",
        ),
        Figure("latency", "events received", len(received), "events", note=f"{lost} lost" if lost else None),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="how long events are written")
    parser.add_argument("--rate", type=int, default=1000, help="events written per second")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    print(table(measure(args.seconds, args.rate, workdir=workdir)))
    shutil.rmtree(workdir)  # kept, with the pipeline's log, when the run fails
    return 0


if __name__ == "__main__":
    sys.exit(main())
