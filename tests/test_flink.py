"""The pipelines on real Flink: Flink's in-process mini cluster, and a standalone cluster on 127.0.0.1
(JobManager, TaskManager with 2 slots, Beam worker pool), both driven through the user's command line.

Marked `flink`: `make test SKIP_FLINK=1` (or `pytest -m "not flink"`) leaves them out.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from flink.cluster import FLINK_MINOR, ClusterConfig, FlinkCluster, fetch_flink, fetch_job_server
from pipelines.sample_data import create_flow_log_stream, deliver_through_cloudwatch, flow_log_lines
from tests.conftest import CREDENTIALS, REGION, NodeReceiver, aws_client, free_port
from tests.test_pipelines import LOG_GROUP, STREAM, pipeline_args, run_cli, start_cli
from transforms.deadletter import read_dead_letters

pytestmark = [pytest.mark.flink, pytest.mark.slow]

MALFORMED = ["2 123456789012 eni-0bad cut short", "not a flow log"]


@pytest.fixture(scope="session")
def job_server_jar() -> Path:
    return fetch_job_server()


@pytest.fixture(scope="session")
def flink_cluster(job_server_jar, tmp_path_factory):
    """A standalone cluster for the session, on free loopback ports; its workers get test credentials."""
    fetch_flink()
    config = ClusterConfig(
        rest_port=free_port(),
        rpc_port=free_port(),
        worker_pool_port=free_port(),
        workdir=tmp_path_factory.mktemp("flink"),
    )
    cluster = FlinkCluster(config)
    cluster.start(worker_env={**CREDENTIALS, "AWS_DEFAULT_REGION": REGION})
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def gelf_tcp(tmp_path):
    receiver = NodeReceiver(tmp_path, "tcp")
    yield receiver
    receiver.stop()


def over_tcp(args: list[str]) -> list[str]:
    """The shared pipeline arguments, sending GELF over TCP: no datagram is lost on a busy machine."""
    return [a for a in args if not a.startswith("--gelf_protocol")] + ["--gelf_protocol=tcp"]


def content(messages: list[dict]) -> Counter:
    return Counter(json.dumps(m, sort_keys=True) for m in messages)


def flink_job(cluster: FlinkCluster, name: str) -> dict:
    jobs = [j for j in cluster.rest("/jobs/overview")["jobs"] if j["name"] == name]
    assert len(jobs) == 1, f"one Flink job named {name}: {jobs}"
    return cluster.rest(f"/jobs/{jobs[0]['jid']}")


def wait_for_state(cluster: FlinkCluster, name: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = flink_job(cluster, name)
            if job["state"] in states:
                return job
        except AssertionError:
            job = None
        if time.monotonic() > deadline:
            pytest.fail(f"job {name} not in {states} after {timeout} s: {job and job['state']}")
        time.sleep(0.5)


def parallelism_by_stage(job: dict) -> dict[str, int]:
    return {vertex["name"]: vertex["parallelism"] for vertex in job["vertices"]}


def stage(job: dict, *transforms: str) -> dict:
    """The Flink vertex that runs all of these Beam transforms (fused into one operator chain)."""
    vertices = [v for v in job["vertices"] if all(t in v["name"] for t in transforms)]
    assert vertices, f"no vertex runs {transforms}: {list(parallelism_by_stage(job))}"
    return vertices[0]


def test_cluster_delivers_the_same_messages_as_the_direct_runner(
    moto, subprocess_env, flink_cluster, job_server_jar, tmp_path
):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    lines = flow_log_lines(3_000)
    deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=200, start_ms=1_795_000_000_000)
    deliver_through_cloudwatch(
        logs, LOG_GROUP, MALFORMED, log_stream="eni-broken", start_ms=1_795_100_000_000
    )

    received = {}
    for runner, extra in {
        "direct": [],
        "flink": flink_cluster.pipeline_args(parallelism=2) + ["--job_name=same-as-direct"],
    }.items():
        receiver = NodeReceiver(tmp_path, "tcp")
        try:
            args = over_tcp(pipeline_args(moto, receiver.port, tmp_path / f"dl-{runner}"))
            done = run_cli("flowlogs", args + ["--stop_at_latest"] + extra, subprocess_env, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            received[runner] = receiver.wait_for(len(lines), timeout=15)
        finally:
            receiver.stop()
        letters = list(read_dead_letters(tmp_path / f"dl-{runner}"))
        assert sorted(letter["raw"] for letter in letters) == sorted(line.encode() for line in MALFORMED)

    assert len(received["direct"]) == len(lines)
    assert content(received["flink"]) == content(received["direct"])

    job = flink_job(flink_cluster, "same-as-direct")
    assert job["state"] == "FINISHED"
    assert stage(job, "ReadKinesis", "ReadShards")["parallelism"] == 2
    assert stage(job, "DecodeSubscription", "ToGelf", "WriteGelf")["parallelism"] == 2


def test_streaming_job_picks_up_new_events_and_cancels_on_sigterm(
    moto, subprocess_env, flink_cluster, gelf_tcp, tmp_path
):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    name = "streaming-cancel"
    args = over_tcp(pipeline_args(moto, gelf_tcp.port, tmp_path / "dl"))
    cli = start_cli(
        "flowlogs",
        args
        + flink_cluster.pipeline_args(parallelism=2)
        + [f"--job_name={name}", "--checkpointing_interval=2000"],
        subprocess_env,
    )
    try:
        job = wait_for_state(flink_cluster, name, {"RUNNING"}, timeout=120)
        assert stage(job, "ReadKinesis", "ReadShards")["parallelism"] == 2
        assert stage(job, "DecodeSubscription", "ToGelf")["parallelism"] == 2
        time.sleep(3)  # the job reads both shards before anything is written
        lines = flow_log_lines(1_000)
        written = time.monotonic()
        deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=100)
        messages = gelf_tcp.wait_for(len(lines), timeout=60)
        latency = time.monotonic() - written
        assert len(messages) == len(lines), f"{len(messages)} of {len(lines)} arrived"
        print(f"\n1,000 events written after submission arrived within {latency:.1f} s")

        cli.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        output, _ = cli.communicate(timeout=60)
        print(f"SIGTERM to exit: {time.monotonic() - stopped:.1f} s")
        assert cli.returncode == 0, output[-3000:]
        job = wait_for_state(flink_cluster, name, {"CANCELED"}, timeout=30)
        assert all(v["status"] == "CANCELED" for v in job["vertices"]), job["vertices"]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_embedded_flink_runs_the_flow_logs_pipeline(moto, subprocess_env, job_server_jar, gelf_tcp, tmp_path):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    lines = flow_log_lines(2_000)
    deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=250)
    args = over_tcp(pipeline_args(moto, gelf_tcp.port, tmp_path / "dl"))
    done = run_cli(
        "flowlogs",
        args
        + [
            "--stop_at_latest",
            "--runner=FlinkRunner",
            f"--flink_version={FLINK_MINOR}",
            "--flink_master=[local]",
            "--environment_type=LOOPBACK",
            f"--flink_job_server_jar={job_server_jar}",
        ],
        subprocess_env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    messages = gelf_tcp.wait_for(len(lines), timeout=15)
    assert len(messages) == len(lines)
    assert len({m["timestamp"] for m in messages}) == len(lines)
    assert "flowlogs/events=2000" in done.stderr


def test_a_missing_job_server_jar_is_refused_at_start(moto, subprocess_env, tmp_path):
    done = run_cli(
        "flowlogs",
        pipeline_args(moto, 12201, tmp_path / "dl")
        + ["--runner=FlinkRunner", f"--flink_job_server_jar={tmp_path / 'nope.jar'}"],
        subprocess_env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--flink_job_server_jar" in done.stderr and "make flink-jobserver" in done.stderr
