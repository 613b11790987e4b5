"""The pipelines on real Flink: Flink's in-process mini cluster, and a standalone cluster on 127.0.0.1
(JobManager, TaskManager with 2 slots, Beam worker pool), both driven through the user's command line.

Marked `flink`: `make test SKIP_FLINK=1` (or `pytest -m "not flink"`) leaves them out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flink.cluster import FLINK_MINOR, ClusterConfig, FlinkCluster, fetch_flink, fetch_job_server
from pipelines.sample_data import (
    cloudwatch_start_ms,
    create_flow_log_stream,
    deliver_through_cloudwatch,
    flow_log_lines,
)
from tests.conftest import CREDENTIALS, REGION, REPO, NodeReceiver, aws_client, free_port
from tests.estate import network, run
from tests.faultproxy import FaultPolicy, KinesisFaultProxy
from tests.test_enrichment import DestinationProbe, flow_line, two_vpcs_with_the_same_address
from tests.test_pipelines import LOG_GROUP, STREAM, pipeline_args
from transforms.deadletter import read_dead_letters

pytestmark = [pytest.mark.flink, pytest.mark.slow]

MALFORMED = ["2 123456789012 eni-0bad cut short", "not a flow log"]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def job_server_jar() -> Path:
    return fetch_job_server()


@pytest.fixture(scope="session")
def beams_own_job_server_jar(job_server_jar, tmp_path_factory) -> Path:
    """The job server as Beam 2.62.0 has it: ours without our classes, and with each class that calls
    them (those PatchSdfResiduals rewrote) put back from Maven's copy of Beam's jar it came from."""
    from importlib.metadata import version

    beam = version("apache-beam")
    repository = Path.home() / ".m2" / "repository" / "org" / "apache" / "beam"
    artifacts = ("beam-runners-java-fn-execution", f"beam-runners-flink-{FLINK_MINOR}")
    beam_jars = [zipfile.ZipFile(repository / a / beam / f"{a}-{beam}.jar") for a in artifacts]
    restored = []
    jar = tmp_path_factory.mktemp("upstream") / job_server_jar.name
    with zipfile.ZipFile(job_server_jar) as source, zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            if entry.filename.startswith("awsgelf/"):
                continue
            data = source.read(entry.filename)
            if b"awsgelf/flink/SdfResiduals" in data:
                original = next(j for j in beam_jars if entry.filename in j.namelist())
                data = original.read(entry.filename)
                restored.append(entry.filename)
            out.writestr(entry, data)
    for beam_jar in beam_jars:
        beam_jar.close()
    assert restored, "no class of the job server calls SdfResiduals"
    return jar


class PushGateway:
    """What a Prometheus push gateway receives: every body Flink's reporter pushes, in text format."""

    def __init__(self):
        self.bodies: list[str] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _take(self):
                length = int(self.headers.get("Content-Length", 0))
                gateway.bodies.append(self.rfile.read(length).decode("utf-8", "replace"))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _take  # noqa: N815 - http.server's naming

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def samples(self) -> list:
        found = []
        for body in list(self.bodies):
            for family in text_string_to_metric_families(body):
                found.extend(family.samples)
        return found


@pytest.fixture(scope="session")
def push_gateway():
    gateway = PushGateway()
    yield gateway
    gateway.server.shutdown()


@pytest.fixture(scope="session")
def flink_cluster(job_server_jar, tmp_path_factory, push_gateway):
    """A standalone cluster for the session, on free loopback ports; its workers get test credentials,
    and its metrics go, through Flink's Prometheus reporter code, to a push gateway of the test's."""
    fetch_flink()
    config = ClusterConfig(
        rest_port=8081 if port_is_free(8081) else free_port(),  # Flink's usual UI port, if free
        rpc_port=free_port(),
        worker_pool_port=free_port(),
        workdir=tmp_path_factory.mktemp("flink"),
        metrics_push_url=push_gateway.url,
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


@contextmanager
def launched(args: list[str], env: dict, module: str = "flowlogs") -> Iterator[subprocess.Popen]:
    """A pipeline's command line in its own process group: whatever happens, the job server it
    starts (a JVM) does not outlive the test."""
    process = subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{module}", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        process.stdout.close()


def run_flowlogs(
    args: list[str], env: dict, timeout: float = 300, module: str = "flowlogs"
) -> tuple[int, str]:
    with launched(args, env, module) as process:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output


def stop(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """SIGTERM, as a service manager stops it; returns the exit status and output."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


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
    start_ms = cloudwatch_start_ms()
    deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=200, start_ms=start_ms)
    deliver_through_cloudwatch(
        logs, LOG_GROUP, MALFORMED, log_stream="eni-broken", start_ms=start_ms + len(lines)
    )

    received = {}
    for runner, extra in {
        "direct": [],
        # Checkpointing on, as in run_configs/flowlogs-flink.yaml: the bounded run must still end.
        "flink": flink_cluster.pipeline_args(parallelism=2)
        + ["--job_name=same-as-direct", "--checkpointing_interval=2000"],
    }.items():
        receiver = NodeReceiver(tmp_path, "tcp")
        try:
            args = over_tcp(pipeline_args(moto, receiver.port, tmp_path / f"dl-{runner}"))
            status, output = run_flowlogs(args + ["--stop_at_latest"] + extra, subprocess_env)
            assert status == 0, output[-3000:]
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


def pushed(gateway: PushGateway, namespace: str, name: str) -> float:
    """The largest value pushed for a Beam counter `namespace/name` by Flink's Prometheus reporter."""
    values = [
        sample.value
        for sample in gateway.samples()
        if namespace in sample.name and sample.name.endswith(name)
    ]
    return max(values, default=0)


def test_recognisable_fake_credentials_reach_no_log_dead_letter_metric_or_job_config(
    moto, subprocess_env, flink_cluster, push_gateway, gelf_tcp, tmp_path
):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=1)
    start_ms = cloudwatch_start_ms()
    deliver_through_cloudwatch(logs, LOG_GROUP, flow_log_lines(200), start_ms=start_ms)
    deliver_through_cloudwatch(logs, LOG_GROUP, MALFORMED, log_stream="eni-broken", start_ms=start_ms + 200)
    secret, token = "FAKESECRETzq8Xv3Lm9Kp2Rt7Wy4Nb6Hd1Jg5", "FAKETOKENqp3Ls8Xd2Vm7Kr9Tw4Yb1Nh6Jc5Gf0"
    pushed_before = len(push_gateway.bodies)
    args = over_tcp(pipeline_args(moto, gelf_tcp.port, tmp_path / "dl"))
    args += flink_cluster.pipeline_args(parallelism=1) + [
        "--job_name=fake-credentials",
        "--stop_at_latest",
        "--aws_access_key_id=AKIAFAKEKEYID",
        f"--aws_secret_access_key={secret}",
        f"--aws_session_token={token}",
    ]
    status, output = run_flowlogs(args, subprocess_env)
    assert status == 0, output[-3000:]
    gelf_tcp.wait_for(200, timeout=15)
    letters = b"".join(path.read_bytes() for path in (tmp_path / "dl").rglob("*") if path.is_file())
    assert letters, "the malformed lines were dead-lettered"

    job = flink_job(flink_cluster, "fake-credentials")
    job_config = json.dumps(flink_cluster.rest(f"/jobs/{job['jid']}/config"))
    assert "awsSecretAccessKey" in job_config or "aws_secret_access_key" in job_config, "the option is there"
    flink_logs = "".join(
        path.read_text(errors="replace") for path in flink_cluster.log_dir.glob("*") if path.is_file()
    )
    places = {
        "the launcher's and job server's output": output,
        "Flink's and the workers' logs": flink_logs,
        "the dead letters": letters.decode("latin-1"),
        "the metrics": "".join(push_gateway.bodies[pushed_before:]),
        "Flink's job config": job_config,
    }
    for place, text in places.items():
        assert secret not in text and token not in text, f"a credential in {place}"


def test_streaming_job_picks_up_new_events_polls_idle_shards_calmly_and_cancels_on_sigterm(
    moto, subprocess_env, flink_cluster, push_gateway, gelf_tcp, tmp_path
):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    name = "streaming-cancel"
    flink = flink_cluster.pipeline_args(parallelism=2) + [
        f"--job_name={name}",
        "--checkpointing_interval=2000",
    ]
    with (
        KinesisFaultProxy(moto, FaultPolicy()) as proxy,
        launched(
            over_tcp(pipeline_args(proxy.url, gelf_tcp.port, tmp_path / "dl")) + flink, subprocess_env
        ) as cli,
    ):
        job = wait_for_state(flink_cluster, name, {"RUNNING"}, timeout=120)
        assert stage(job, "ReadKinesis", "ReadShards")["parallelism"] == 2
        assert stage(job, "DecodeSubscription", "ToGelf")["parallelism"] == 2

        # Beam #20668: Flink may resume deferred work early. Idle shards must still be polled about
        # once per --kinesis_idle_poll_seconds (1 s), not in a busy loop.
        deadline = time.monotonic() + 60
        while len(proxy.polls) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        counted_from = {shard: len(times) for shard, times in proxy.polls.items()}
        time.sleep(10)
        idle_rates = {shard: (len(proxy.polls[shard]) - n) / 10 for shard, n in counted_from.items()}
        print(f"\nidle GetRecords calls per second per shard: {idle_rates}")
        assert len(idle_rates) == 2 and all(0.3 <= rate <= 1.5 for rate in idle_rates.values()), idle_rates

        lines = flow_log_lines(1_000)
        written = time.monotonic()
        deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=100)
        messages = gelf_tcp.wait_for(len(lines), timeout=60)
        latency = time.monotonic() - written
        assert len(messages) == len(lines), f"{len(messages)} of {len(lines)} arrived"
        print(f"1,000 events written after submission arrived within {latency:.1f} s")

        # Beam #27648, fixed in the job server built here: each hand-back of an idle shard used to add
        # a keyed state of its own to every checkpoint (at the +379 KB/min measured idle, 126 KB in 20 s).
        first = latest_checkpoint(flink_cluster, name, after_ms=time.time() * 1000)
        polls_before = sum(len(times) for times in proxy.polls.values())
        time.sleep(20)
        last = latest_checkpoint(flink_cluster, name, after_ms=time.time() * 1000)
        polls = sum(len(times) for times in proxy.polls.values()) - polls_before
        growth = last["state_size"] - first["state_size"]
        print(f"checkpoint state {first['state_size']:,} -> {last['state_size']:,} bytes over {polls} polls")
        assert polls >= 10, "the shards were polled (and handed back) while the size was watched"
        assert growth < 4_000, f"the checkpoint grew by {growth:,} bytes in 20 s"
        assert (
            "SDF residuals are kept in the map state 'aws_gelf_sdf_residuals'"
            in flink_cluster.taskmanager_log()
        )

        # Flink's Prometheus reporter carries the job's Beam counters.
        deadline = time.monotonic() + 30
        while not (
            pushed(push_gateway, "kinesis", "records") > 0 and pushed(push_gateway, "gelf", "messages")
        ):
            if time.monotonic() > deadline:
                names = sorted({s.name for s in push_gateway.samples() if "_operator_" in s.name})
                pytest.fail(f"no Kinesis or GELF counter among the operator metrics pushed: {names}")
            time.sleep(1)
        beam = sorted({s.name for s in push_gateway.samples() if "kinesis" in s.name or "gelf" in s.name})
        print(f"Beam counters through Flink's Prometheus reporter: {beam}")

        stopped = time.monotonic()
        status, output = stop(cli)
        print(f"SIGTERM to exit: {time.monotonic() - stopped:.1f} s")
        assert status == 0, output[-3000:]
    assert "CANCELED" in output, f"the launcher waits until Flink has cancelled the job: {output[-3000:]}"
    job = wait_for_state(flink_cluster, name, {"CANCELED"}, timeout=5)
    assert all(v["status"] == "CANCELED" for v in job["vertices"]), job["vertices"]


def test_embedded_flink_runs_the_flow_logs_pipeline(moto, subprocess_env, job_server_jar, gelf_tcp, tmp_path):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    lines = flow_log_lines(2_000)
    deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=250)
    args = over_tcp(pipeline_args(moto, gelf_tcp.port, tmp_path / "dl"))
    status, output = run_flowlogs(
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
    )
    assert status == 0, output[-3000:]
    messages = gelf_tcp.wait_for(len(lines), timeout=15)
    assert len(messages) == len(lines)
    assert len({m["timestamp"] for m in messages}) == len(lines)
    assert "flowlogs/events=2000" in output


def test_a_missing_job_server_jar_is_refused_at_start(moto, subprocess_env, tmp_path):
    status, output = run_flowlogs(
        pipeline_args(moto, 12201, tmp_path / "dl")
        + ["--runner=FlinkRunner", f"--flink_job_server_jar={tmp_path / 'nope.jar'}"],
        subprocess_env,
        timeout=60,
    )
    assert status == 2
    assert "--flink_job_server_jar" in output and "make flink-jobserver" in output


def latest_checkpoint(cluster: FlinkCluster, name: str, after_ms: float, timeout: float = 60) -> dict:
    """The newest completed checkpoint of a running job that was triggered after `after_ms`."""
    jid = flink_job(cluster, name)["jid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        completed = cluster.rest(f"/jobs/{jid}/checkpoints")["latest"]["completed"]
        if completed and completed["trigger_timestamp"] > after_ms:
            return completed
        time.sleep(0.5)
    pytest.fail(f"no checkpoint of {name} completed after {after_ms}")


def stop_with_savepoint(cluster: FlinkCluster, name: str, directory: Path, timeout: float = 60) -> str:
    """Flink's "stop with savepoint" (what `flink stop --savepointPath` does); returns its location."""
    jid = flink_job(cluster, name)["jid"]
    body = json.dumps({"targetDirectory": directory.as_uri(), "drain": False}).encode()
    request = urllib.request.Request(
        f"{cluster.rest_url}/jobs/{jid}/stop",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        trigger = json.loads(response.read())["request-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.rest(f"/jobs/{jid}/savepoints/{trigger}")
        if status["status"]["id"] == "COMPLETED":
            operation = status["operation"]
            assert "location" in operation, operation
            return operation["location"]
        time.sleep(0.5)
    pytest.fail(f"the savepoint of {name} did not complete in {timeout} s")


@pytest.mark.parametrize(
    "snapshot", ["retained checkpoint", "savepoint", "savepoint of Beam's own job server"]
)
def test_a_job_restarted_from_its_snapshot_resumes_where_it_stopped(
    snapshot, moto, subprocess_env, flink_cluster, gelf_tcp, tmp_path, request
):
    """Also across the job server upgrade: residuals that Beam's own job server left in its per-timer
    states are resumed by ours (SdfResiduals reads them from there)."""
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    args = over_tcp(pipeline_args(moto, gelf_tcp.port, tmp_path / "dl")) + flink_cluster.pipeline_args(2)
    checkpointing = [
        "--checkpointing_interval=1000",
        "--externalized_checkpoints_enabled",
        "--retain_externalized_checkpoints_on_cancellation",
    ]
    before, after = flow_log_lines(600)[:300], flow_log_lines(600)[300:]
    name = f"restore-from-{snapshot.replace(' ', '-').replace(chr(39), '')}"
    first_args = args + checkpointing + [f"--job_name={name}"]
    if snapshot.endswith("Beam's own job server"):
        first_args.append(f"--flink_job_server_jar={request.getfixturevalue('beams_own_job_server_jar')}")

    with launched(first_args, subprocess_env) as first:
        wait_for_state(flink_cluster, name, {"RUNNING"}, timeout=120)
        deliver_through_cloudwatch(logs, LOG_GROUP, before, batch_size=100, log_stream="before")
        assert len(gelf_tcp.wait_for(len(before), timeout=60)) == len(before)
        if snapshot.startswith("savepoint"):
            path = stop_with_savepoint(flink_cluster, name, tmp_path / "savepoints")
            assert first.wait(timeout=60) == 0, "the launcher ends cleanly with the stopped job"
            ended = "FINISHED"
        else:
            path = latest_checkpoint(flink_cluster, name, after_ms=time.time() * 1000)["external_path"]
            status, output = stop(first)
            assert status == 0, output[-3000:]
            ended = "CANCELED"
    assert wait_for_state(flink_cluster, name, {ended})
    assert Path(path.removeprefix("file:")).is_dir(), path

    deliver_through_cloudwatch(logs, LOG_GROUP, after, batch_size=100, log_stream="after")
    restore = [f"--savepoint_path={path}", f"--job_name={name}-restored"]
    with launched(args + checkpointing + restore, subprocess_env) as second:
        gelf_tcp.wait_for(len(before) + len(after), timeout=120)
        time.sleep(5)  # anything read twice would arrive now
        messages = gelf_tcp.messages()
        assert stop(second)[0] == 0
    by_stream = Counter(m["_aws_log_stream"] for m in messages)
    print(f"\nrestored from the {snapshot} {path}: {dict(by_stream)}")
    assert by_stream["after"] == len(after), "every event written while the job was down arrives"
    assert by_stream["before"] == len(before), "events read before the snapshot are not read again"
    assert len({(m["_aws_log_stream"], m["timestamp"]) for m in messages}) == len(messages)


def body_of(message, timestamp) -> str:
    return message.body


def test_sqs_messages_are_deleted_only_once_flink_has_checkpointed_their_bundle(
    moto, flink_cluster, tmp_path
):
    """Bundle finalization on Flink runs at checkpoint completion (Beam #19525/#19526: streaming only):
    the reader's deletes follow the bundles that emitted the messages, so the queue empties."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.runners import cancel_flink_job
    from tests.test_sqs import AppendToFile, make_queue, queue_counts, read_config, send
    from transforms.sqs import ReadFromSqs

    sqs = aws_client("sqs", moto)
    queue = make_queue(sqs, visibility_timeout=120)
    bodies = [f"message-{i}" for i in range(30)]
    send(sqs, queue, bodies)
    sink = tmp_path / "seen.txt"
    name = "sqs-finalization"
    options = PipelineOptions(
        flink_cluster.pipeline_args(parallelism=2)
        + [
            "--streaming",
            f"--job_name={name}",
            "--checkpointing_interval=1000",
            "--finish_bundle_before_checkpointing",
        ]
    )
    pipeline = beam.Pipeline(options=options)
    (
        pipeline
        | ReadFromSqs(read_config(moto, queue, stop_when_idle=None, readers=2))
        | beam.ParDo(AppendToFile(sink, body_of))
    )
    result = pipeline.run()
    try:
        deadline = time.monotonic() + 120
        counts = queue_counts(sqs, queue)
        while time.monotonic() < deadline:
            counts = queue_counts(sqs, queue)
            if counts == (0, 0) and len(sink.read_text().splitlines() if sink.exists() else []) >= 30:
                break
            time.sleep(0.5)
        seen = sink.read_text().splitlines() if sink.exists() else []
        assert sorted(seen) == sorted(bodies), f"each message processed once: {len(seen)} lines"
        assert counts == (0, 0), f"every message deleted after its bundle: (visible, in flight) = {counts}"
    finally:
        cancel_flink_job(flink_cluster.rest_url, name)
        result.cancel()


def test_cloudtrail_runs_on_the_cluster_and_deletes_each_message_once_its_records_were_delivered(
    moto, subprocess_env, flink_cluster, gelf_tcp, tmp_path
):
    """The CloudTrail pipeline on the cluster, as on the DirectRunner: files spread over 2 workers (a
    Reshuffle after the notifications), messages deleted at checkpoints after delivery, and a bounded
    run (--stop_when_idle) that ends only once its deletes are done: the launcher cancels the job once
    the queue has held nothing, visible or in flight, for that long."""
    from pipelines.cloudtrail_samples import (
        cloudtrail_log_files,
        cloudtrail_notification,
        create_notification_queue,
        put_cloudtrail_files,
    )
    from tests.test_cloudtrail_pipeline import BUCKET, START, cli_args, event_ids, records_of
    from tests.test_sqs import queue_counts

    s3, sqs = aws_client("s3", moto), aws_client("sqs", moto)
    queue_url, _ = create_notification_queue(sqs, "cloudtrail", visibility_timeout=60)
    files = cloudtrail_log_files(12, 100, seed=17, start_time=START)
    put_cloudtrail_files(s3, BUCKET, files)
    for key, _ in files:
        sqs.send_message(QueueUrl=queue_url, MessageBody=cloudtrail_notification(BUCKET, [key]))
    name = "cloudtrail-on-flink"
    args = [
        *[
            a
            for a in cli_args(queue_url, moto, gelf_tcp.port, tmp_path / "dl")
            if not a.startswith("--runner")
        ],
        *flink_cluster.pipeline_args(parallelism=2),
        "--stop_when_idle=5",
        "--sqs_readers=2",
        "--checkpointing_interval=2000",
        f"--job_name={name}",
    ]
    started = time.monotonic()
    status, output = run_flowlogs(args, subprocess_env, module="cloudtrail")
    took = time.monotonic() - started
    assert status == 0, output[-4000:]
    expected = Counter(r["eventID"] for r in records_of(files))
    messages = gelf_tcp.wait_for(sum(expected.values()))
    assert event_ids(messages) == expected, "every record once"
    assert queue_counts(sqs, queue_url) == (0, 0), "every message deleted before the job ended"
    assert "cloudtrail: done: ending the job" in output
    job = flink_job(flink_cluster, name)
    assert job["state"] == "CANCELED"
    reading = stage(job, "ReadObjects")
    assert reading["parallelism"] == 2
    stages = parallelism_by_stage(job)
    print(f"\n{len(messages)} records from {len(files)} files on Flink in {took:.1f} s; stages {stages}")


def test_entity_lookups_resolve_on_the_cluster_as_on_the_direct_runner(
    moto, subprocess_env, flink_cluster, tmp_path
):
    """Two VPCs holding the same addresses: each record is resolved within its own VPC, the same on
    both runners (the inventory is a per-process cache, not runner state)."""
    instances = two_vpcs_with_the_same_address(aws_client("ec2", moto))
    kinesis, logs = aws_client("kinesis", moto), aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    lines = [
        flow_line(instance["NetworkInterfaces"][0]["NetworkInterfaceId"], source, destination)
        for instance in instances
        if instance["Name"].endswith("-web")
        for source, destination in (("10.0.1.10", "10.0.1.20"), ("10.0.1.10", "8.8.8.8"))
        for _ in range(25)
    ]
    deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=10, start_ms=cloudwatch_start_ms())
    received = {}
    for runner, extra in {
        "direct": [],
        "flink": flink_cluster.pipeline_args(parallelism=2)
        + ["--job_name=lookups", "--checkpointing_interval=2000"],
    }.items():
        receiver = NodeReceiver(tmp_path, "tcp")
        try:
            args = over_tcp(pipeline_args(moto, receiver.port, tmp_path / f"dl-{runner}"))
            lookups = ["--entity_lookups", "--lookup_tags=Team"]
            status, output = run_flowlogs(args + ["--stop_at_latest", *lookups] + extra, subprocess_env)
            assert status == 0, output[-3000:]
            received[runner] = receiver.wait_for(len(lines), timeout=15)
        finally:
            receiver.stop()

    assert len(received["direct"]) == len(lines)
    assert content(received["flink"]) == content(received["direct"])
    team_of = {i["NetworkInterfaces"][0]["NetworkInterfaceId"]: i["Team"] for i in instances}
    for message in received["flink"]:
        team = team_of[message["_interface_id"]]
        assert message["_src_addr_entity_name"] == f"{team}-web"
        assert message["_src_addr_entity_tag_Team"] == team
        inside = message["_dst_addr"] != "8.8.8.8"
        assert message.get("_dst_addr_entity_name") == (f"{team}-db" if inside else None)
    assert stage(flink_job(flink_cluster, "lookups"), "ToGelf")["parallelism"] == 2


def test_a_streaming_job_on_the_cluster_picks_up_a_new_instance(
    moto, subprocess_env, flink_cluster, gelf_tcp, tmp_path
):
    ec2 = aws_client("ec2", moto)
    _, subnet = network(ec2)
    (web,) = run(ec2, subnet, "10.0.1.10", "web")
    kinesis, logs = aws_client("kinesis", moto), aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    probe = DestinationProbe(logs, gelf_tcp, web)
    name = "lookups-streaming"
    flink = flink_cluster.pipeline_args(parallelism=2) + [f"--job_name={name}"]
    args = over_tcp(pipeline_args(moto, gelf_tcp.port, tmp_path / "dl"))
    lookups = ["--entity_lookups", "--lookup_refresh_seconds=5"]
    with launched(args + lookups + flink, subprocess_env) as cli:
        wait_for_state(flink_cluster, name, {"RUNNING"}, timeout=120)
        assert probe.name(timeout=90) is None, "10.0.1.99 is nobody yet"
        run(ec2, subnet, "10.0.1.99", "late")
        picked_up = probe.until("late", timeout=40)
        time.sleep(7)  # every worker process has refreshed by now (5 s ± 10 %)
        later = [probe.name() for _ in range(6)]
        status, output = stop(cli)
        assert status == 0, output[-3000:]
    assert later == ["late"] * 6, later
    print(f"\nnew instance named on the cluster {picked_up:.1f} s after it was created")
