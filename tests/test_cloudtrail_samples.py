"""CloudTrail samples: realistic records, CloudTrail's keys and files, and AWS's ways to announce them."""

from __future__ import annotations

import collections
import gzip
import io
import json
import re
import time

import pytest

from pipelines.cloudtrail_samples import (
    ACCOUNT,
    announce_cloudtrail_via_sns,
    cloudtrail_file,
    cloudtrail_key,
    cloudtrail_log_files,
    cloudtrail_records,
    cloudtrail_validation_message,
    create_notification_queue,
    digest_key,
    enable_s3_event_notifications,
    eventbridge_object_created,
    put_cloudtrail_files,
    subscribe_queue_to_topic,
    write_cloudtrail_file,
)
from tests.conftest import REGION, aws_client
from transforms.cloudtrail import cloudtrail_gelf, iter_records
from transforms.s3_notifications import KeyFilter, S3Object, parse_notification

START = 1767225600.0  # 2026-01-01T00:00:00Z
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BUCKET = "trail-logs"


@pytest.fixture(scope="module")
def mix() -> list[dict]:
    return list(cloudtrail_records(3000, seed=5, start_time=START))


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


def test_records_are_deterministic_for_a_seed_and_start_time():
    first = list(cloudtrail_records(300, seed=3, start_time=START))
    assert first == list(cloudtrail_records(300, seed=3, start_time=START))
    assert first != list(cloudtrail_records(300, seed=4, start_time=START))


def test_records_are_json_with_unique_uuids_and_times_rising_from_the_start(mix):
    assert json.loads(json.dumps(mix)) == mix
    times = [r["eventTime"] for r in mix]
    assert all(ISO.match(t) for t in times)
    assert times[0] == "2026-01-01T00:00:00Z"
    assert times == sorted(times) and times[-1] > times[0]
    ids = [r["eventID"] for r in mix]
    assert all(UUID.match(i) for i in ids) and len(set(ids)) == len(ids)
    assert {r["eventVersion"] for r in mix} == {"1.08", "1.09"}
    assert {r["recipientAccountId"] for r in mix} == {ACCOUNT}


def test_account_and_region_are_used_throughout():
    records = list(cloudtrail_records(200, start_time=START, account="111122223333", region="eu-west-1"))
    assert "123456789012" not in json.dumps(records)
    assert {r["awsRegion"] for r in records} == {"eu-west-1", "us-east-1"}  # IAM's events are in us-east-1
    assert {r["awsRegion"] for r in records if r["eventSource"] != "iam.amazonaws.com"} == {"eu-west-1"}


def test_every_record_becomes_a_gelf_message(mix):
    for record in mix:
        message = cloudtrail_gelf(record)
        assert message["timestamp"] >= START
        assert message["_event_id"] == record["eventID"]


def test_the_mix_has_every_kind_of_caller_and_event(mix):
    kinds = collections.Counter(r.get("userIdentity", {}).get("type") for r in mix)
    assert set(kinds) == {"IAMUser", "AssumedRole", "AWSService", "Root", None}
    assert kinds["AssumedRole"] > len(mix) / 3
    assert {r["eventType"] for r in mix} == {"AwsApiCall", "AwsConsoleSignIn", "AwsServiceEvent"}
    assert {r["eventCategory"] for r in mix} == {"Management", "Data"}
    assert all(r["managementEvent"] == (r["eventCategory"] == "Management") for r in mix)
    assert any(r["readOnly"] for r in mix) and not all(r["readOnly"] for r in mix)
    assert sum("resources" in r for r in mix) > len(mix) / 4
    assert sum("tlsDetails" in r for r in mix) > len(mix) / 2
    assert any("vpcEndpointId" in r for r in mix)


def test_assumed_roles_name_their_user_only_through_the_session_issuer(mix):
    assumed = [r for r in mix if r.get("userIdentity", {}).get("type") == "AssumedRole"]
    for record in assumed:
        identity = record["userIdentity"]
        assert "userName" not in identity
        issuer = identity["sessionContext"]["sessionIssuer"]
        assert issuer["type"] == "Role" and issuer["accountId"] == ACCOUNT
        assert issuer["arn"].endswith(f"/{issuer['userName']}") and identity["principalId"].startswith(
            issuer["principalId"] + ":"
        )
        attributes = identity["sessionContext"]["attributes"]
        assert ISO.match(attributes["creationDate"]) and attributes["creationDate"] <= record["eventTime"]
        message = cloudtrail_gelf(record)
        assert message["_user_name"] == issuer["userName"] == message["_session_issuer_user_name"]
        assert message["_user_session_mfa_authenticated"] == attributes["mfaAuthenticated"]
        assert message["short_message"].endswith(f"/ {issuer['userName']}")
    assert {r["userIdentity"]["sessionContext"]["attributes"]["mfaAuthenticated"] for r in assumed} == {
        "true",
        "false",
    }


def test_console_logins_succeed_and_fail_as_signin_writes_them(mix):
    logins = [r for r in mix if r["eventName"] == "ConsoleLogin"]
    assert {r["eventSource"] for r in logins} == {"signin.amazonaws.com"}
    assert {r["eventType"] for r in logins} == {"AwsConsoleSignIn"}
    results = collections.Counter(r["responseElements"]["ConsoleLogin"] for r in logins)
    assert results["Success"] > results["Failure"] > 0
    for record in logins:
        assert "MFAUsed" in record["additionalEventData"] and "requestID" not in record
        failed = record["responseElements"]["ConsoleLogin"] == "Failure"
        assert (record.get("errorMessage") == "Failed authentication") == failed
        if "userIdentity" in record:
            assert cloudtrail_gelf(record)["_console_login"] in ("Success", "Failure")
    assert any(r.get("userIdentity", {}).get("type") == "Root" for r in logins)


def test_aws_services_call_by_name_not_from_an_address(mix):
    services = [r for r in mix if r.get("userIdentity", {}).get("type") == "AWSService"]
    assert {r["eventType"] for r in services} == {"AwsApiCall", "AwsServiceEvent"}
    for record in services:
        invoked_by = record["userIdentity"]["invokedBy"]
        assert invoked_by.endswith(".amazonaws.com") and record["sourceIPAddress"] == invoked_by
        assert cloudtrail_gelf(record)["_user_invoked_by"] == invoked_by
    assert any("sharedEventID" in r for r in services)


def test_some_calls_fail_with_an_error_code_and_no_response(mix):
    failed = [r for r in mix if "errorCode" in r]
    assert 0.03 * len(mix) < len(failed) < 0.12 * len(mix)
    assert {"AccessDenied", "Client.UnauthorizedOperation", "AccessDeniedException"} <= {
        r["errorCode"] for r in failed
    }
    for record in failed:
        assert record["responseElements"] is None and record["errorMessage"]
        assert cloudtrail_gelf(record)["_error_code"] == record["errorCode"]


def test_about_one_record_in_two_hundred_has_no_user_identity(mix):
    without = [r for r in mix if "userIdentity" not in r]
    assert 3 <= len(without) <= 35
    for record in without:
        message = cloudtrail_gelf(record)
        assert "_user_type" not in message and message["short_message"].endswith("/ <unknown user_name>")


def test_request_parameters_are_nested_as_the_apis_write_them(mix):
    by_name = collections.defaultdict(list)
    for record in mix:
        by_name[record["eventName"]].append(record)
    run = by_name["RunInstances"][0]
    items = run["requestParameters"]["instancesSet"]["items"]
    assert isinstance(items, list) and items[0]["imageId"].startswith("ami-")
    ok_run = next(r for r in by_name["RunInstances"] if "errorCode" not in r)
    assert ok_run["responseElements"]["requestId"] == ok_run["requestID"]
    assert isinstance(ok_run["responseElements"]["instancesSet"]["items"][0]["launchTime"], int)
    put = by_name["PutObject"][0]
    assert put["eventCategory"] == "Data" and not put["managementEvent"]
    assert {"bucketName", "key"} <= set(put["requestParameters"])
    assert put["resources"][0]["ARN"].endswith(
        f"{put['requestParameters']['bucketName']}/{put['requestParameters']['key']}"
    )
    assert "bucketName" in by_name["CreateBucket"][0]["requestParameters"]
    message = cloudtrail_gelf(run)
    assert json.loads(message["_request_parameters"]) == run["requestParameters"]


# --------------------------------------------------------------------------------------------------------
# Keys and files
# --------------------------------------------------------------------------------------------------------


def test_log_file_keys_are_cloudtrails_in_utc():
    when = 1767311940.0  # 2026-01-01T23:59:00Z
    assert cloudtrail_key(when, unique="Mu0KsOhtH1ar15ZZ") == (
        "AWSLogs/123456789012/CloudTrail/us-east-1/2026/01/01/"
        "123456789012_CloudTrail_us-east-1_20260101T2359Z_Mu0KsOhtH1ar15ZZ.json.gz"
    )
    assert cloudtrail_key(when + 60, "111122223333", "eu-west-1", unique="x") == (
        "AWSLogs/111122223333/CloudTrail/eu-west-1/2026/01/02/"
        "111122223333_CloudTrail_eu-west-1_20260102T0000Z_x.json.gz"
    )


def test_digest_keys_are_cloudtrails_and_skipped_by_default():
    key = digest_key(1767225605.0, trail="org-trail", home_region="us-west-2")
    assert key == (
        "AWSLogs/123456789012/CloudTrail-Digest/us-east-1/2026/01/01/"
        "123456789012_CloudTrail-Digest_us-east-1_org-trail_us-west-2_20260101T000005Z.json.gz"
    )
    assert digest_key(START).endswith("_management-events_us-east-1_20260101T000000Z.json.gz")
    assert not KeyFilter().accepts(key) and KeyFilter().accepts(cloudtrail_key(START, unique="a"))


@pytest.mark.parametrize("compress", [True, False])
def test_a_log_file_reads_back_record_for_record(compress):
    records = list(cloudtrail_records(150, start_time=START))
    data = cloudtrail_file(records, compress=compress)
    assert (data[:2] == b"\x1f\x8b") == compress
    assert json.loads(gzip.decompress(data) if compress else data) == {"Records": records}
    assert list(iter_records(io.BytesIO(data))) == records
    assert list(iter_records(io.BytesIO(cloudtrail_file([], compress=compress)))) == []


def test_log_files_are_consecutive_and_keyed_by_their_last_record():
    files = cloudtrail_log_files(3, 40, start_time=START)
    assert len({key for key, _ in files}) == 3
    last = None
    for key, data in files:
        records = list(iter_records(io.BytesIO(data)))
        assert len(records) == 40
        stamp = records[-1]["eventTime"].replace("-", "").replace(":", "")[:13]  # 20260101T0001
        assert f"_CloudTrail_us-east-1_{stamp}Z_" in key
        assert last is None or records[0]["eventTime"] >= last
        last = records[-1]["eventTime"]


@pytest.mark.parametrize("compress", [True, False])
def test_a_large_file_is_streamed_to_about_the_target_size(tmp_path, compress):
    path = tmp_path / ("big.json.gz" if compress else "big.json")
    target = 200_000
    count = write_cloudtrail_file(path, target, compress=compress, start_time=START)
    size = path.stat().st_size
    records = list(iter_records(path.open("rb")))
    assert len(records) == count > 0
    record_size = size / count if not compress else 400  # one compressed record is ~170 bytes
    assert target - 32 <= size <= target + record_size * 3
    ids = [r["eventID"] for r in records]
    assert len(set(ids)) == len(ids) and all(UUID.match(i) for i in ids)
    times = [r["eventTime"] for r in records]
    assert times == sorted(times) and times[0] == "2026-01-01T00:00:00Z"
    for record in records:
        cloudtrail_gelf(record)
        attributes = record.get("userIdentity", {}).get("sessionContext", {}).get("attributes", {})
        assert attributes.get("creationDate", "") <= record["eventTime"]
    assert len({r["eventName"] for r in records}) > 8
    if compress:
        ratio = len(gzip.decompress(path.read_bytes())) / size
        assert 5 < ratio < 16, ratio  # what real CloudTrail files compress to, not a repeated record's 100+


def test_a_large_file_is_the_same_for_the_same_seed(tmp_path):
    write_cloudtrail_file(tmp_path / "a.json.gz", 50_000, start_time=START)
    write_cloudtrail_file(tmp_path / "b.json.gz", 50_000, start_time=START)
    write_cloudtrail_file(tmp_path / "c.json.gz", 50_000, seed=99, start_time=START)
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()
    assert (tmp_path / "a.json.gz").read_bytes() != (tmp_path / "c.json.gz").read_bytes()


def test_a_target_below_an_empty_file_writes_an_empty_log_file(tmp_path):
    assert write_cloudtrail_file(tmp_path / "tiny.json", 5, compress=False) == 0
    assert (tmp_path / "tiny.json").read_text() == '{"Records":[]}'


def test_eventbridge_event_has_the_s3_object_created_shape():
    body = eventbridge_object_created(BUCKET, "AWSLogs/a b.json.gz", 1234, when=START, etag='"abc"')
    event = json.loads(body)
    assert event["detail-type"] == "Object Created" and event["source"] == "aws.s3"
    assert event["resources"] == [f"arn:aws:s3:::{BUCKET}"] and event["time"] == "2026-01-01T00:00:00Z"
    assert event["account"] == ACCOUNT and event["region"] == REGION and UUID.match(event["id"])
    detail = event["detail"]
    assert detail["object"]["etag"] == "abc" and detail["reason"] == "PutObject"
    assert set(detail) == {
        "version",
        "bucket",
        "object",
        "request-id",
        "requester",
        "source-ip-address",
        "reason",
    }
    assert body == eventbridge_object_created(BUCKET, "AWSLogs/a b.json.gz", 1234, when=START, etag='"abc"')
    assert parse_notification(body).objects == (S3Object(BUCKET, "AWSLogs/a b.json.gz", 1234, REGION),)


# --------------------------------------------------------------------------------------------------------
# End to end against moto_server
# --------------------------------------------------------------------------------------------------------


def receive(sqs, queue_url: str, expected: int, timeout: float = 10.0) -> list[str]:
    """Message bodies in arrival order, deleted once received."""
    bodies: list[str] = []
    deadline = time.monotonic() + timeout
    while len(bodies) < expected and time.monotonic() < deadline:
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in response.get("Messages", []):
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def read_back(s3, obj: S3Object) -> list[dict]:
    body = s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
    return list(iter_records(body))


@pytest.fixture
def clients(moto):
    return aws_client("s3", moto), aws_client("sqs", moto), aws_client("sns", moto)


@pytest.fixture
def log_files() -> list[tuple[str, bytes]]:
    return cloudtrail_log_files(3, 25, start_time=START)


def test_files_keep_their_bytes_and_cloudtrails_headers_in_s3(clients, log_files):
    s3, _, _ = clients
    put_cloudtrail_files(s3, BUCKET, log_files)
    put_cloudtrail_files(s3, BUCKET, log_files[:1])  # the bucket exists now: no error
    for key, data in log_files:
        response = s3.get_object(Bucket=BUCKET, Key=key)
        assert response["ContentEncoding"] == "gzip" and response["ContentType"] == "application/json"
        assert response["Body"].read() == data  # not decompressed on the way: the reader must gunzip


@pytest.mark.parametrize("raw, kind", [(False, "cloudtrail-sns"), (True, "cloudtrail-raw")])
def test_cloudtrail_notifications_through_sns_name_the_files(clients, log_files, raw, kind):
    s3, sqs, sns = clients
    queue_url, queue_arn = create_notification_queue(sqs, "trail-notifications")
    topic_arn = subscribe_queue_to_topic(sns, sqs, "trail-topic", queue_url, queue_arn, raw=raw)
    assert topic_arn.endswith(":trail-topic")
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )
    assert policy["Statement"][0]["Condition"]["ArnLike"]["aws:SourceArn"] == topic_arn

    sns.publish(TopicArn=topic_arn, Message=cloudtrail_validation_message())
    put_cloudtrail_files(s3, BUCKET, log_files)
    keys = [key for key, _ in log_files]
    announce_cloudtrail_via_sns(sns, topic_arn, BUCKET, keys[:2])
    announce_cloudtrail_via_sns(sns, topic_arn, BUCKET, keys[2:])

    bodies = receive(sqs, queue_url, 3)
    assert len(bodies) == 3
    assert bodies[1].lstrip().startswith('{"s3Bucket"') == raw
    validation, *notifications = (parse_notification(body) for body in bodies)
    assert validation.kind == "skipped" and validation.skipped == ("CloudTrail validation message",)
    assert [n.kind for n in notifications] == [kind, kind]
    announced = [obj for n in notifications for obj in n.objects]
    assert announced == [S3Object(BUCKET, key) for key in keys]
    assert [len(read_back(s3, obj)) for obj in announced] == [25, 25, 25]


def test_s3_event_notifications_start_with_a_test_event_then_name_each_file(clients, log_files):
    s3, sqs, _ = clients
    queue_url, queue_arn = create_notification_queue(sqs, "s3-events")
    enable_s3_event_notifications(s3, BUCKET, queue_arn, sqs=sqs)
    statement = json.loads(
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )["Statement"][0]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    digest = digest_key(START)
    put_cloudtrail_files(s3, BUCKET, [*log_files, (digest, gzip.compress(b'{"logFiles":[]}'))])
    s3.put_object(Bucket=BUCKET, Key="elsewhere/notes.txt", Body=b"not under the prefix")

    bodies = receive(sqs, queue_url, len(log_files) + 2)
    test_event, *events = (parse_notification(body) for body in bodies)
    assert test_event.kind == "skipped" and test_event.skipped == ("s3:TestEvent",)
    assert json.loads(bodies[0])["Bucket"] == BUCKET
    assert {n.kind for n in events} == {"s3-event"}
    announced = [obj for n in events for obj in n.objects]
    assert [obj.key for obj in announced] == [key for key, _ in log_files] + [digest]
    sizes = {key: len(data) for key, data in log_files}
    assert all(obj.bucket == BUCKET and obj.region == REGION for obj in announced)
    assert all(obj.size == sizes[obj.key] for obj in announced[:-1])
    kept, filtered = KeyFilter().split(announced)
    assert [obj.key for obj in filtered] == [digest]
    assert [len(read_back(s3, obj)) for obj in kept] == [25, 25, 25]


def test_eventbridge_events_sent_to_the_queue_name_each_file(clients, log_files):
    s3, sqs, _ = clients
    queue_url, _ = create_notification_queue(sqs, "eventbridge-events", visibility_timeout=60)
    assert sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["VisibilityTimeout"])[
        "Attributes"
    ] == {"VisibilityTimeout": "60"}
    put_cloudtrail_files(s3, BUCKET, log_files)
    for key, data in log_files:
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
        sqs.send_message(
            QueueUrl=queue_url, MessageBody=eventbridge_object_created(BUCKET, key, len(data), etag=etag)
        )
    notifications = [parse_notification(body) for body in receive(sqs, queue_url, len(log_files))]
    assert {n.kind for n in notifications} == {"eventbridge"}
    announced = [obj for n in notifications for obj in n.objects]
    assert announced == [S3Object(BUCKET, key, len(data), REGION) for key, data in log_files]
    assert [len(read_back(s3, obj)) for obj in announced] == [25, 25, 25]
