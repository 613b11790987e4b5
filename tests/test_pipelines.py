"""The pipelines end to end, as a user runs them: the command line, moto_server, real GELF sockets."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines import runners
from pipelines.sample_data import (
    cloudwatch_start_ms,
    create_flow_log_stream,
    deliver_through_cloudwatch,
    flow_log_lines,
    subscription_payload,
)
from tests.conftest import REGION, REPO, aws_client
from tests.test_cloudwatch import CONTROL
from transforms.deadletter import read_dead_letters

pytestmark = pytest.mark.slow

STREAM = "flowlogs"
LOG_GROUP = "/vpc/flowlogs"
KNOWN_LINE = "2 123456789012 eni-0a1b2c3d 10.0.0.1 10.0.0.2 80 2264 6 10 840 1700000000 1700000060 ACCEPT OK"
V5_FORMAT = (
    "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} "
    "${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${vpc-id} ${subnet-id} ${instance-id} "
    "${tcp-flags} ${type} ${pkt-srcaddr} ${pkt-dstaddr} ${region} ${az-id} ${sublocation-type} "
    "${sublocation-id} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${flow-direction} ${traffic-path}"
)
V5_LINE = (
    "5 123456789012 eni-1235b8ca123456789 10.0.1.5 52.95.128.179 49152 443 6 25 2000 1700000000 1700000060 "
    "ACCEPT OK vpc-0123 subnet-0456 i-0789 19 IPv4 10.0.1.5 52.95.128.179 us-east-1 use1-az1 - - - S3 "
    "egress 8"
)


def pipeline_args(endpoint: str, receiver_port: int, dead_letters: Path, *extra: str) -> list[str]:
    return [
        "--runner=DirectRunner",
        f"--stream_name={STREAM}",
        f"--region={REGION}",
        f"--aws_endpoint_url={endpoint}",
        "--initial_position=TRIM_HORIZON",
        "--gelf_host=127.0.0.1",
        f"--gelf_port={receiver_port}",
        "--gelf_protocol=udp",
        f"--dead_letter_path={dead_letters}",
        *extra,
    ]


def run_cli(module: str, args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{module}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(module: str, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{module}", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_every_flow_log_event_arrives_exactly_once_with_the_plugin_fields(
    moto, subprocess_env, gelf_udp, tmp_path
):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    lines = flow_log_lines(10_000) + [KNOWN_LINE]
    start_ms = cloudwatch_start_ms()
    deliver_through_cloudwatch(logs, LOG_GROUP, lines, batch_size=500, start_ms=start_ms)
    shards = [r["ShardId"] for r in kinesis.list_shards(StreamName=STREAM)["Shards"]]
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName=STREAM, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )
        assert kinesis.get_records(ShardIterator=iterator["ShardIterator"])["Records"], (
            f"{shard} holds records"
        )
    assert len(shards) == 2

    done = run_cli(
        "flowlogs", pipeline_args(moto, gelf_udp.port, tmp_path / "dl", "--stop_at_latest"), subprocess_env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    messages = gelf_udp.wait_for(len(lines), timeout=10)

    assert len(messages) == len(lines), (
        f"every event once: got {len(messages)} of {len(lines)}; {done.stderr[-800:]}"
    )
    timestamps = Counter(m["timestamp"] for m in messages)
    assert len(timestamps) == len(lines) and max(timestamps.values()) == 1
    assert not [m for m in messages if "__receiver_error__" in m]
    known = next(m for m in messages if m.get("_interface_id") == "eni-0a1b2c3d")
    assert known["short_message"] == "eni-0a1b2c3d ACCEPT TCP 10.0.0.1:80 -> 10.0.0.2:2264"
    assert known["host"] == "aws-flowlogs"
    assert known["timestamp"] == pytest.approx((start_ms + len(lines) - 1) / 1000)
    expected = {
        "_account_id": "123456789012",
        "_src_addr": "10.0.0.1",
        "_dst_addr": "10.0.0.2",
        "_src_port": 80,
        "_dst_port": 2264,
        "_protocol_number": 6,
        "_protocol": "TCP",
        "_packets": 10,
        "_bytes": 840,
        "_capture_window_duration_seconds": 60,
        "_action": "ACCEPT",
        "_log_status": "OK",
        "_aws_log_group": LOG_GROUP,
        "_aws_log_stream": "eni-all",
        "_aws_source": "true",
    }
    assert {k: known.get(k) for k in expected} == expected
    nodata = [m for m in messages if m.get("_log_status") == "NODATA"]
    assert nodata and all("_src_port" not in m and "_packets" not in m for m in nodata), (
        "'-' is absent, not 0"
    )
    assert "records=" in done.stderr or "kinesis/records" in done.stderr


def test_without_stop_at_latest_it_streams_live_idles_quietly_and_stops_on_sigterm(
    moto, subprocess_env, gelf_udp, tmp_path
):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    args = pipeline_args(moto, gelf_udp.port, tmp_path / "dl")
    args[args.index("--initial_position=TRIM_HORIZON")] = "--initial_position=LATEST"
    proc = start_cli("flowlogs", args, subprocess_env)
    try:
        time.sleep(6)  # start-up, then idle
        assert proc.poll() is None, proc.stdout.read()
        idle_from = cpu_seconds(proc.pid)
        time.sleep(5)
        idle_cpu = cpu_seconds(proc.pid) - idle_from
        assert idle_cpu < 1.0, f"{idle_cpu:.2f} s CPU in 5 s on an idle stream"

        latencies = []
        for round_ in range(3):
            written = time.monotonic()
            deliver_through_cloudwatch(
                logs, LOG_GROUP, flow_log_lines(100, seed=round_), log_stream=f"live-{round_}"
            )
            got = gelf_udp.wait_for(100 * (round_ + 1), timeout=15)
            latencies.append(time.monotonic() - written)
            assert len(got) == 100 * (round_ + 1)
        assert max(latencies) < 5, latencies
        print(f"idle CPU {idle_cpu:.2f} s in 5 s; delivery latencies {[round(x, 2) for x in latencies]} s")

        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 0
        assert time.monotonic() - stopped < 10
        print(f"stopped {time.monotonic() - stopped:.2f} s after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert "Stopping" in output
    assert len(gelf_udp.messages()) == 300


def test_ctrl_c_stops_a_streaming_run_cleanly(moto, subprocess_env, gelf_udp, tmp_path):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=1)
    proc = start_cli("flowlogs", pipeline_args(moto, gelf_udp.port, tmp_path / "dl"), subprocess_env)
    try:
        deliver_through_cloudwatch(logs, LOG_GROUP, flow_log_lines(50))
        assert len(gelf_udp.wait_for(50, timeout=30)) == 50
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_custom_v5_format_parses_and_bad_input_lands_in_the_dead_letter(
    moto, subprocess_env, gelf_udp, tmp_path
):
    kinesis = aws_client("kinesis", moto)
    kinesis.create_stream(StreamName=STREAM, ShardCount=2)
    good = subscription_payload([V5_LINE, V5_LINE.replace("49152", "49153"), "5 too short"], log_group="/v5")
    control = gzip.compress(json.dumps(CONTROL).encode())
    corrupt = gzip.compress(b'{"messageType": "DATA_MESSAGE"}')[:-9] + b"garbage!!"
    not_json = gzip.compress(b"this is not json")
    for i, data in enumerate([good, control, corrupt, not_json, good]):
        kinesis.put_record(StreamName=STREAM, Data=data, PartitionKey=f"k{i}")

    dead = tmp_path / "dl"
    args = pipeline_args(moto, gelf_udp.port, dead, "--stop_at_latest", f"--flow_log_format={V5_FORMAT}")
    done = run_cli("flowlogs", args, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]

    messages = gelf_udp.wait_for(4, timeout=10)
    assert len(messages) == 4
    m = messages[0]
    assert m["short_message"].startswith("eni-1235b8ca123456789 ACCEPT TCP 10.0.1.5:4915")
    assert m["_vpc_id"] == "vpc-0123" and m["_tcp_flags"] == 19 and m["_traffic_path"] == 8
    assert m["_version"] == 5 and m["_type"] == "IPv4"
    assert m["_pkt_dst_aws_service"] == "S3" and m["_flow_direction"] == "egress"
    assert "_sublocation_type" not in m and "_pkt_src_aws_service" not in m

    letters = read_dead_letters(str(dead))
    by_stage = Counter(letter["stage"] for letter in letters)
    assert by_stage == {"cloudwatch": 2, "flowlogs": 2}, letters
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert "gzip" in reasons.lower() and "json" in reasons.lower()
    assert {letter["raw"] for letter in letters if letter["stage"] == "cloudwatch"} == {corrupt, not_json}
    assert all(letter["stream"] == STREAM and letter["sequence_number"] for letter in letters)
    assert "dead_letter/written=4" in done.stderr or "written=4" in done.stderr


def test_a_shard_split_during_a_run_loses_and_duplicates_nothing(
    kinesalite, subprocess_env, gelf_udp, tmp_path
):
    from tests.test_kinesis_resharding import active, split_first_shard

    kinesis = aws_client("kinesis", kinesalite)
    kinesis.create_stream(StreamName=STREAM, ShardCount=2)
    active(kinesis, STREAM)

    def put_batches(tag: str, count: int) -> int:
        events = 0
        for i in range(count):
            payload = subscription_payload(
                [f"{KNOWN_LINE} {tag}-{i}-{j}" for j in range(50)], first_id=i * 50, log_stream=tag
            )
            kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey=f"{tag}-{i}")
            events += 50
        return events

    args = pipeline_args(
        kinesalite,
        gelf_udp.port,
        tmp_path / "dl",
        "--flow_log_format=${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} "
        "${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${instance-id}",
    )
    proc = start_cli("flowlogs", args, subprocess_env)
    try:
        first = put_batches("before", 20)
        assert len(gelf_udp.wait_for(first, timeout=60)) == first, proc.poll()
        parent = split_first_shard(kinesis, STREAM)
        second = put_batches("after", 20)
        got = gelf_udp.wait_for(first + second, timeout=60)
        time.sleep(2)  # anything read twice would arrive now
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    got = gelf_udp.messages()
    ids = Counter(m["_instance_id"] for m in got)
    assert len(got) == first + second and max(ids.values()) == 1
    children = [
        s for s in kinesis.list_shards(StreamName=STREAM)["Shards"] if s.get("ParentShardId") == parent
    ]
    assert len(children) == 2
    assert "continuing with shardId" in proc.stdout.read()


def test_cloudwatch_pipeline_sends_raw_events_and_json_fields(moto, subprocess_env, gelf_udp, tmp_path):
    kinesis = aws_client("kinesis", moto)
    logs = aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, "/app/web", shards=1)
    events = ["plain text line", json.dumps({"level": "error", "http": {"status": 502}, "user": "bob"})]
    deliver_through_cloudwatch(logs, "/app/web", events)
    args = pipeline_args(moto, gelf_udp.port, tmp_path / "dl", "--stop_at_latest", "--parse_json")
    done = run_cli("cloudwatch", args, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    messages = sorted(gelf_udp.wait_for(2, timeout=10), key=lambda m: m["timestamp"])
    assert [m["short_message"] for m in messages] == events
    assert all(m["host"] == "aws-raw-logs" and m["_aws_log_group"] == "/app/web" for m in messages)
    assert messages[1]["_http_status"] == 502 and messages[1]["_user"] == "bob"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--stream_name is required"),
        (["--stream_name=s"], "--gelf_host"),
        (["--stream_name=s", "--gelf_host=h", "--gelf_protcol=tcp"], "Did you mean --gelf_protocol"),
        (["--stream_name=s", "--gelf_host=h", "--direct_num_workers=2"], "--direct_num_workers=2 is refused"),
        (["--stream_name=s", "--gelf_host=h", "--flow_log_format=${version} ${nope}"], "--flow_log_format"),
        (["--stream_name=s", "--gelf_host=h", "--aws_access_key_id=AKIAEXAMPLE"], "--aws_secret_access_key"),
        (["--config=run_configs/missing.yaml"], "--config=run_configs/missing.yaml"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_option(args, message):
    env = dict(os.environ, AWS_DEFAULT_REGION=REGION, PYTHONPATH=str(REPO))
    done = run_cli("flowlogs", ["--runner=DirectRunner", *args], env, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stream_that_does_not_exist_fails_at_start_naming_it(moto, subprocess_env, tmp_path):
    args = pipeline_args(moto, 12201, tmp_path / "dl", "--stop_at_latest")
    args[1] = "--stream_name=no-such-stream"
    done = run_cli("flowlogs", args, subprocess_env, timeout=60)
    assert done.returncode == 2
    assert "--stream_name=no-such-stream: no such Kinesis stream in region us-east-1" in done.stderr


def test_help_lists_every_option():
    done = run_cli("flowlogs", ["--help"], dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert done.returncode == 0
    for option in (
        "--stream_name",
        "--initial_position",
        "--stop_at_latest",
        "--region",
        "--aws_endpoint_url",
        "--aws_role_arn",
        "--aws_external_id",
        "--flow_log_format",
        "--gelf_protocol",
        "--gelf_chunk_size",
        "--gelf_tls_ca_file",
        "--gelf_source",
        "--dead_letter_path",
        "--config",
        "--demo",
    ):
        assert option in done.stdout, option


def test_secrets_never_reach_the_logs(moto, subprocess_env, gelf_udp, tmp_path):
    kinesis = aws_client("kinesis", moto)
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
    args = pipeline_args(
        moto,
        gelf_udp.port,
        tmp_path / "dl",
        "--stop_at_latest",
        "--aws_access_key_id=AKIATEST",
        f"--aws_secret_access_key={secret}",
    )
    done = run_cli("flowlogs", args, subprocess_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert secret not in done.stdout + done.stderr


def test_the_demo_runs_and_ends_by_itself():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    done = run_cli("flowlogs", ["--runner=DirectRunner", "--demo"], env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Received 5000 GELF messages (expected 5000)" in done.stdout
    assert "By action:" in done.stdout and "ACCEPT" in done.stdout
    assert "Dead letters (lines that are not flow logs): 2" in done.stdout


def test_without_demo_or_stream_it_says_how_to_try_it():
    done = run_cli("flowlogs", ["--runner=DirectRunner"], dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert done.returncode == 2
    assert "make demo" in done.stderr and "--demo" in done.stderr


# Options of Beam's Java FlinkPipelineOptions: Python passes them through to the job server unparsed.
FLINK_JAVA_OPTIONS = {name.removeprefix("--") for name in runners.FLINK_JAVA_OPTIONS}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "run_configs").glob("*.yaml")))
def test_every_run_config_is_a_valid_set_of_options(config):
    """Every key is an option the pipeline knows and reads as written (a misspelt key would be silently
    ignored), and the configs built from them validate and carry those values."""
    import yaml
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import cloudtrail, cloudwatch, flowlogs
    from pipelines.common import expand_config
    from transforms.aws import aws_config_from_options
    from transforms.gelf import gelf_config_from_options
    from transforms.kinesis import kinesis_config_from_options

    path = REPO / "run_configs" / config
    written = yaml.safe_load(path.read_text())
    module = {"cloudtrail": cloudtrail, "cloudwatch": cloudwatch, "flowlogs": flowlogs}[config.split("-")[0]]
    options = PipelineOptions(expand_config([f"--config={path}"]))
    known = options.get_all_options()
    passed_through = options.get_all_options(retain_unknown_options=True)
    for key, value in written.items():
        assert key in known or key in FLINK_JAVA_OPTIONS, f"{config}: {key} is no option of {module.__name__}"
        read = passed_through[key]
        assert read == value or str(read) == str(value) or read == [value], f"{config}: {key}={read!r}"

    aws = aws_config_from_options(options)
    gelf = gelf_config_from_options(options)
    assert (gelf.host, gelf.port, gelf.protocol) == (
        written["gelf_host"],
        written["gelf_port"],
        written["gelf_protocol"],
    )
    assert gelf.tls == bool(written.get("gelf_tls")) and gelf.compression == written.get("gelf_compression")
    if module is cloudtrail:
        check_cloudtrail_options(options, aws)
        return
    kinesis = kinesis_config_from_options(options, aws)
    assert kinesis.stream == written["stream_name"]
    assert kinesis.initial_position == written["initial_position"]
    assert module.make_to_gelf(options, kinesis.stream) is not None


def check_cloudtrail_options(options, aws) -> None:
    from transforms.s3_listing import backfill_range_from_values
    from transforms.s3_notifications import KeyFilter
    from transforms.sqs import sqs_config_from_values
    from transforms.sqs_s3 import ObjectSettings, SqsS3Options

    sqs = options.view_as(SqsS3Options)
    KeyFilter.from_options(sqs.s3_key_include, sqs.s3_key_exclude)
    ObjectSettings(sqs.sqs_visibility_timeout, sqs.sqs_max_processing_seconds, sqs.sqs_retry_delay_seconds)
    if sqs.s3_prefix:
        backfill_range_from_values(sqs.s3_prefix, sqs.s3_start_time, sqs.s3_end_time)
    else:
        sqs_config_from_values(
            sqs.sqs_queue_url, aws, readers=sqs.sqs_readers, stop_when_idle=sqs.stop_when_idle
        )
