"""The flow-logs pipeline end to end from moto_server's Kinesis (`--stop_at_latest`), filled through
CloudWatch Logs, sending GELF over UDP to a counting receiver. Reported, not a goal: moto serves a few
thousand GetRecords calls a second and bounds the run, whatever the pipeline does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

from bench.data import estate, flow_log_lines
from bench.report import Figure
from bench.sink import CountingSink
from pipelines.demo import MotoServer
from pipelines.sample_data import create_flow_log_stream, deliver_through_cloudwatch

REPO = Path(__file__).resolve().parent.parent
EVENTS_PER_CALL = 200


def measure(events: int, workdir: Path, floor_rate: float | None = None) -> list[Figure]:
    workdir.mkdir(parents=True, exist_ok=True)
    _, holders = estate()
    lines = flow_log_lines(events, holders)
    moto = MotoServer(workdir)
    try:
        session = boto3.Session(
            region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        kinesis = session.client("kinesis", endpoint_url=moto.url)
        logs = session.client("logs", endpoint_url=moto.url)
        create_flow_log_stream(kinesis, logs, "bench", "/bench", shards=2)
        deliver_through_cloudwatch(logs, "/bench", lines, batch_size=EVENTS_PER_CALL)
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", PYTHONPATH=str(REPO)
        )
        with CountingSink() as sink:
            args = [
                "--runner=DirectRunner",
                "--stream_name=bench",
                "--region=us-east-1",
                f"--aws_endpoint_url={moto.url}",
                "--initial_position=TRIM_HORIZON",
                "--stop_at_latest",
                "--gelf_host=127.0.0.1",
                f"--gelf_port={sink.port}",
                f"--dead_letter_path={workdir / 'dl'}",
            ]
            started = time.perf_counter()
            with open(workdir / "pipeline.log", "wb") as log:
                subprocess.run(
                    [sys.executable, "-m", "pipelines.flowlogs", *args],
                    env=env,
                    check=True,
                    stdout=log,
                    stderr=log,
                )
            seconds = time.perf_counter() - started
            received = sink.wait_for(events, timeout=5)
            rate = sink.rate()
    finally:
        moto.stop()
    return [
        Figure(
            "moto",
            "from moto Kinesis, --stop_at_latest",
            rate,
            "events/s",
            ratio=rate / floor_rate if floor_rate else None,
            baseline="floor" if floor_rate else None,
            note=f"{events:,} events, {events / seconds:,.0f}/s whole run, {received:,} received",
        )
    ]
