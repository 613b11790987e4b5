"""What an operator sees of a running pipeline: the Prometheus endpoint, liveness and readiness, progress
lines and JSON logs. The end-to-end test runs a streaming pipeline against moto and scrapes it live."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.sample_data import create_flow_log_stream, deliver_through_cloudwatch, flow_log_lines
from tests.conftest import REPO, NodeReceiver, aws_client, free_port
from tests.test_pipelines import LOG_GROUP, STREAM
from tests.test_restarts import start
from transforms import metrics
from transforms.metrics import HEALTH, LIVE, Snapshot
from transforms.monitoring import (
    CATALOG,
    PREFIX,
    JsonFormatter,
    MonitoringServer,
    liveness,
    progress_line,
    prometheus_name,
    readiness,
)


@pytest.fixture
def clean_health():
    HEALTH.clear()
    yield HEALTH
    HEALTH.clear()


def test_readiness_turns_unready_only_after_failing_longer_than_the_threshold(clean_health):
    assert readiness(60, now=1000).ok
    clean_health.failed("GELF tcp://graylog:12201", "ConnectionRefusedError(111)")
    since = clean_health.failing()[0][1]
    assert readiness(60, now=since + 59).ok, "a short outage is not worth a restart"
    verdict = readiness(60, now=since + 61)
    assert not verdict.ok
    assert verdict.reason == "GELF tcp://graylog:12201 has failed for 61 s: ConnectionRefusedError(111)"
    clean_health.failed("GELF tcp://graylog:12201", "timeout")
    assert clean_health.failing()[0][1] == since, "the clock runs from the first failure"
    clean_health.succeeded("GELF tcp://graylog:12201")
    assert readiness(60, now=since + 600).ok


def test_liveness_follows_the_read_loops_heartbeat(clean_health):
    assert liveness(300, started=1000, now=1100).reason == "starting"
    assert not liveness(300, started=1000, now=1400).ok, "no source ever polled"
    clean_health.heartbeat()
    beat = clean_health.last_heartbeat()
    assert liveness(300, started=1000, now=beat + 10).ok
    verdict = liveness(300, started=1000, now=beat + 400)
    assert not verdict.ok and verdict.reason == "the read loop last polled 400 s ago"


def test_a_progress_line_gives_rates_lag_and_what_else_moved(clean_health):
    shard = (("shard", "shardId-000000000000"),)
    before = Snapshot({("kinesis", "records", ()): 100, ("gelf", "messages", ()): 1_000}, {}, taken_at=0)
    after = Snapshot(
        {
            ("kinesis", "records", ()): 700,
            ("gelf", "messages", ()): 61_000,
            ("flowlogs", "parse_errors", ()): 3,
            ("gelf", "retries", ()): 0,
        },
        {("kinesis", "millis_behind_latest", shard): 2_500},
        taken_at=60,
    )
    assert progress_line(before, after) == (
        "progress: read 10/s; sent 1,000/s; behind 2.5 s (worst of 1 shards); "
        "since last: flowlogs/parse_errors +3"
    )
    clean_health.failed("AWS Kinesis", "ProvisionedThroughputExceededException on shardId-000000000000")
    assert "AWS Kinesis FAILING for" in progress_line(before, after)


def test_prometheus_names_follow_the_conventions():
    for (namespace, name), (full, help_text, _) in CATALOG.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", full) and not full.endswith("_total"), full
        assert help_text and not help_text.endswith("."), (namespace, name)
    assert prometheus_name("kinesis", "millis_behind_latest") == (
        PREFIX + "kinesis_behind_latest_seconds",
        CATALOG[("kinesis", "millis_behind_latest")][1],
        0.001,
    ), "base units: seconds, not milliseconds"
    assert prometheus_name("new", "thing-1")[0] == PREFIX + "new_thing_1", (
        "an uncatalogued metric still shows"
    )


def test_the_readme_lists_every_metric():
    readme = (REPO / "README.md").read_text()
    for full, _, _ in CATALOG.values():
        assert f"`{PREFIX}{full}" in readme, full


def test_json_logs_are_one_object_a_line():
    record = logging.LogRecord("pipelines", logging.WARNING, __file__, 1, "sent %d", (5,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "pipelines" and entry["message"] == "sent 5"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_live_counters_keep_beam_names_and_prometheus_labels():
    LIVE.clear()
    metrics.counter("dead_letter", "written", stage="flowlogs").inc(2)
    metrics.gauge("kinesis", "millis_behind_latest", shard="shardId-1").set(1500)
    snapshot = LIVE.snapshot()
    assert snapshot.counters == {("dead_letter", "written", (("stage", "flowlogs"),)): 2}
    assert snapshot.gauges == {("kinesis", "millis_behind_latest", (("shard", "shardId-1"),)): 1500}


# --- a live run -----------------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_a_streaming_run_is_scraped_live_and_turns_unready_while_graylog_is_down(
    moto, subprocess_env, tmp_path
):
    kinesis, logs = aws_client("kinesis", moto), aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    writing = threading.Event()
    writing.set()

    def write():
        while writing.is_set():
            deliver_through_cloudwatch(logs, LOG_GROUP, flow_log_lines(50), batch_size=50)
            time.sleep(0.2)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    gelf_port, metrics_port = free_port(), free_port()
    receiver = NodeReceiver(tmp_path, "tcp", port=gelf_port)
    args = [
        "--runner=DirectRunner",
        f"--stream_name={STREAM}",
        f"--aws_endpoint_url={moto}",
        "--initial_position=TRIM_HORIZON",
        "--gelf_host=127.0.0.1",
        f"--gelf_port={gelf_port}",
        "--gelf_protocol=tcp",
        f"--dead_letter_path={tmp_path / 'dl'}",
        f"--state_dir={tmp_path / 'state'}",
        f"--metrics_port={metrics_port}",
        "--unready_after_seconds=3",
        "--progress_seconds=2",
    ]
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        run = start(args, subprocess_env, log)
    try:
        growing = (f"{PREFIX}kinesis_records_read_total", f"{PREFIX}gelf_messages_sent_total")
        scrapes = []
        for _ in range(3):
            scrapes.append(scrape_when_grown(metrics_port, growing, scrapes[-1] if scrapes else None))
        read = [total(s, f"{PREFIX}kinesis_records_read_total") for s in scrapes]
        sent = [total(s, f"{PREFIX}gelf_messages_sent_total") for s in scrapes]
        assert read[0] < read[1] < read[2] and sent[0] < sent[1] < sent[2], (read, sent)
        lag = {
            dict(labels)["shard"]
            for (n, labels) in scrapes[2]
            if n == f"{PREFIX}kinesis_behind_latest_seconds"
        }
        assert lag == {"shardId-000000000000", "shardId-000000000001"}
        per_shard = f"{PREFIX}kinesis_shard_records_read_total"
        read_by_shard = {dict(labels)["shard"]: v for (n, labels), v in scrapes[2].items() if n == per_shard}
        assert sum(read_by_shard.values()) == read[2] and len(read_by_shard) == 2, read_by_shard
        assert probe(metrics_port, "/healthz")[0] == 200
        assert probe(metrics_port, "/readyz") == (200, "ready\n")

        receiver.stop()  # Graylog goes away for longer than --unready_after_seconds
        status, reason = wait_for(
            lambda: (answer := probe(metrics_port, "/readyz"))[0] == 503 and answer, 30, "unready"
        )
        assert re.match(rf"GELF tcp://127\.0\.0\.1:{gelf_port} has failed for \d+ s: ", reason), reason
        assert probe(metrics_port, "/healthz")[0] == 200, "alive all the same: a restart would not help"

        receiver = NodeReceiver(tmp_path, "tcp", port=gelf_port)
        wait_for(lambda: probe(metrics_port, "/readyz")[0] == 200, 60, "ready again")
        wait_for(lambda: receiver.messages(), 30, "messages at the returned receiver")
    finally:
        writing.clear()
        run.terminate()
        status = run.wait(timeout=60)
        receiver.stop()
    output = log_path.read_text()
    assert status == 0, output[-3000:]
    assert re.search(r"progress: read \d[\d,]*/s; events [\d,]+/s; sent [\d,]+/s; behind", output), output[
        -3000:
    ]
    assert "GELF tcp://127.0.0.1" in output and "FAILING for" in output, "the progress line names the outage"


def scrape_when_grown(port: int, names: tuple[str, ...], previous: dict | None) -> dict:
    """The next scrape in which every one of `names` has grown since `previous`."""

    def grown():
        samples = _scrape_quietly(port)
        if not samples:
            return None
        if all(total(samples, name) > (total(previous, name) if previous else 0) for name in names):
            return samples
        return None

    return wait_for(grown, 60, f"{names} to grow")


def _scrape_quietly(port: int):
    try:
        return scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return None


@pytest.mark.slow
@pytest.mark.parametrize(("module", "headline"), [("flowlogs", "read"), ("cloudtrail", "sqs")])
def test_the_demo_shows_progress_and_no_beam_warning(module, headline):
    done = subprocess.run(
        [sys.executable, "-m", f"pipelines.{module}", "--demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert re.search(rf"INFO transforms\.monitoring: progress: {headline} [\d,]+/s; ", log), log
    assert "WARNING apache_beam" not in log, [line for line in log.splitlines() if "apache_beam" in line]


# --- what ships around it ---------------------------------------------------------------------------

DASHBOARD = REPO / "dashboards" / "aws-gelf-pipelines.json"


def scrape_while_running(module: str, *extra: str) -> set[str]:
    """The metric names seen at any scrape of `python -m pipelines.<module> --demo` while it runs."""
    port = free_port()
    command = [sys.executable, "-m", f"pipelines.{module}", "--demo", f"--metrics_port={port}", *extra]
    names: set[str] = set()
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as run:
        while run.poll() is None:
            samples = _scrape_quietly(port)
            if samples:
                names |= {name for name, _ in samples}
            time.sleep(0.1)
        output = run.stdout.read().decode()
    assert run.returncode == 0, output[-3000:]
    return names


@pytest.mark.slow
def test_every_metric_the_dashboard_queries_exists_in_a_live_scrape():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(rf"\b{PREFIX}[a-z0-9_]+", target["expr"])
    }
    assert len(queried) >= 15, queried
    seen = scrape_while_running("flowlogs", "--entity_lookups") | scrape_while_running("cloudtrail")
    assert not queried - seen, sorted(queried - seen)


def test_the_health_check_of_the_image_probes_healthz(clean_health):
    server = MonitoringServer("127.0.0.1", 0, unready_after=60, stale_after=300).start()
    try:
        check = [sys.executable, "-m", "transforms.monitoring", "probe", f"--port={server.port}"]
        assert subprocess.run(check, cwd=REPO).returncode == 0, "starting: alive"
        server._stale_after = 0  # no source has polled in time
        failed = subprocess.run(check, cwd=REPO, capture_output=True, text=True)
        assert failed.returncode == 1 and "no source has polled" in failed.stdout
    finally:
        server.stop()
    closed = [sys.executable, "-m", "transforms.monitoring", "probe", f"--port={server.port}"]
    assert subprocess.run(closed, cwd=REPO).returncode == 1
    assert subprocess.run(closed + ["--absent-ok"], cwd=REPO).returncode == 0, "the image's other uses"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '"transforms.monitoring", "probe", "--port=9464", "--path=/healthz", "--absent-ok"' in dockerfile
