"""What an operator sees of a running local pipeline: a Prometheus endpoint, liveness and readiness
answers on the same port, and a progress line in the log every `--progress_seconds`.

All of it reads the live metric values of this process (transforms/metrics.py). On Flink the workers
are other processes: Flink's own metric system and its Prometheus reporter carry the Beam metrics there.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from apache_beam.options.pipeline_options import PipelineOptions
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from transforms.metrics import HEALTH, LIVE, Snapshot

_LOG = logging.getLogger(__name__)

PREFIX = "aws_gelf_"
LOG_FORMATS = ("text", "json")


class MonitoringOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("Monitoring (local runs; on Flink use its Prometheus reporter)")
        group.add_argument(
            "--metrics_port",
            type=int,
            default=0,
            help="Serve Prometheus metrics on /metrics, liveness on /healthz and readiness on /readyz on "
            "this port (0: off).",
        )
        group.add_argument(
            "--metrics_address",
            default="127.0.0.1",
            help="The address --metrics_port listens on; 0.0.0.0 for probes from outside a container.",
        )
        group.add_argument(
            "--progress_seconds",
            type=float,
            default=60.0,
            help="Log a progress line (rates, lag, errors since the last one) this often; 0 turns it off.",
        )
        group.add_argument(
            "--unready_after_seconds",
            type=float,
            default=120.0,
            help="/readyz answers 503 once Graylog has refused every send, or AWS answered only errors, "
            "for this long.",
        )
        group.add_argument(
            "--log_format",
            default="text",
            choices=LOG_FORMATS,
            help="text (one line per record) or json (one JSON object per line, for log collectors).",
        )


# --- Prometheus names ---------------------------------------------------------------------------

#: (namespace, name) → (Prometheus name without the prefix, help, scale). Counters get `_total`.
CATALOG: dict[tuple[str, str], tuple[str, str, float]] = {
    ("kinesis", "records"): ("kinesis_records_read", "Kinesis records read", 1),
    ("kinesis", "shard_records"): ("kinesis_shard_records_read", "Kinesis records read, per shard", 1),
    ("kinesis", "bytes"): ("kinesis_read_bytes", "Bytes of Kinesis record data read", 1),
    ("kinesis", "get_records_calls"): ("kinesis_get_records_calls", "GetRecords calls answered", 1),
    ("kinesis", "throttles"): ("kinesis_throttles", "Kinesis calls throttled or failed, backed off", 1),
    ("kinesis", "iterator_renewals"): ("kinesis_iterator_renewals", "Expired shard iterators renewed", 1),
    ("kinesis", "shards_finished"): ("kinesis_shards_finished", "Shards read to their end", 1),
    ("kinesis", "positions_saved"): ("kinesis_positions_saved", "Position store writes", 1),
    ("kinesis", "positions_expired"): (
        "kinesis_positions_expired",
        "Stored positions past the stream's retention, read from TRIM_HORIZON",
        1,
    ),
    ("kinesis", "millis_behind_latest"): (
        "kinesis_behind_latest_seconds",
        "How far the shard's reader is behind its newest record (MillisBehindLatest)",
        0.001,
    ),
    ("cloudwatch", "records"): ("cloudwatch_payloads", "CloudWatch Logs subscription payloads decoded", 1),
    ("cloudwatch", "events"): ("cloudwatch_events", "Log events in the payloads", 1),
    ("cloudwatch", "control_messages"): ("cloudwatch_control_messages", "CONTROL_MESSAGE payloads", 1),
    ("cloudwatch", "decode_errors"): ("cloudwatch_decode_errors", "Payloads that could not be decoded", 1),
    ("flowlogs", "events"): ("flowlogs_events_parsed", "Flow log records parsed", 1),
    ("flowlogs", "parse_errors"): ("flowlogs_parse_errors", "Flow log lines that could not be parsed", 1),
    ("flowlogs", "nodata"): ("flowlogs_nodata", "Flow log records with log-status NODATA", 1),
    ("flowlogs", "skipdata"): ("flowlogs_skipdata", "Flow log records with log-status SKIPDATA", 1),
    ("rawlogs", "events"): ("rawlogs_events", "Raw log events turned into messages", 1),
    ("rawlogs", "json_events"): ("rawlogs_json_events", "Raw log events whose message was JSON", 1),
    ("rawlogs", "encode_errors"): ("rawlogs_encode_errors", "Raw log events that could not be encoded", 1),
    ("gelf", "messages"): ("gelf_messages_sent", "GELF messages sent", 1),
    ("gelf", "bytes"): ("gelf_sent_bytes", "Bytes of GELF JSON handed to the sender (before compression)", 1),
    ("gelf", "retries"): ("gelf_retries", "GELF sends retried", 1),
    ("gelf", "errors"): ("gelf_errors", "GELF send errors", 1),
    ("gelf", "invalid"): ("gelf_invalid", "Messages Graylog would refuse, dead-lettered", 1),
    ("gelf", "too_large"): ("gelf_too_large", "Messages over the size limits, dead-lettered", 1),
    ("gelf", "last_success"): (
        "gelf_last_success_timestamp_seconds",
        "When Graylog last took a send (seconds since the epoch)",
        1,
    ),
    ("dead_letter", "written"): ("dead_letters_written", "Dead letters written, per stage", 1),
    ("sqs", "receive_calls"): ("sqs_receive_calls", "ReceiveMessage calls answered", 1),
    ("sqs", "queue_visible_messages"): (
        "sqs_queue_visible_messages",
        "Messages waiting in the queue (ApproximateNumberOfMessages, every 30 s)",
        1,
    ),
    ("sqs", "queue_in_flight_messages"): (
        "sqs_queue_in_flight_messages",
        "Messages received and not yet deleted (ApproximateNumberOfMessagesNotVisible, every 30 s)",
        1,
    ),
    ("sqs", "messages_received"): ("sqs_messages_received", "SQS messages received", 1),
    ("sqs", "messages_deleted"): ("sqs_messages_deleted", "SQS messages deleted after delivery", 1),
    ("sqs", "delete_failures"): ("sqs_delete_failures", "SQS deletes that failed", 1),
    ("sqs", "visibility_extensions"): ("sqs_visibility_extensions", "Visibility timeouts extended", 1),
    ("sqs", "messages_retried"): ("sqs_messages_retried", "Messages left to come back for a retry", 1),
    ("sqs", "messages_skipped"): ("sqs_messages_skipped", "Messages naming no object to read", 1),
    ("sqs", "messages_unparseable"): ("sqs_messages_unparseable", "Messages that could not be parsed", 1),
    ("sqs", "messages_dead_lettered"): ("sqs_messages_dead_lettered", "Messages sent to the dead letter", 1),
    ("s3", "objects"): ("s3_objects_read", "S3 objects read", 1),
    ("s3", "bytes"): ("s3_read_bytes", "Bytes of S3 objects read", 1),
    ("s3", "records"): ("s3_records", "Records read from S3 objects", 1),
    ("s3", "records_rejected"): ("s3_records_rejected", "Records of S3 objects that were dead-lettered", 1),
    ("s3", "object_failures"): ("s3_object_failures", "S3 objects that could not be read", 1),
    ("s3", "objects_filtered"): ("s3_objects_filtered", "S3 objects left out by the key filter", 1),
    ("s3", "objects_listed"): ("s3_objects_listed", "S3 objects listed for a backfill", 1),
    ("s3", "objects_already_delivered"): (
        "s3_objects_already_delivered",
        "Backfill objects skipped at a restart: delivered before it",
        1,
    ),
    ("entities", "refreshes"): ("entities_refreshes", "Entity inventory refreshes", 1),
    ("entities", "refresh_failures"): ("entities_refresh_failures", "Entity inventory refreshes failed", 1),
    ("entities", "addresses_enriched"): ("entities_addresses_enriched", "Addresses given entity fields", 1),
    ("entities", "inventory_addresses"): ("entities_inventory_addresses", "Addresses in the inventory", 1),
    ("entities", "inventory_age_seconds"): (
        "entities_inventory_age_seconds",
        "Age of the entity inventory in use",
        1,
    ),
}
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(namespace: str, name: str) -> tuple[str, str, float]:
    known = CATALOG.get((namespace, name))
    if known is not None:
        return PREFIX + known[0], known[1], known[2]
    return PREFIX + _NAME_UNSAFE.sub("_", f"{namespace}_{name}"), f"Beam metric {namespace}/{name}", 1


class _LiveCollector:
    """Hands prometheus_client the live values at each scrape."""

    def collect(self) -> Iterator:
        snapshot = LIVE.snapshot()
        yield from _families(snapshot.counters, CounterMetricFamily)
        yield from _families(snapshot.gauges, GaugeMetricFamily)


def _families(values, family_type) -> Iterator:
    families: dict[str, object] = {}
    for (namespace, name, labels), value in sorted(values.items()):
        full, help_text, scale = prometheus_name(namespace, name)
        family = families.get(full)
        if family is None:
            family = families[full] = family_type(full, help_text, labels=[k for k, _ in labels])
        family.add_metric([v for _, v in labels], value * scale)
    yield from families.values()


def registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LiveCollector())
    ProcessCollector(registry=registry)
    return registry


# --- health -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def readiness(unready_after: float, now: float | None = None) -> Verdict:
    """Unready while Graylog, or AWS, has answered nothing but errors for longer than `unready_after`."""
    now = time.time() if now is None else now
    problems = []
    for component, since, error in HEALTH.failing():
        if now - since > unready_after:
            problems.append(f"{component} has failed for {now - since:.0f} s: {error}")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, "ready")


def liveness(stale_after: float, started: float, now: float | None = None) -> Verdict:
    """Alive while a source's read loop has polled within `stale_after` (or the run has just begun)."""
    now = time.time() if now is None else now
    last = HEALTH.last_heartbeat()
    if last is None:
        if now - started <= stale_after:
            return Verdict(True, "starting")
        return Verdict(False, f"no source has polled since the start, {now - started:.0f} s ago")
    if now - last > stale_after:
        return Verdict(False, f"the read loop last polled {now - last:.0f} s ago")
    return Verdict(True, f"alive: last poll {now - last:.1f} s ago")


class MonitoringServer:
    """/metrics, /healthz, /readyz on one port, in a daemon thread."""

    def __init__(self, address: str, port: int, unready_after: float, stale_after: float):
        self._registry = registry()
        self._unready_after = unready_after
        self._stale_after = stale_after
        self._started = time.time()
        self._server = ThreadingHTTPServer((address, port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="monitoring", daemon=True)

    def start(self) -> MonitoringServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, generate_latest(self._registry), CONTENT_TYPE_LATEST
        if path in ("/healthz", "/readyz"):
            verdict = (
                liveness(self._stale_after, self._started)
                if path == "/healthz"
                else readiness(self._unready_after)
            )
            return (200 if verdict.ok else 503), (verdict.reason + "\n").encode(), "text/plain; charset=utf-8"
        return 404, b"/metrics, /healthz or /readyz\n", "text/plain; charset=utf-8"

    def _handler(server):  # noqa: N805 - the handler closes over the server
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, body, content_type = server._answer(self.path.split("?")[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


# --- progress lines -----------------------------------------------------------------------------

#: What a progress line shows first, as (label, namespace, name); any other counter that moved follows.
_HEADLINE = (
    ("read", "kinesis", "records"),
    ("sqs", "sqs", "messages_received"),
    ("objects", "s3", "objects"),
    ("events", "cloudwatch", "events"),
    ("sent", "gelf", "messages"),
)


def _by_name(values) -> dict[tuple[str, str], float]:
    """Values summed over their labels."""
    totals: dict[tuple[str, str], float] = {}
    for (namespace, name, _), value in values.items():
        totals[namespace, name] = totals.get((namespace, name), 0) + value
    return totals


def progress_line(before: Snapshot, after: Snapshot) -> str:
    """Rates of the headline counters, the worst lag, and every other counter that moved."""
    seconds = max(after.taken_at - before.taken_at, 1e-9)
    totals_before, totals_after = _by_name(before.counters), _by_name(after.counters)
    moved = {key: value - totals_before.get(key, 0) for key, value in totals_after.items()}
    parts = []
    shown = set()
    for label, namespace, name in _HEADLINE:
        if (namespace, name) in moved:
            parts.append(f"{label} {moved[namespace, name] / seconds:,.0f}/s")
            shown.add((namespace, name))
    lags = [v for (ns, n, _), v in after.gauges.items() if (ns, n) == ("kinesis", "millis_behind_latest")]
    if lags:
        parts.append(f"behind {max(lags) / 1000:,.1f} s (worst of {len(lags)} shards)")
    changes = [f"{ns}/{n} +{moved[ns, n]:,.0f}" for ns, n in sorted(set(moved) - shown) if moved[ns, n]]
    parts.append(("since last: " + ", ".join(changes)) if changes else "nothing else changed")
    for component, since, error in HEALTH.failing():
        parts.append(f"{component} FAILING for {after.taken_at - since:.0f} s: {error}")
    return "progress: " + "; ".join(parts)


class ProgressLogger:
    def __init__(self, seconds: float, logger: logging.Logger | None = None):
        self._seconds = seconds
        self._log = logger or _LOG
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> ProgressLogger:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends with a last line, so that even a run shorter than the period shows one."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        before = LIVE.snapshot()
        while not self._stop.wait(self._seconds):
            after = LIVE.snapshot()
            self._log.info("%s", progress_line(before, after))
            before = after
        self._log.info("%s", progress_line(before, LIVE.snapshot()))


# --- logs ---------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


JsonFormatter.converter = time.gmtime


# --- what a run starts --------------------------------------------------------------------------

#: /healthz fails once no source has polled for this long (Kinesis polls every second or faster, SQS
#: every 20 s at most).
LIVENESS_SECONDS = 300.0


class Monitoring:
    """The endpoint and the progress lines of one run, started once the run's options are checked."""

    def __init__(self, options: MonitoringOptions, local: bool):
        self._options = options
        self._local = local
        self._server: MonitoringServer | None = None
        self._progress: ProgressLogger | None = None

    def start(self) -> None:
        o = self._options
        if o.log_format == "json":
            for handler in logging.getLogger().handlers:
                handler.setFormatter(JsonFormatter())
        if not self._local:
            return
        if o.metrics_port:
            self._server = MonitoringServer(
                o.metrics_address, o.metrics_port, o.unready_after_seconds, LIVENESS_SECONDS
            ).start()
            _LOG.info(
                "Metrics on http://%s:%d/metrics, liveness on /healthz, readiness on /readyz",
                o.metrics_address,
                self._server.port,
            )
        if o.progress_seconds > 0:
            self._progress = ProgressLogger(o.progress_seconds).start()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._server is not None:
            self._server.stop()


def monitoring_from_options(options: PipelineOptions, local: bool) -> Monitoring:
    """Checks the monitoring options; a port that cannot be served fails here, naming the option."""
    o = options.view_as(MonitoringOptions)
    if o.metrics_port and not 0 < o.metrics_port < 65536:
        raise ValueError(f"--metrics_port={o.metrics_port} is not a port number: use 1..65535 (0: off).")
    if o.metrics_port and not local:
        raise ValueError(
            "--metrics_port serves the metrics of a local run; on Flink the workers report to Flink's "
            "metric system: enable its Prometheus reporter (see run_configs/k8s/flinkdeployment.yaml)."
        )
    if o.progress_seconds < 0:
        raise ValueError(f"--progress_seconds={o.progress_seconds} must be >= 0 (0 turns it off).")
    if o.unready_after_seconds <= 0:
        raise ValueError(f"--unready_after_seconds={o.unready_after_seconds} must be > 0 (default 120).")
    return Monitoring(o, local)


# --- the container's health check ---------------------------------------------------------------


def probe(port: int, path: str = "/healthz", absent_ok: bool = False, timeout: float = 5.0) -> int:
    """Exit status of a health check: 0 when the endpoint answers 200 (or, with `absent_ok`, when
    nothing listens: the image's other uses serve no metrics), 1 otherwise."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return 0 if answer.status == 200 else 1
    except urllib.error.HTTPError as error:
        print(error.read().decode("utf-8", "replace").strip())
        return 1
    except (urllib.error.URLError, OSError) as error:
        refused = isinstance(getattr(error, "reason", error), ConnectionRefusedError)
        return 0 if refused and absent_ok else 1


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Health check of a local pipeline's --metrics_port.")
    parser.add_argument("check", choices=["probe"])
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--absent-ok", action="store_true", help="pass when nothing listens on the port")
    arguments = parser.parse_args()
    sys.exit(probe(arguments.port, arguments.path, arguments.absent_ok))
