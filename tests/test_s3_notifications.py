"""SQS message bodies -> the S3 objects they announce: every AWS shape, the known skips, the errors,
and the key filter that keeps CloudTrail digest files from being downloaded."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from transforms.s3_notifications import (
    DEFAULT_KEY_EXCLUDE,
    KeyFilter,
    KeyFilterError,
    Notification,
    NotificationError,
    S3Object,
    parse_notification,
)

ACCOUNT = "111122223333"
TRAIL_BUCKET = "aws-cloudtrail-logs-111122223333-3f2a"
LOG_BUCKET = "example-app-logs"
TOPIC = f"arn:aws:sns:eu-west-1:{ACCOUNT}:cloudtrail-notifications"

CLOUDTRAIL_KEY = (
    f"AWSLogs/{ACCOUNT}/CloudTrail/eu-west-1/2024/05/14/"
    f"{ACCOUNT}_CloudTrail_eu-west-1_20240514T1005Z_kD2hXb9fQm1LcE7a.json.gz"
)
CLOUDTRAIL_KEY_2 = (
    f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/2024/05/14/"
    f"{ACCOUNT}_CloudTrail_us-east-1_20240514T1005Z_P0sQ3vR8tU2wX4yZ.json.gz"
)
INSIGHT_KEY = (
    f"AWSLogs/{ACCOUNT}/CloudTrail-Insight/eu-west-1/2024/05/14/"
    f"{ACCOUNT}_CloudTrail-Insight_eu-west-1_20240514T1010Z_a1B2c3D4e5F6g7H8.json.gz"
)
DIGEST_KEY = (
    f"AWSLogs/{ACCOUNT}/CloudTrail-Digest/eu-west-1/2024/05/14/"
    f"{ACCOUNT}_CloudTrail-Digest_eu-west-1_management-trail_eu-west-1_20240514T100512Z.json.gz"
)
ORG_DIGEST_KEY = (
    f"AWSLogs/o-a1b2c3d4e5/{ACCOUNT}/CloudTrail-Digest/us-east-1/2024/05/14/"
    f"{ACCOUNT}_CloudTrail-Digest_us-east-1_org-trail_us-east-1_20240514T100512Z.json.gz"
)


def sns_envelope(message: str, sns_type: str = "Notification", **extra: str) -> str:
    """The JSON SNS puts in the SQS body when raw message delivery is off."""
    envelope = {
        "Type": sns_type,
        "MessageId": "5b0f0a2e-0c0a-5d5e-9b6d-3c8b1f2a7e41",
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2024-05-14T10:05:47.123Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCk==",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-60eadc530605d63b8e62a523676ef735.pem",
        "UnsubscribeURL": (
            "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
            f"{TOPIC}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"
        ),
    }
    envelope.update(extra)
    return json.dumps(envelope, indent=2)


def cloudtrail_message(*keys: str, bucket: str = TRAIL_BUCKET) -> str:
    return json.dumps({"s3Bucket": bucket, "s3ObjectKey": list(keys)})


def s3_record(key: str, event_name: str = "ObjectCreated:Put", size: int | None = 1024) -> dict:
    """One record of an S3 event notification as S3 writes it; `key` is given URL-encoded, as S3 sends it."""
    obj: dict = {"key": key, "eTag": "0123456789abcdef0123456789abcdef", "sequencer": "0A1B2C3D4E5F678901"}
    if size is not None:
        obj["size"] = size
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-1",
        "eventTime": "2024-05-14T10:05:47.412Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAJDPLRKLG7UEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "to-sqs",
            "bucket": {
                "name": LOG_BUCKET,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{LOG_BUCKET}",
            },
            "object": obj,
        },
    }


def s3_event(*records: dict) -> str:
    return json.dumps({"Records": list(records)})


def eventbridge_event(key: str, detail_type: str = "Object Created", source: str = "aws.s3") -> str:
    return json.dumps(
        {
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": detail_type,
            "source": source,
            "account": ACCOUNT,
            "time": "2024-05-14T10:05:47Z",
            "region": "eu-west-1",
            "resources": [f"arn:aws:s3:::{LOG_BUCKET}"],
            "detail": {
                "version": "0",
                "bucket": {"name": LOG_BUCKET},
                "object": {"key": key, "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184"},
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": ACCOUNT,
                "source-ip-address": "203.0.113.15",
                "reason": "PutObject",
            },
        }
    )


S3_TEST_EVENT = json.dumps(
    {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2024-05-14T10:00:00.000Z",
        "Bucket": LOG_BUCKET,
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    }
)

# AWS Config delivers to the same topic as CloudTrail in many accounts; its delivery notifications
# carry s3Bucket and s3ObjectKey too (a string), which made the plugin log errors and never delete them.
CONFIG_HISTORY_DELIVERED = json.dumps(
    {
        "s3ObjectKey": (
            f"AWSLogs/{ACCOUNT}/Config/eu-west-1/2024/5/14/ConfigHistory/{ACCOUNT}_Config_eu-west-1_"
            "ConfigHistory_AWS::EC2::Instance_20240514T090000Z_20240514T100000Z_1.json.gz"
        ),
        "s3Bucket": "config-bucket-111122223333",
        "notificationCreationTime": "2024-05-14T10:05:12.345Z",
        "messageType": "ConfigurationHistoryDeliveryCompleted",
        "recordVersion": "1.1",
    }
)
CONFIG_ITEM_CHANGED = json.dumps(
    {
        "configurationItemDiff": {"changedProperties": {}, "changeType": "CREATE"},
        "configurationItem": {
            "resourceType": "AWS::EC2::SecurityGroup",
            "resourceId": "sg-0a1b2c3d4e5f67890",
            "awsRegion": "eu-west-1",
            "configurationItemStatus": "ResourceDiscovered",
        },
        "notificationCreationTime": "2024-05-14T10:05:12.345Z",
        "messageType": "ConfigurationItemChangeNotification",
        "recordVersion": "1.3",
    }
)


# --- CloudTrail notifications -------------------------------------------------------------------


def test_cloudtrail_sns_notification_announces_its_log_file():
    notification = parse_notification(sns_envelope(cloudtrail_message(CLOUDTRAIL_KEY)))

    assert notification == Notification("cloudtrail-sns", (S3Object(TRAIL_BUCKET, CLOUDTRAIL_KEY),))
    assert not notification.nothing_to_read
    assert notification.skipped == ()


def test_cloudtrail_notification_with_several_keys_announces_each_in_order():
    message = cloudtrail_message(CLOUDTRAIL_KEY, CLOUDTRAIL_KEY_2, INSIGHT_KEY)

    notification = parse_notification(sns_envelope(message))

    assert [obj.key for obj in notification.objects] == [CLOUDTRAIL_KEY, CLOUDTRAIL_KEY_2, INSIGHT_KEY]
    assert {obj.bucket for obj in notification.objects} == {TRAIL_BUCKET}
    # CloudTrail does not say the size or the bucket's region.
    assert {(obj.size, obj.region) for obj in notification.objects} == {(None, None)}


def test_cloudtrail_with_raw_message_delivery_is_understood_without_the_envelope():
    notification = parse_notification(cloudtrail_message(CLOUDTRAIL_KEY, CLOUDTRAIL_KEY_2))

    assert notification.kind == "cloudtrail-raw"
    assert notification.objects == (
        S3Object(TRAIL_BUCKET, CLOUDTRAIL_KEY),
        S3Object(TRAIL_BUCKET, CLOUDTRAIL_KEY_2),
    )


def test_cloudtrail_keys_are_taken_as_they_are_not_url_decoded():
    key = "custom+prefix/AWSLogs/x%20y.json.gz"

    notification = parse_notification(sns_envelope(cloudtrail_message(key)))

    assert notification.objects[0].key == key


def test_body_may_be_given_as_bytes():
    body = sns_envelope(cloudtrail_message(CLOUDTRAIL_KEY)).encode("utf-8")

    assert parse_notification(body).objects == (S3Object(TRAIL_BUCKET, CLOUDTRAIL_KEY),)


# --- S3 event notifications ---------------------------------------------------------------------


def test_s3_event_announces_the_created_object_with_size_and_region():
    body = s3_event(s3_record("vpc/2024/05/14/flows-0001.log.gz", size=48213))

    notification = parse_notification(body)

    assert notification == Notification(
        "s3-event", (S3Object(LOG_BUCKET, "vpc/2024/05/14/flows-0001.log.gz", 48213, "eu-west-1"),)
    )


def test_s3_event_key_is_url_decoded_with_plus_for_space_and_utf8_escapes():
    # Uploaded as "exports/2024 05/café résumé+1.log.gz": S3 writes spaces as "+" and a real "+" as %2B.
    body = s3_event(s3_record("exports/2024+05/caf%C3%A9+r%C3%A9sum%C3%A9%2B1.log.gz"))

    assert parse_notification(body).objects[0].key == "exports/2024 05/café résumé+1.log.gz"


def test_s3_event_with_several_records_announces_every_object_in_order():
    body = s3_event(
        s3_record("alb/part-0001.log.gz", size=100),
        s3_record("alb/part-0002.log.gz", "ObjectCreated:CompleteMultipartUpload", size=200),
        s3_record("alb/part-0003.log.gz", "ObjectCreated:Copy", size=300),
    )

    notification = parse_notification(body)

    assert [(obj.key, obj.size) for obj in notification.objects] == [
        ("alb/part-0001.log.gz", 100),
        ("alb/part-0002.log.gz", 200),
        ("alb/part-0003.log.gz", 300),
    ]
    assert notification.skipped == ()


def test_s3_event_mixing_created_and_removed_reads_the_created_and_reports_the_others():
    body = s3_event(
        s3_record("logs/new.log.gz", "ObjectCreated:Put"),
        s3_record("logs/old.log.gz", "ObjectRemoved:Delete", size=None),
        s3_record("logs/older.log.gz", "LifecycleExpiration:Delete", size=None),
    )

    notification = parse_notification(body)

    assert notification.kind == "s3-event"
    assert [obj.key for obj in notification.objects] == ["logs/new.log.gz"]
    assert notification.skipped == ("S3 event ObjectRemoved:Delete", "S3 event LifecycleExpiration:Delete")


def test_s3_event_with_only_removals_has_nothing_to_read_and_says_why():
    notification = parse_notification(
        s3_event(s3_record("logs/old.log.gz", "ObjectRemoved:Delete", size=None))
    )

    assert notification.nothing_to_read
    assert notification.objects == ()
    assert notification.skipped == ("S3 event ObjectRemoved:Delete",)


def test_s3_event_in_an_sns_envelope_is_unwrapped_and_decoded():
    body = sns_envelope(s3_event(s3_record("exports/a+b%2Bc.log")))

    notification = parse_notification(body)

    assert notification.kind == "s3-event-sns"
    assert notification.objects == (S3Object(LOG_BUCKET, "exports/a b+c.log", 1024, "eu-west-1"),)


def test_s3_event_size_is_left_out_when_not_a_count():
    record = s3_record("logs/a.log", size=None)
    record["s3"]["object"]["size"] = "1024"

    assert parse_notification(s3_event(record)).objects[0].size is None


# --- EventBridge --------------------------------------------------------------------------------


def test_eventbridge_object_created_announces_the_object_with_its_key_as_is():
    # EventBridge does not URL-encode keys: "+" and "%20" here are part of the real key.
    notification = parse_notification(eventbridge_event("exports/a+b %20c.log"))

    assert notification == Notification(
        "eventbridge", (S3Object(LOG_BUCKET, "exports/a+b %20c.log", 5, "eu-west-1"),)
    )


def test_eventbridge_event_other_than_object_created_is_skipped_with_its_detail_type():
    notification = parse_notification(eventbridge_event("logs/old.log", detail_type="Object Deleted"))

    assert notification.kind == "eventbridge"
    assert notification.nothing_to_read
    assert notification.skipped == ("EventBridge Object Deleted",)


def test_eventbridge_event_delivered_through_sns_is_unwrapped():
    notification = parse_notification(sns_envelope(eventbridge_event("logs/new.log")))

    assert notification.kind == "eventbridge-sns"
    assert notification.objects == (S3Object(LOG_BUCKET, "logs/new.log", 5, "eu-west-1"),)


# --- known messages with nothing to read --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(S3_TEST_EVENT, "s3:TestEvent", id="s3-test-event"),
        pytest.param(sns_envelope(S3_TEST_EVENT), "s3:TestEvent", id="s3-test-event-in-sns"),
        pytest.param(
            sns_envelope("CloudTrail validation message."),
            "CloudTrail validation message",
            id="cloudtrail-validation",
        ),
        pytest.param(
            "CloudTrail validation message.", "CloudTrail validation message", id="cloudtrail-validation-raw"
        ),
        pytest.param(
            sns_envelope(
                "You have chosen to subscribe to the topic " + TOPIC + ".\nTo confirm the subscription, visit"
                " the SubscribeURL included in this message.",
                "SubscriptionConfirmation",
                Token="2336412f37fb687f5d51e6e2425dacbba2ae2a4c6f5e7a4c1f7b1b2b6a6b9b0c",
                SubscribeURL="https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336",
            ),
            "SNS SubscriptionConfirmation",
            id="sns-subscription-confirmation",
        ),
        pytest.param(
            sns_envelope(
                "You have chosen to deactivate subscription " + TOPIC + ":2bcf.",
                "UnsubscribeConfirmation",
                Token="2336412f37fb687f5d51e6e2425dacbba2ae2a4c6f5e7a4c1f7b1b2b6a6b9b0c",
            ),
            "SNS UnsubscribeConfirmation",
            id="sns-unsubscribe-confirmation",
        ),
        pytest.param(
            sns_envelope(CONFIG_HISTORY_DELIVERED),
            "AWS Config notification ConfigurationHistoryDeliveryCompleted",
            id="config-history-delivered",
        ),
        pytest.param(
            sns_envelope(CONFIG_ITEM_CHANGED),
            "AWS Config notification ConfigurationItemChangeNotification",
            id="config-item-changed",
        ),
        pytest.param(
            CONFIG_HISTORY_DELIVERED,
            "AWS Config notification ConfigurationHistoryDeliveryCompleted",
            id="config-raw-delivery",
        ),
    ],
)
def test_known_message_without_objects_is_skipped_with_its_reason(body, reason):
    notification = parse_notification(body)

    assert notification == Notification("skipped", (), (reason,))
    assert notification.nothing_to_read


@pytest.mark.parametrize(
    "message_type",
    [
        "ConfigurationHistoryDeliveryCompleted",
        "ConfigurationSnapshotDeliveryCompleted",
        "ConfigurationItemChangeNotification",
        "ComplianceChangeNotification",
        "OversizedConfigurationItemChangeNotification",
        "ConfigRulesEvaluationStarted",
    ],
)
def test_every_aws_config_message_type_is_skipped(message_type):
    message = json.dumps({"messageType": message_type, "notificationCreationTime": "2024-05-14T10:05:12Z"})

    assert parse_notification(sns_envelope(message)).skipped == (f"AWS Config notification {message_type}",)


def test_config_delivery_notification_is_not_taken_for_cloudtrail_despite_its_s3_fields():
    notification = parse_notification(sns_envelope(CONFIG_HISTORY_DELIVERED))

    assert notification.kind == "skipped"
    assert notification.objects == ()


# --- errors: the reason says what was wrong and what was expected -------------------------------


def error_for(body: str | bytes) -> str:
    with pytest.raises(NotificationError) as caught:
        parse_notification(body)
    return str(caught.value)


def test_notification_error_is_a_value_error():
    assert issubclass(NotificationError, ValueError)


def test_body_that_is_not_json_is_rejected_showing_its_start_and_the_accepted_shapes():
    reason = error_for("hello from a misrouted producer")

    assert reason.startswith("the message body is not JSON")
    assert "'hello from a misrouted producer'" in reason
    assert "S3 event notification" in reason and "CloudTrail notification" in reason
    assert "EventBridge" in reason and "SNS envelope" in reason


def test_body_that_is_not_utf8_is_rejected():
    assert error_for(b"\x1f\x8b\x08\x00gzip?").startswith("the message body is not UTF-8 text")


def test_empty_body_is_rejected():
    assert error_for("  \n").startswith("the message body is empty")


def test_json_that_is_not_an_object_is_rejected():
    assert error_for('["a", "b"]').startswith("the message body is a list of 2 items, not a JSON object")


def test_json_object_of_unknown_shape_is_rejected_naming_its_keys():
    reason = error_for(json.dumps({"detail": {}, "bucket": "x", "eventType": "put"}))

    assert reason.startswith(
        "the message body is a JSON object of unknown shape (keys: bucket, detail, eventType)"
    )
    assert "expected an S3 event notification" in reason


def test_sns_message_that_is_not_json_is_rejected():
    reason = error_for(sns_envelope("Deployment finished: build 1234"))

    assert reason.startswith("the SNS Message is not JSON")
    assert "'Deployment finished: build 1234'" in reason


def test_sns_message_of_unknown_shape_is_rejected():
    reason = error_for(sns_envelope(json.dumps({"alarmName": "cpu-high", "newState": "ALARM"})))

    assert reason.startswith("the SNS Message is a JSON object of unknown shape (keys: alarmName, newState)")


def test_sns_notification_without_message_is_rejected():
    body = json.loads(sns_envelope("x"))
    del body["Message"]

    assert error_for(json.dumps(body)).startswith(
        "SNS notification without a Message string (Message is missing (or null))"
    )


def test_sns_envelope_of_unknown_type_is_rejected():
    assert "SNS envelope of Type 'Broadcast'" in error_for(sns_envelope("x", "Broadcast"))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            {"s3ObjectKey": [CLOUDTRAIL_KEY]},
            "CloudTrail notification s3Bucket is missing (or null); expected a non-empty string",
            id="no-bucket",
        ),
        pytest.param(
            {"s3Bucket": TRAIL_BUCKET},
            "CloudTrail notification s3ObjectKey is missing (or null);"
            " expected a non-empty list of object keys",
            id="no-keys",
        ),
        pytest.param(
            {"s3Bucket": TRAIL_BUCKET, "s3ObjectKey": CLOUDTRAIL_KEY},
            "CloudTrail notification s3ObjectKey is 'AWSLogs/",
            id="key-not-a-list",
        ),
        pytest.param(
            {"s3Bucket": TRAIL_BUCKET, "s3ObjectKey": []},
            "CloudTrail notification s3ObjectKey is an empty list; expected a non-empty list",
            id="empty-key-list",
        ),
        pytest.param(
            {"s3Bucket": TRAIL_BUCKET, "s3ObjectKey": [CLOUDTRAIL_KEY, 42]},
            "CloudTrail notification s3ObjectKey[1] is the JSON value 42; expected a non-empty string",
            id="key-not-a-string",
        ),
    ],
)
def test_cloudtrail_notification_without_bucket_or_keys_is_rejected(message, expected):
    reason = error_for(sns_envelope(json.dumps(message)))

    assert reason.startswith("the SNS Message: ")
    assert expected in reason


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda record: record["s3"]["object"].pop("key"),
            "Records[0].s3.object.key is missing (or null); expected a non-empty string",
            id="no-key",
        ),
        pytest.param(
            lambda record: record["s3"]["bucket"].pop("name"),
            "Records[0].s3.bucket.name is missing (or null); expected a non-empty string",
            id="no-bucket-name",
        ),
        pytest.param(
            lambda record: record.pop("s3"),
            "Records[0].s3 is missing (or null); expected an object",
            id="no-s3",
        ),
        pytest.param(
            lambda record: record.pop("eventName"),
            "Records[0].eventName is missing (or null); expected a non-empty string",
            id="no-event-name",
        ),
        pytest.param(
            lambda record: record.update(eventSource="aws:dynamodb"),
            "Records[0].eventSource is 'aws:dynamodb'; expected 'aws:s3'",
            id="not-from-s3",
        ),
        pytest.param(
            lambda record: record["s3"]["object"].update(key="logs/%FF%FE.log"),
            "Records[0].s3.object.key 'logs/%FF%FE.log' does not URL-decode to UTF-8 text",
            id="key-not-utf8-when-decoded",
        ),
    ],
)
def test_s3_event_record_that_is_incomplete_is_rejected(mutate, expected):
    record = s3_record("logs/a.log.gz")
    mutate(record)

    reason = error_for(s3_event(record))

    assert reason.startswith("the message body: ")
    assert expected in reason


def test_s3_event_with_no_records_is_rejected():
    assert "Records is an empty list; expected a non-empty list" in error_for(s3_event())


def test_s3_event_with_a_bad_record_is_rejected_whole_so_the_dead_letter_keeps_every_key():
    body = s3_event(s3_record("logs/good.log.gz"), {"eventSource": "aws:s3"})

    assert "Records[1].eventName is missing" in error_for(body)


def test_eventbridge_event_not_from_s3_is_rejected_as_misrouted():
    body = json.dumps(
        {
            "version": "0",
            "detail-type": "EC2 Instance State-change Notification",
            "source": "aws.ec2",
            "detail": {},
        }
    )

    reason = error_for(body)

    assert "EventBridge event from 'aws.ec2'" in reason
    assert "expected source 'aws.s3'" in reason


def test_eventbridge_object_created_without_key_is_rejected():
    event = json.loads(eventbridge_event("x"))
    del event["detail"]["object"]["key"]

    assert "detail.object.key is missing (or null); expected a non-empty string" in error_for(
        json.dumps(event)
    )


# --- the key filter -----------------------------------------------------------------------------


def test_default_filter_skips_cloudtrail_digest_files_and_keeps_log_and_insight_files():
    default = KeyFilter.from_options()

    assert default == KeyFilter()
    assert not default.accepts(DIGEST_KEY)
    assert not default.accepts(ORG_DIGEST_KEY)
    assert default.accepts(CLOUDTRAIL_KEY)
    assert default.accepts(INSIGHT_KEY)
    assert default.exclude is not None and default.exclude.pattern == DEFAULT_KEY_EXCLUDE


def test_split_reports_filtered_keys_so_the_caller_can_count_them():
    notification = parse_notification(
        sns_envelope(cloudtrail_message(CLOUDTRAIL_KEY, DIGEST_KEY, INSIGHT_KEY))
    )

    kept, filtered = KeyFilter().split(notification.objects)

    assert [obj.key for obj in kept] == [CLOUDTRAIL_KEY, INSIGHT_KEY]
    assert filtered == (S3Object(TRAIL_BUCKET, DIGEST_KEY),)


def test_include_keeps_only_matching_keys_and_exclude_still_applies():
    only_vpc = KeyFilter.from_options(include=r"^vpc/", exclude=r"\.tmp$")

    assert only_vpc.accepts("vpc/2024/05/14/flows.log.gz")
    assert not only_vpc.accepts("vpc/2024/05/14/flows.log.gz.tmp")
    assert not only_vpc.accepts("alb/2024/05/14/elb.log.gz")


def test_empty_exclude_pattern_reads_every_key():
    everything = KeyFilter.from_options(exclude="")

    assert everything == KeyFilter(include=None, exclude=None)
    assert everything.accepts(DIGEST_KEY)


def test_invalid_pattern_is_rejected_naming_the_option():
    with pytest.raises(
        KeyFilterError, match=r"^--s3_key_include: '\(unclosed' is not a valid regular expression"
    ):
        KeyFilter.from_options(include="(unclosed")
    with pytest.raises(ValueError, match=r"^--s3_key_exclude: "):
        KeyFilter.from_options(exclude="[a-")


def test_key_filter_survives_pickling_as_beam_does_with_dofn_state():
    restored = pickle.loads(pickle.dumps(KeyFilter.from_options(include="CloudTrail")))

    assert restored.accepts(CLOUDTRAIL_KEY)
    assert not restored.accepts(DIGEST_KEY)
    assert not restored.accepts("vpc/flows.log.gz")


def test_results_are_immutable_values():
    notification = parse_notification(cloudtrail_message(CLOUDTRAIL_KEY))

    with pytest.raises(dataclasses.FrozenInstanceError):
        notification.objects[0].key = "other"  # type: ignore[misc]
    assert hash(notification) == hash(parse_notification(cloudtrail_message(CLOUDTRAIL_KEY)))
