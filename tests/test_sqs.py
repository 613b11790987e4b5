"""ReadFromSqs: every message delivered once, deleted only after its bundle completed, never on failure."""

from __future__ import annotations

import threading
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.runners import LOCAL_RUNNER
from tests.conftest import REGION, aws_client
from transforms import stopping
from transforms.aws import AwsConfig
from transforms.sqs import (
    BundleDeleter,
    Finish,
    Poll,
    ReadFromSqs,
    SqsPollTracker,
    SqsReadConfig,
    SqsRestriction,
    delete_messages,
    extend_visibility,
    queue_counts,
    resolve_queue_url,
    sqs_config_from_values,
)

AWS = AwsConfig(region=REGION)


def read_config(endpoint: str, queue_url: str, **kwargs) -> SqsReadConfig:
    aws = AwsConfig(
        region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
    )
    kwargs.setdefault("stop_when_idle", 2)
    return SqsReadConfig(queue_url=queue_url, aws=aws, **kwargs)


def make_queue(client, name: str = "notifications", visibility_timeout: int = 30) -> str:
    return client.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout)})[
        "QueueUrl"
    ]


def send(client, queue_url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
        client.send_message_batch(QueueUrl=queue_url, Entries=entries)


def receive_all(client, queue_url: str, expected: int, timeout: float = 20.0) -> list[dict]:
    """Receives (without deleting) until `expected` messages came back or `timeout` passed."""
    received: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(received) < expected and time.monotonic() < deadline:
        response = client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
        )
        for message in response.get("Messages", []):
            received[message["MessageId"]] = message
    return list(received.values())


class AppendToFile(beam.DoFn):
    """A real sink the test reads afterwards (DoFns are pickled, lists are not shared)."""

    def __init__(self, path, fmt):
        self._path = str(path)
        self._fmt = fmt

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        with open(self._path, "a") as out:
            out.write(self._fmt(message, timestamp) + "\n")


class FailOn(beam.DoFn):
    """A downstream step that fails on the given bodies (all when None), after recording the others."""

    def __init__(self, path, bodies: set[str] | None = None):
        self._path = str(path)
        self._bodies = bodies

    def process(self, message):
        if self._bodies is None or message.body in self._bodies:
            raise RuntimeError(f"downstream failure on {message.body}")
        with open(self._path, "a") as out:
            out.write(message.body + "\n")


def lines_of(path) -> list[str]:
    try:
        return open(path).read().splitlines()
    except FileNotFoundError:
        return []


def run_reader(config: SqsReadConfig, downstream) -> beam.runners.runner.PipelineResult:
    pipeline = beam.Pipeline(options=PipelineOptions([f"--runner={LOCAL_RUNNER}", "--streaming"]))
    messages = pipeline | ReadFromSqs(config)
    messages | "Downstream" >> beam.ParDo(downstream)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counter(result, name: str) -> int:
    found = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("sqs").with_name(name))
    return sum(c.committed or 0 for c in found["counters"])


# --- restriction tracking -------------------------------------------------------------------------


def test_tracker_records_idleness_and_a_checkpoint_hands_the_reader_on():
    tracker = SqsPollTracker(SqsRestriction())
    assert tracker.try_claim(Poll(idle_since=100.0))
    primary, residual = tracker.try_split(0)
    assert primary.done and residual == SqsRestriction(idle_since=100.0)
    assert not tracker.try_claim(Poll(idle_since=None)), "claims after a checkpoint fail"
    tracker.check_done()


def test_tracker_refuses_to_end_unfinished_and_ends_on_finish():
    tracker = SqsPollTracker(SqsRestriction())
    with pytest.raises(ValueError, match="unfinished"):
        tracker.check_done()
    assert tracker.try_claim(Finish())
    tracker.check_done()
    assert tracker.try_split(0) is None


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"queue_url": None}, "--sqs_queue_url is required"),
        ({"queue_url": "no spaces allowed"}, "--sqs_queue_url="),
        ({"max_messages": 11}, "--sqs_max_messages"),
        ({"max_messages": 0}, "--sqs_max_messages"),
        ({"wait_seconds": 21}, "--sqs_wait_seconds"),
        ({"visibility_timeout": -1}, "--sqs_visibility_timeout"),
        ({"stop_when_idle": 0}, "--stop_when_idle"),
        ({"readers": 0}, "--sqs_readers"),
    ],
)
def test_bad_settings_fail_naming_the_option(kwargs, message):
    kwargs = {"queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/q", **kwargs}
    with pytest.raises(ValueError, match=message):
        sqs_config_from_values(aws=AWS, **kwargs)


def test_a_queue_name_is_accepted_and_resolved_to_its_url(moto):
    client = aws_client("sqs", moto)
    url = make_queue(client, "cloudtrail-notifications")
    config = sqs_config_from_values("cloudtrail-notifications", AWS, max_messages=5, readers=2)
    assert (config.max_messages, config.readers) == (5, 2)
    assert resolve_queue_url(client, config.queue_url) == url
    assert resolve_queue_url(client, url) == url
    with pytest.raises(ValueError, match="--sqs_queue_url=missing"):
        resolve_queue_url(client, "missing")


# --- deleting -------------------------------------------------------------------------------------


class FlakyDeletes:
    """A DeleteMessageBatch that fails the given handles a given number of times each."""

    def __init__(self, failures: dict[str, int]):
        self.failures = dict(failures)
        self.batches: list[int] = []

    def delete_message_batch(self, QueueUrl, Entries):
        self.batches.append(len(Entries))
        successful, failed = [], []
        for entry in Entries:
            if self.failures.get(entry["ReceiptHandle"], 0) > 0:
                self.failures[entry["ReceiptHandle"]] -= 1
                failed.append({"Id": entry["Id"], "Code": "InternalError", "SenderFault": False})
            else:
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}


def test_deletes_in_batches_of_ten_retrying_a_failed_entry_once():
    client = FlakyDeletes({"h3": 1, "h17": 5})
    result = delete_messages(client, "q", [f"h{i}" for i in range(23)])
    assert result.deleted == 22 and result.failed == 1, "h3 succeeds on its retry, h17 fails twice"
    assert client.batches == [10, 1, 10, 1, 3]


# --- reading from moto ----------------------------------------------------------------------------


def test_every_message_is_delivered_once_then_deleted_and_the_reader_ends_when_idle(moto, tmp_path):
    client = aws_client("sqs", moto)
    url = make_queue(client)
    bodies = [f"object-{i}" for i in range(35)]
    send(client, url, bodies)
    seen = tmp_path / "seen"

    result = run_reader(
        read_config(moto, url),
        AppendToFile(seen, lambda m, ts: f"{m.body} {m.receive_count} {ts == m.sent_timestamp}"),
    )

    assert sorted(lines_of(seen)) == sorted(f"{b} 1 True" for b in bodies)
    assert queue_counts(client, url) == (0, 0), "nothing left, nothing in flight"
    client.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "0"})
    assert client.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", []) == []
    assert counter(result, "messages_received") == 35
    assert counter(result, "receive_calls") >= 4
    assert counter(result, "messages_deleted") == 35, "counted by the reader's next poll"
    assert counter(result, "delete_failures") == 0


def test_nothing_is_deleted_when_the_bundle_fails_downstream(moto, tmp_path):
    client = aws_client("sqs", moto)
    url = make_queue(client, visibility_timeout=1)
    bodies = [f"object-{i}" for i in range(35)]
    send(client, url, bodies)

    with pytest.raises(Exception, match="downstream failure"):
        run_reader(read_config(moto, url), FailOn(tmp_path / "seen"))

    assert sorted(m["Body"] for m in receive_all(client, url, expected=35)) == sorted(bodies)


def test_only_the_failed_bundle_stays_in_the_queue_when_earlier_bundles_completed(moto, tmp_path):
    client = aws_client("sqs", moto)
    url = make_queue(client, visibility_timeout=1)
    bodies = [f"object-{i}" for i in range(35)]
    send(client, url, bodies)
    seen = tmp_path / "seen"

    with pytest.raises(Exception, match="downstream failure on object-30"):
        run_reader(read_config(moto, url, max_messages=5), FailOn(seen, {"object-30"}))

    completed = set(lines_of(seen))
    left = {m["Body"] for m in receive_all(client, url, expected=35, timeout=5)}
    assert "object-30" in left
    assert completed | left == set(bodies), "every message was either handled or is still queued"
    assert len(left) < len(bodies), "the bundles that completed before the failure were deleted"


def test_a_redelivered_message_reports_its_receive_count(moto, tmp_path):
    client = aws_client("sqs", moto)
    url = make_queue(client)
    send(client, url, ["object-0"])
    first = client.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"][0]
    extend_visibility(client, url, first["ReceiptHandle"], 0)  # as if its visibility had expired
    seen = tmp_path / "seen"

    run_reader(read_config(moto, url), AppendToFile(seen, lambda m, ts: f"{m.message_id} {m.receive_count}"))

    assert lines_of(seen) == [f"{first['MessageId']} 2"]


def test_extend_visibility_keeps_a_message_hidden_past_its_original_timeout(moto):
    client = aws_client("sqs", moto)
    url = make_queue(client, visibility_timeout=1)
    send(client, url, ["kept-hidden", "comes-back"])
    received = receive_all(client, url, expected=2)
    assert len(received) == 2
    for message in received:
        # Start both one-second timeouts now; only one is then extended.
        client.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=1
        )
    hidden = next(m for m in received if m["Body"] == "kept-hidden")

    extend_visibility(client, url, hidden["ReceiptHandle"], 30)
    time.sleep(1.5)  # past the original timeout of both

    again = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert [m["Body"] for m in again.get("Messages", [])] == ["comes-back"]


def test_two_readers_deliver_each_message_once(moto, tmp_path):
    client = aws_client("sqs", moto)
    url = make_queue(client)
    bodies = [f"object-{i}" for i in range(60)]
    send(client, url, bodies)
    seen = tmp_path / "seen"

    result = run_reader(read_config(moto, url, readers=2), AppendToFile(seen, lambda m, ts: m.body))

    assert sorted(lines_of(seen)) == sorted(bodies)
    assert queue_counts(client, url) == (0, 0)
    assert counter(result, "messages_received") == 60


def test_a_stop_request_ends_a_streaming_reader_after_its_messages_were_deleted(moto, tmp_path):
    client = aws_client("sqs", moto)
    url = make_queue(client)
    bodies = [f"object-{i}" for i in range(12)]
    send(client, url, bodies)
    seen = tmp_path / "seen"

    def stop_once_all_seen():
        deadline = time.monotonic() + 60
        while len(lines_of(seen)) < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.05)
        stopping.request_stop()

    stopper = threading.Thread(target=stop_once_all_seen, daemon=True)
    stopper.start()
    run_reader(read_config(moto, url, stop_when_idle=None), AppendToFile(seen, lambda m, ts: m.body))
    stopper.join()

    assert sorted(lines_of(seen)) == sorted(bodies)
    assert queue_counts(client, url) == (0, 0)


# --- deletion by a later step -------------------------------------------------------------------


class DeleteAfterBundle(beam.DoFn):
    """A later step that ends each message's processing: records it, then deletes it after its bundle."""

    def __init__(self, config: SqsReadConfig, path):
        self._config = config
        self._path = str(path)
        self._deleter = BundleDeleter()

    def setup(self):
        self._client = self._config.aws.client("sqs")

    def process(self, message, finalizer=beam.DoFn.BundleFinalizerParam):
        with open(self._path, "a") as out:
            out.write(message.body + "\n")
        self._deleter.delete_after_bundle(
            finalizer, self._client, message.queue_url, [message.receipt_handle]
        )


def test_with_delete_off_a_later_step_deletes_and_the_bounded_reader_waits_for_it(moto, tmp_path):
    client = aws_client("sqs", moto)
    url = make_queue(client, visibility_timeout=30)
    bodies = [f"object-{i}" for i in range(25)]
    send(client, url, bodies)
    seen = tmp_path / "seen"
    config = read_config(moto, url, stop_when_idle=1)
    pipeline = beam.Pipeline(options=PipelineOptions([f"--runner={LOCAL_RUNNER}", "--streaming"]))
    pipeline | ReadFromSqs(config, delete=False) | beam.ParDo(DeleteAfterBundle(config, seen))
    result = pipeline.run()
    result.wait_until_finish()

    assert sorted(lines_of(seen)) == sorted(bodies), "each message handled once"
    assert queue_counts(client, url) == (0, 0)
    assert counter(result, "messages_deleted") == 25, "the later step's deletions are counted too"
