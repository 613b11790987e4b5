"""Flow-log throughput on the standalone Flink cluster at parallelism 1 and 2: does a second slot help?

    .venv/bin/python -m bench.flink_scaling [--events 400000]

The pipeline reads pre-generated Kinesis records from files (`bench.replay`), so the figure is the
pipeline's own speed on Flink, not moto's. The same 8 files are replayed at parallelism 1, then 2, on
one cluster (flink/cluster.py on free loopback ports, a TaskManager with two slots), each run sending
GELF over UDP to a `CountingSink`. Throughput is the sink's first-to-last arrival rate; the whole-run
rate (launch until the launcher exits: job server, submission and SDK workers' start-up included) is
reported too, and how busy the machine's CPUs were while messages arrived. The Python work of the
subtasks runs in the TaskManager's SDK worker processes; Beam's default is one
(`--sdk_worker_parallelism=1`), which puts both subtasks under one GIL, so each run asks for one per
slot, as run_configs/flowlogs-flink.yaml does; a third run, parallelism 2 with Beam's default of one
worker, shows what that setting is worth. The machine is shared: quote the ratios to parallelism 1
rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.data import estate, flow_log_payloads
from bench.measuring import CpuSampler
from bench.records import write_replay_files
from bench.report import Figure, table
from bench.sink import CountingSink
from flink.cluster import ClusterConfig, FlinkCluster, fetch_flink, fetch_job_server
from pipelines.demo import free_port

REPO = Path(__file__).resolve().parent.parent
FILES = 8
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
GOAL_RATIO = 1.8


def replay(
    cluster: FlinkCluster, parallelism: int, events: int, records: Path, workdir: Path, sdk_workers: int
) -> tuple[int, float, float, float | None]:
    """One bounded run: messages received, the sink's rate and the whole run's rate (events/s), and
    how busy the machine's CPUs were while messages arrived (0..1)."""
    name = f"p{parallelism}-w{sdk_workers}"
    log = workdir / f"replay-{name}.log"
    env = dict(os.environ, **CREDENTIALS, PYTHONPATH=str(REPO))
    with CountingSink() as sink, CpuSampler() as cpu, open(log, "wb") as out:
        command = [
            sys.executable,
            "-m",
            "bench.replay",
            f"--replay_dir={records}",
            "--gelf_host=127.0.0.1",
            f"--gelf_port={sink.port}",
            "--gelf_protocol=udp",
            f"--dead_letter_path={workdir / f'dl-{name}'}",
            "--region=us-east-1",
            f"--job_name=bench-{name}",
            # One Python SDK process per slot: one process would run both subtasks under one GIL.
            f"--sdk_worker_parallelism={sdk_workers}",
            *cluster.pipeline_args(parallelism=parallelism),
        ]
        started = time.perf_counter()
        # Its own process group: on a timeout the job server (a JVM) it started goes with it.
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = process.wait(timeout=900)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        elapsed = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(
                f"bench.replay at parallelism {parallelism} ({sdk_workers} SDK workers) exited with "
                f"{status}; see {log} and the Flink logs in {cluster.log_dir}"
            )
        received = sink.wait_for(events, timeout=10)
        busy = cpu.busy(sink.first, sink.last) if sink.first is not None else None
        return received, sink.rate(), received / elapsed, busy


def measure(events: int = 400_000, *, workdir: Path) -> list[Figure]:
    records = workdir / "records"
    write_replay_files(flow_log_payloads(events, estate()[1]), records, FILES)
    fetch_job_server()
    fetch_flink()
    cluster = FlinkCluster(
        ClusterConfig(
            rest_port=free_port(),
            rpc_port=free_port(),
            worker_pool_port=free_port(),
            workdir=workdir / "flink",
        )
    )
    cluster.start(worker_env=CREDENTIALS)
    # (parallelism, SDK worker processes): one per slot as the run configs ask, then Beam's default
    settings = ((1, 1), (2, 2), (2, 1))
    try:
        runs = {(p, w): replay(cluster, p, events, records, workdir, w) for p, w in settings}
    finally:
        cluster.stop()

    cpus = os.cpu_count()
    figures = []
    for (parallelism, workers), (received, rate, whole, busy) in runs.items():
        label = f"parallelism {parallelism}" + (
            ", one SDK worker (Beam's default)" if workers < parallelism else ""
        )
        short = events - received
        figures += [
            Figure(
                "flink scaling",
                f"{label}, delivering",
                rate,
                "events/s",
                note=None if busy is None else f"all {cpus} CPUs {busy:.0%} busy meanwhile",
            ),
            Figure("flink scaling", f"{label}, whole run", whole, "events/s", note="job start-up included"),
            Figure(
                "flink scaling",
                f"{label}, received",
                received,
                "events",
                note=f"{short:,} short of {events:,}" if short else None,
            ),
        ]
        if busy is not None:
            figures.append(
                Figure("flink scaling", f"{label}, CPUs busy while delivering", busy * cpus, "cores")
            )
    base = runs[(1, 1)][1]
    ratio = runs[(2, 2)][1] / base if base else 0.0
    default_ratio = runs[(2, 1)][1] / base if base else 0.0
    figures += [
        Figure(
            "flink scaling",
            "delivering, parallelism 2 / 1",
            ratio,
            "×",
            goal=f"≥ {GOAL_RATIO}",
            met=ratio >= GOAL_RATIO,
            note=f"{cpus} CPUs; --sdk_worker_parallelism = --parallelism",
        ),
        Figure(
            "flink scaling",
            "delivering, parallelism 2 with one SDK worker / parallelism 1",
            default_ratio,
            "×",
            note=f"{cpus} CPUs; --sdk_worker_parallelism=1, Beam's default",
        ),
    ]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-flink-scaling-"))
    print(table(measure(args.events, workdir=workdir)))
    shutil.rmtree(workdir)  # kept, with the launcher's and Flink's logs, when a run fails
    return 0


if __name__ == "__main__":
    sys.exit(main())
