"""Flow-log throughput: the whole pipeline against a plain-Python baseline measured in the same run.

    .venv/bin/python -m bench.flowlogs_throughput [--events 50000] [--repeat 3]

Baseline: decode the same subscription payloads, parse, build and encode GELF in a plain loop (no
Beam, no I/O). Pipeline: `python -m pipelines.flowlogs --stop_at_latest` reading a 2-shard moto stream
filled through CloudWatch Logs and sending GELF over UDP to a local receiver. The figure to compare is
the ratio pipeline / baseline: the machine is shared and absolute numbers drift.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from pipelines.demo import MotoServer
from pipelines.gelf_receiver import GelfReceiver
from pipelines.sample_data import create_flow_log_stream, deliver_through_cloudwatch, flow_log_lines
from transforms.cloudwatch import decode_subscription
from transforms.flowlogs import DEFAULT_FORMAT, flow_log_gelf, parse_flow_log, parse_format
from transforms.gelf import encode_message

REPO = Path(__file__).resolve().parent.parent
BATCH = 500


def baseline(payloads: list[bytes]) -> float:
    """Events per second of decode + parse + build + encode in plain Python."""
    fmt = parse_format(DEFAULT_FORMAT)
    started = time.perf_counter()
    events = 0
    for data in payloads:
        batch = decode_subscription(data)
        for event in batch.events:
            record = parse_flow_log(event.message, fmt)
            encode_message(flow_log_gelf(record, event, batch, "aws-flowlogs", "bench"))
            events += 1
    return events / (time.perf_counter() - started)


def pipeline(events: int, workdir: Path) -> tuple[float, float, int]:
    """Events per second of the whole run (start-up included), of the delivery itself (first to last
    message received), and the number of messages received."""
    workdir.mkdir(parents=True, exist_ok=True)
    moto = MotoServer(workdir)
    arrivals: list[float] = []
    receiver = GelfReceiver(protocol="udp", on_message=lambda m: arrivals.append(time.perf_counter())).start()
    try:
        session = boto3.Session(
            region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        kinesis = session.client("kinesis", endpoint_url=moto.url)
        logs = session.client("logs", endpoint_url=moto.url)
        create_flow_log_stream(kinesis, logs, "bench", "/bench", shards=2)
        deliver_through_cloudwatch(logs, "/bench", flow_log_lines(events), batch_size=BATCH)
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", PYTHONPATH=str(REPO)
        )
        args = [
            "--runner=DirectRunner",
            "--stream_name=bench",
            "--region=us-east-1",
            f"--aws_endpoint_url={moto.url}",
            "--initial_position=TRIM_HORIZON",
            "--stop_at_latest",
            "--gelf_host=127.0.0.1",
            f"--gelf_port={receiver.port}",
            f"--dead_letter_path={workdir / 'dl'}",
        ]
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pipelines.flowlogs", *args], env=env, check=True, capture_output=True
        )
        elapsed = time.perf_counter() - started
        receiver.wait_for(events, timeout=10)
        delivery = events / max(arrivals[-1] - arrivals[0], 1e-9)
        return events / elapsed, delivery, receiver.count
    finally:
        receiver.stop()
        moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from pipelines.sample_data import subscription_payload

    lines = flow_log_lines(args.events)
    payloads = [subscription_payload(lines[i : i + BATCH]) for i in range(0, len(lines), BATCH)]
    base, full, steady = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            base.append(baseline(payloads))
            rate, delivery, received = pipeline(args.events, Path(tmp) / str(i))
            full.append(rate)
            steady.append(delivery)
            print(
                f"run {i + 1}: baseline {base[-1]:,.0f} ev/s; pipeline {rate:,.0f} ev/s whole run, "
                f"{delivery:,.0f} ev/s delivering; received {received}"
            )
    b, f, d = statistics.median(base), statistics.median(full), statistics.median(steady)
    print(
        f"median: baseline {b:,.0f} ev/s; whole run {f:,.0f} ev/s (ratio {f / b:.2f}); "
        f"delivering {d:,.0f} ev/s (ratio {d / b:.2f})"
    )


if __name__ == "__main__":
    main()
