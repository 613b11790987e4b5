"""Flink checkpoint size of the streaming flow-logs job over time (Beam issue #27648).

    .venv/bin/python -m bench.flink_checkpoints [--minutes 12] [--rate 50] [--interval 2000] [--settle 2]

Starts the standalone test cluster (flink/cluster.py), moto_server with a 2-shard stream fed through
CloudWatch Logs at a steady rate (`--rate 0`: idle), and the flow-logs pipeline in streaming mode with
checkpointing; then samples the latest completed checkpoint's size from Flink's REST API every 15 s.
Beam issue #27648: Beam 2.62's Flink runner kept every residual a polling splittable DoFn hands back in
state of its own, so the checkpoint grew for ever; the job server built here carries our fix
(flink/jobserver/src/main/java/awsgelf/flink/SdfResiduals.java), and the TaskManager log says so. The
growth is measured from the first sample after `--settle` minutes (start-up fills the state once) to the
last. Prints a table and writes bench/results/flink-checkpoints-<time>-<settings>.json.
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

from flink.cluster import (
    ClusterConfig,
    FlinkCluster,
    fetch_flink,
    fetch_job_server,
    job_server_sources_digest,
)
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


def growth(samples: list[dict], settle_seconds: float) -> dict | None:
    """Checkpoint size growth from the first sample after `settle_seconds` to the last."""
    kept = [s for s in samples if s["seconds"] >= settle_seconds]
    if len(kept) < 2:
        return None
    first, last = kept[0], kept[-1]
    minutes = (last["seconds"] - first["seconds"]) / 60
    return {
        "from_seconds": first["seconds"],
        "minutes": round(minutes, 2),
        "first_bytes": first["state_size"],
        "last_bytes": last["state_size"],
        "min_bytes": min(s["state_size"] for s in kept),
        "max_bytes": max(s["state_size"] for s in kept),
        "bytes_per_minute": round((last["state_size"] - first["state_size"]) / minutes),
        "checkpoints": last["checkpoint"] - first["checkpoint"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--rate", type=int, default=50, help="events written per second")
    parser.add_argument("--interval", type=int, default=2000, help="checkpointing interval, ms")
    parser.add_argument("--settle", type=float, default=2.0, help="minutes left out of the growth")
    parser.add_argument("--extra", default="", help="more pipeline options, space-separated")
    parser.add_argument(
        "--job-server-jar",
        type=Path,
        help="another job server jar, e.g. one without our fix, to compare (default: the one built here)",
    )
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
            *([f"--flink_job_server_jar={args.job_server_jar}"] if args.job_server_jar else []),
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
        patch_lines = [
            line.strip()
            for line in cluster.taskmanager_log().splitlines()
            if "patch for apache/beam#27648" in line
        ]
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

    summary = growth(samples, args.settle * 60)
    if summary:
        print(
            f"after {args.settle:g} min: checkpoint state {summary['first_bytes']:,} → "
            f"{summary['last_bytes']:,} bytes over {summary['minutes']:.1f} min "
            f"({summary['bytes_per_minute']:+,.0f} bytes/min; lowest {summary['min_bytes']:,}, highest "
            f"{summary['max_bytes']:,}), {summary['checkpoints']} checkpoints"
        )
    print(f"TaskManager: {patch_lines[0] if patch_lines else 'no SDF residual patch line (upstream Beam)'}")
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    label = f"rate{args.rate}-interval{args.interval}" + ("-otherjar" if args.job_server_jar else "")
    out = results / f"flink-checkpoints-{datetime.now(UTC):%Y-%m-%dT%H%M}-{label}.json"
    record = {
        "args": {**vars(args), "job_server_jar": str(args.job_server_jar or "")},
        "job_server_sources_sha256": job_server_sources_digest(),
        "sdf_residual_patch_log": patch_lines[:1],
        "growth_after_settle": summary,
        "samples": samples,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
