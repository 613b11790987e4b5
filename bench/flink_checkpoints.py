"""Flink checkpoint size of the streaming flow-logs job over time (Beam issue #27648).

    .venv/bin/python -m bench.flink_checkpoints [--minutes 4] [--rate 50] [--interval 2000]

Starts the standalone test cluster (flink/cluster.py), moto_server with a 2-shard stream fed through
CloudWatch Logs at a steady rate, and the flow-logs pipeline in streaming mode with checkpointing; then
samples the latest completed checkpoint's size from Flink's REST API. Beam issue #27648 reports that
polling Python splittable DoFns make the checkpoint grow without bound; this shows what the pinned Beam
does with our Kinesis reader. Prints a table and writes
bench/results/flink-checkpoints-<time>-<settings>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3

from flink.cluster import ClusterConfig, FlinkCluster, fetch_flink, fetch_job_server
from pipelines.demo import MotoServer
from pipelines.gelf_receiver import GelfReceiver
from pipelines.sample_data import create_flow_log_stream, deliver_through_cloudwatch, flow_log_lines

REPO = Path(__file__).resolve().parent.parent
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def feed(logs, rate: int, stop: threading.Event) -> None:
    """Writes `rate` flow-log events a second, one PutLogEvents call a second, until stopped."""
    while not stop.is_set():
        started = time.monotonic()
        deliver_through_cloudwatch(logs, "/bench/flowlogs", flow_log_lines(rate), batch_size=rate)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--rate", type=int, default=50, help="events written per second")
    parser.add_argument("--interval", type=int, default=2000, help="checkpointing interval, ms")
    parser.add_argument("--extra", default="", help="more pipeline options, space-separated")
    args = parser.parse_args()

    fetch_job_server()
    fetch_flink()
    os.environ.update(CREDENTIALS)
    workdir = Path(tempfile.mkdtemp(prefix="bench-checkpoints-"))
    cluster = FlinkCluster(ClusterConfig(workdir=workdir / "flink"))
    cluster.start(worker_env=CREDENTIALS)
    moto = MotoServer(workdir)
    receiver = GelfReceiver(protocol="tcp").start()
    stop = threading.Event()
    samples: list[dict] = []
    cli = None
    try:
        session = boto3.Session(region_name="us-east-1")
        kinesis = session.client("kinesis", endpoint_url=moto.url)
        logs = session.client("logs", endpoint_url=moto.url)
        create_flow_log_stream(kinesis, logs, "bench", "/bench/flowlogs", shards=2)
        command = [
            sys.executable,
            "-m",
            "pipelines.flowlogs",
            "--stream_name=bench",
            "--region=us-east-1",
            f"--aws_endpoint_url={moto.url}",
            "--initial_position=TRIM_HORIZON",
            "--gelf_host=127.0.0.1",
            f"--gelf_port={receiver.port}",
            "--gelf_protocol=tcp",
            f"--dead_letter_path={workdir / 'dl'}",
            f"--checkpointing_interval={args.interval}",
            "--job_name=bench-checkpoints",
            *cluster.pipeline_args(parallelism=2),
            *args.extra.split(),
        ]
        cli = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jid = None
        while jid is None:
            jobs = cluster.rest("/jobs/overview")["jobs"]
            jid = next((j["jid"] for j in jobs if j["name"] == "bench-checkpoints"), None)
            time.sleep(0.5)
        if args.rate:
            threading.Thread(target=feed, args=(logs, args.rate, stop), daemon=True).start()
        started = time.monotonic()
        print(f"{'minute':>7} {'checkpoint':>10} {'state bytes':>12} {'events received':>16}")
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(15)
            completed = cluster.rest(f"/jobs/{jid}/checkpoints")["latest"]["completed"]
            if not completed:
                continue
            sample = {
                "seconds": round(time.monotonic() - started),
                "checkpoint": completed["id"],
                "state_size": completed["state_size"],
                "received": receiver.count,
            }
            samples.append(sample)
            print(
                f"{sample['seconds'] / 60:7.2f} {sample['checkpoint']:10d} {sample['state_size']:12,d} "
                f"{sample['received']:16,d}"
            )
    finally:
        stop.set()
        if cli is not None:
            cli.send_signal(signal.SIGTERM)
            try:
                cli.wait(timeout=60)
            except subprocess.TimeoutExpired:
                cli.kill()
        receiver.stop()
        moto.stop()
        cluster.stop()

    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        growth = (last["state_size"] - first["state_size"]) / max(
            1, (last["seconds"] - first["seconds"]) / 60
        )
        print(
            f"checkpoint state {first['state_size']:,} → {last['state_size']:,} bytes over "
            f"{(last['seconds'] - first['seconds']) / 60:.1f} min ({growth:+,.0f} bytes/min), "
            f"{last['checkpoint'] - first['checkpoint']} checkpoints"
        )
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    label = f"rate{args.rate}-interval{args.interval}"
    out = results / f"flink-checkpoints-{datetime.now(UTC):%Y-%m-%dT%H%M}-{label}.json"
    out.write_text(json.dumps({"args": vars(args), "samples": samples}, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
