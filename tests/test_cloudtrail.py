"""CloudTrail: records to GELF messages (the plugin's fields and more), and streaming log files."""

from __future__ import annotations

import copy
import gzip
import io
import json
from decimal import Decimal

import pytest

from transforms.cloudtrail import (
    DEFAULT_SOURCE,
    CloudTrailFileError,
    CloudTrailRecordError,
    cloudtrail_fields,
    cloudtrail_gelf,
    event_timestamp,
    iter_records,
    short_message,
    user_name,
)
from transforms.gelf import encode_message

ACCOUNT = "111122223333"

CONSOLE_LOGIN = {
    "eventVersion": "1.09",
    "userIdentity": {
        "type": "IAMUser",
        "principalId": "AIDACKCEVSQ6C2EXAMPLE",
        "arn": f"arn:aws:iam::{ACCOUNT}:user/some.user",
        "accountId": ACCOUNT,
        "userName": "some.user",
    },
    "eventTime": "2026-11-27T08:00:00Z",
    "eventSource": "signin.amazonaws.com",
    "eventName": "ConsoleLogin",
    "awsRegion": "us-east-1",
    "sourceIPAddress": "198.51.100.7",
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "requestParameters": None,
    "responseElements": {"ConsoleLogin": "Success"},
    "additionalEventData": {
        "LoginTo": "https://console.aws.amazon.com/console/home",
        "MobileVersion": "No",
        "MFAIdentifier": f"arn:aws:iam::{ACCOUNT}:mfa/some.user",
        "MFAUsed": "Yes",
    },
    "eventID": "3fcfb586-2c89-4b2e-8d8e-0f4d2f1e9a51",
    "readOnly": False,
    "eventType": "AwsConsoleSignIn",
    "managementEvent": True,
    "recipientAccountId": ACCOUNT,
    "eventCategory": "Management",
    "tlsDetails": {
        "tlsVersion": "TLSv1.3",
        "cipherSuite": "TLS_AES_128_GCM_SHA256",
        "clientProvidedHostHeader": "signin.aws.amazon.com",
    },
}

ASSUMED_ROLE_CALL = {
    "eventVersion": "1.10",
    "userIdentity": {
        "type": "AssumedRole",
        "principalId": "AROA3EXAMPLEROLEID:deploy-session",
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/Deployer/deploy-session",
        "accountId": ACCOUNT,
        "accessKeyId": "ASIA3EXAMPLEKEYID",
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": "AROA3EXAMPLEROLEID",
                "arn": f"arn:aws:iam::{ACCOUNT}:role/Deployer",
                "accountId": ACCOUNT,
                "userName": "Deployer",
            },
            "attributes": {"creationDate": "2026-11-27T07:45:12Z", "mfaAuthenticated": "true"},
        },
    },
    "eventTime": "2026-11-27T08:00:01Z",
    "eventSource": "ec2.amazonaws.com",
    "eventName": "DescribeInstances",
    "awsRegion": "eu-west-1",
    "sourceIPAddress": "203.0.113.24",
    "userAgent": "aws-cli/2.22.4 md/awscrt#0.23.4 ua/2.0 os/linux#6.8.0 md/arch#x86_64 lang/python#3.12.6",
    "requestParameters": {
        "instancesSet": {"items": [{"instanceId": "i-0abcd1234ef567890"}]},
        "filterSet": {},
        "maxResults": 100,
    },
    "responseElements": None,
    "requestID": "c8f1f0a4-4d5e-4d8b-9a6c-2b7e4f1d3c21",
    "eventID": "a7d4c0e6-0b1f-4c5e-9f1e-6d2b3a4c5d6e",
    "readOnly": True,
    "eventType": "AwsApiCall",
    "managementEvent": True,
    "recipientAccountId": ACCOUNT,
    "vpcEndpointId": "vpce-0f1e2d3c4b5a69788",
    "vpcEndpointAccountId": ACCOUNT,
    "eventCategory": "Management",
    "tlsDetails": {
        "tlsVersion": "TLSv1.3",
        "cipherSuite": "TLS_AES_128_GCM_SHA256",
        "clientProvidedHostHeader": "ec2.eu-west-1.amazonaws.com",
    },
}

AWS_SERVICE_EVENT = {
    "eventVersion": "1.08",
    "userIdentity": {"type": "AWSService", "invokedBy": "ec2.amazonaws.com"},
    "eventTime": "2026-11-27T08:00:02Z",
    "eventSource": "sts.amazonaws.com",
    "eventName": "AssumeRole",
    "awsRegion": "us-east-1",
    "sourceIPAddress": "ec2.amazonaws.com",
    "userAgent": "ec2.amazonaws.com",
    "requestParameters": {
        "roleArn": f"arn:aws:iam::{ACCOUNT}:role/web-instance",
        "roleSessionName": "i-0abcd1234ef567890",
    },
    "responseElements": {
        "credentials": {
            "accessKeyId": "ASIA3EXAMPLEKEYID2",
            "sessionToken": "IQoJb3JpZ2luX2VjEXAMPLE",
            "expiration": "Nov 27, 2026, 2:00:02 PM",
        }
    },
    "requestID": "0b7c1f7e-8f6a-4c1d-9d2e-3f4a5b6c7d8e",
    "eventID": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
    "readOnly": True,
    "resources": [
        {
            "accountId": ACCOUNT,
            "type": "AWS::IAM::Role",
            "ARN": f"arn:aws:iam::{ACCOUNT}:role/web-instance",
        }
    ],
    "eventType": "AwsApiCall",
    "managementEvent": True,
    "recipientAccountId": ACCOUNT,
    "sharedEventID": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "eventCategory": "Management",
}

FAILED_CALL = {
    "eventVersion": "1.09",
    "userIdentity": {
        "type": "IAMUser",
        "principalId": "AIDACKCEVSQ6C2EXAMPLE",
        "arn": f"arn:aws:iam::{ACCOUNT}:user/some.user",
        "accountId": ACCOUNT,
        "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
        "userName": "some.user",
    },
    "eventTime": "2026-11-27T08:00:03Z",
    "eventSource": "s3.amazonaws.com",
    "eventName": "DeleteBucket",
    "awsRegion": "us-east-1",
    "sourceIPAddress": "198.51.100.7",
    "userAgent": "[aws-cli/2.22.4]",
    "errorCode": "AccessDenied",
    "errorMessage": (
        f"User: arn:aws:iam::{ACCOUNT}:user/some.user is not authorized to perform: s3:DeleteBucket"
        ' on resource: "arn:aws:s3:::audit-logs" because no identity-based policy allows it'
    ),
    "requestParameters": {"bucketName": "audit-logs", "Host": "audit-logs.s3.amazonaws.com"},
    "responseElements": None,
    "additionalEventData": {"SignatureVersion": "SigV4", "bytesTransferredIn": 0, "x-amz-id-2": "EXAMPLE="},
    "requestID": "9XKQ2C1EXAMPLE",
    "eventID": "e1d2c3b4-a5f6-4e7d-8c9b-0a1b2c3d4e5f",
    "readOnly": False,
    "resources": [{"type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::audit-logs"}],
    "eventType": "AwsApiCall",
    "managementEvent": True,
    "recipientAccountId": ACCOUNT,
    "eventCategory": "Management",
}

# The shape that made the plugin fail the whole file (its model bound `status` as a string).
STATUS_OBJECT = {
    "eventVersion": "1.09",
    "userIdentity": copy.deepcopy(ASSUMED_ROLE_CALL["userIdentity"]),
    "eventTime": "2026-11-27T08:00:04Z",
    "eventSource": "ec2.amazonaws.com",
    "eventName": "CreateVpcPeeringConnection",
    "awsRegion": "eu-west-1",
    "sourceIPAddress": "203.0.113.24",
    "userAgent": "Boto3/1.35.80 md/Botocore#1.35.80 ua/2.0 os/linux#6.8.0 lang/python#3.12.6",
    "requestParameters": {"vpcId": "vpc-0a1b2c3d", "peerVpcId": "vpc-4e5f6a7b"},
    "responseElements": {
        "requestId": "c8f1f0a4-0000-4d8b-9a6c-2b7e4f1d3c21",
        "status": {"code": "initiating-request", "message": "Initiating Request to 111122223333"},
        "vpcPeeringConnectionId": "pcx-0f1e2d3c4b5a69788",
    },
    "requestID": "c8f1f0a4-0000-4d8b-9a6c-2b7e4f1d3c21",
    "eventID": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
    "readOnly": False,
    "eventType": "AwsApiCall",
    "managementEvent": True,
    "recipientAccountId": ACCOUNT,
    "eventCategory": "Management",
}

WITHOUT_USER_IDENTITY = {
    "eventVersion": "1.08",
    "eventTime": "2026-11-27T08:00:05Z",
    "eventSource": "kms.amazonaws.com",
    "eventName": "RotateKey",
    "awsRegion": "us-east-1",
    "sourceIPAddress": "kms.amazonaws.com",
    "requestParameters": None,
    "responseElements": None,
    "eventID": "6a5b4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d",
    "readOnly": False,
    "resources": [
        {"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1"}
    ],
    "eventType": "AwsServiceEvent",
    "managementEvent": True,
    "recipientAccountId": ACCOUNT,
    "serviceEventDetails": {"keyId": "1234abcd-12ab-34cd-56ef-1234567890ab"},
    "eventCategory": "Management",
}

ALL_RECORDS = [
    CONSOLE_LOGIN,
    ASSUMED_ROLE_CALL,
    AWS_SERVICE_EVENT,
    FAILED_CALL,
    STATUS_OBJECT,
    WITHOUT_USER_IDENTITY,
]

#: The GELF fields the Graylog plugin (with its 2025/26 rework) wrote, under the same names.
PLUGIN_FIELDS = {
    "event_source",
    "event_name",
    "aws_region",
    "source_address",
    "user_agent",
    "request_id",
    "event_id",
    "event_type",
    "recipient_account_id",
    "user_type",
    "user_name",
    "user_principal_id",
    "user_principal_arn",
    "user_account_id",
    "user_access_key_id",
    "user_session_creation_date",
    "user_session_mfa_authenticated",
    "session_issuer_user_type",
    "session_issuer_user_principal_id",
    "session_issuer_user_principal_arn",
    "session_issuer_user_account_id",
    "aws_source",
}


def additional(message: dict) -> dict:
    """The additional fields as Graylog stores them (one leading underscore removed)."""
    return {k[1:]: v for k, v in message.items() if k.startswith("_")}


def with_changes(record: dict, **changes: object) -> dict:
    """A deep copy of `record` with top-level keys replaced; a value of `...` removes the key."""
    changed = copy.deepcopy(record)
    for key, value in changes.items():
        if value is ...:
            changed.pop(key, None)
        else:
            changed[key] = value
    return changed


def log_file(records: list, compress: bool = True) -> bytes:
    data = json.dumps({"Records": records}).encode("utf-8")
    return gzip.compress(data) if compress else data


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


def test_console_login_by_iam_user_has_the_plugins_fields_and_summary_line():
    message = cloudtrail_gelf(CONSOLE_LOGIN)

    assert (
        message["short_message"]
        == "signin.amazonaws.com:ConsoleLogin in us-east-1 by 198.51.100.7 / some.user"
    )
    assert message["host"] == "aws-cloudtrail"
    assert message["timestamp"] == 1795766400.0  # 2026-11-27T08:00:00Z
    fields = additional(message)
    assert fields == {
        "event_source": "signin.amazonaws.com",
        "event_name": "ConsoleLogin",
        "aws_region": "us-east-1",
        "source_address": "198.51.100.7",
        "user_agent": CONSOLE_LOGIN["userAgent"],
        "event_id": "3fcfb586-2c89-4b2e-8d8e-0f4d2f1e9a51",
        "event_type": "AwsConsoleSignIn",
        "recipient_account_id": ACCOUNT,
        "event_version": "1.09",
        "event_category": "Management",
        "read_only": "false",
        "management_event": "true",
        "response_elements": '{"ConsoleLogin":"Success"}',
        "console_login": "Success",
        "additional_event_data": json.dumps(CONSOLE_LOGIN["additionalEventData"], separators=(",", ":")),
        "tls_details": (
            '{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256",'
            '"clientProvidedHostHeader":"signin.aws.amazon.com"}'
        ),
        "user_type": "IAMUser",
        "user_name": "some.user",
        "user_principal_id": "AIDACKCEVSQ6C2EXAMPLE",
        "user_principal_arn": f"arn:aws:iam::{ACCOUNT}:user/some.user",
        "user_account_id": ACCOUNT,
        "aws_source": "true",
    }


def test_assumed_role_gets_session_and_issuer_fields_and_the_roles_name_as_user_name():
    fields = additional(cloudtrail_gelf(ASSUMED_ROLE_CALL))

    assert fields["user_type"] == "AssumedRole"
    assert fields["user_name"] == "Deployer"  # userIdentity has no userName: the session issuer's
    assert fields["user_principal_id"] == "AROA3EXAMPLEROLEID:deploy-session"
    assert fields["user_principal_arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/Deployer/deploy-session"
    assert fields["user_access_key_id"] == "ASIA3EXAMPLEKEYID"
    assert fields["user_session_creation_date"] == "2026-11-27T07:45:12Z"
    assert fields["user_session_mfa_authenticated"] == "true"
    assert fields["session_issuer_user_type"] == "Role"
    assert fields["session_issuer_user_name"] == "Deployer"
    assert fields["session_issuer_user_principal_id"] == "AROA3EXAMPLEROLEID"
    assert fields["session_issuer_user_principal_arn"] == f"arn:aws:iam::{ACCOUNT}:role/Deployer"
    assert fields["session_issuer_user_account_id"] == ACCOUNT
    assert fields["request_id"] == "c8f1f0a4-4d5e-4d8b-9a6c-2b7e4f1d3c21"
    assert fields["vpc_endpoint_id"] == "vpce-0f1e2d3c4b5a69788"
    assert fields["vpc_endpoint_account_id"] == ACCOUNT
    assert fields["read_only"] == "true"
    assert fields["request_parameters"] == (
        '{"instancesSet":{"items":[{"instanceId":"i-0abcd1234ef567890"}]},"filterSet":{},"maxResults":100}'
    )
    assert "response_elements" not in fields  # null
    assert set(PLUGIN_FIELDS) <= set(fields)


def test_the_users_own_name_wins_over_the_session_issuers():
    record = copy.deepcopy(ASSUMED_ROLE_CALL)
    record["userIdentity"]["userName"] = "jane"

    assert user_name(record) == "jane"
    fields = cloudtrail_fields(record)
    assert (fields["user_name"], fields["session_issuer_user_name"]) == ("jane", "Deployer")


def test_aws_service_event_without_user_name_is_by_unknown_user():
    message = cloudtrail_gelf(AWS_SERVICE_EVENT)

    assert message["short_message"] == (
        "sts.amazonaws.com:AssumeRole in us-east-1 by ec2.amazonaws.com / <unknown user_name>"
    )
    fields = additional(message)
    assert "user_name" not in fields
    assert fields["user_type"] == "AWSService"
    assert fields["user_invoked_by"] == "ec2.amazonaws.com"
    assert fields["shared_event_id"] == "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    assert json.loads(fields["resources"]) == AWS_SERVICE_EVENT["resources"]
    assert json.loads(fields["response_elements"]) == AWS_SERVICE_EVENT["responseElements"]


def test_failed_call_keeps_error_code_and_error_message():
    fields = additional(cloudtrail_gelf(FAILED_CALL))

    assert fields["error_code"] == "AccessDenied"
    assert fields["error_message"] == FAILED_CALL["errorMessage"]
    assert fields["user_access_key_id"] == "AKIAIOSFODNN7EXAMPLE"
    assert (
        fields["additional_event_data"]
        == '{"SignatureVersion":"SigV4","bytesTransferredIn":0,"x-amz-id-2":"EXAMPLE="}'
    )
    assert "errorMessage" not in fields  # the plugin's camelCase name is not sent


def test_response_elements_status_as_an_object_is_json_text_not_a_failure():
    fields = additional(cloudtrail_gelf(STATUS_OBJECT))

    assert json.loads(fields["response_elements"]) == STATUS_OBJECT["responseElements"]
    assert '"status":{"code":"initiating-request"' in fields["response_elements"]
    assert "{code=" not in fields["response_elements"]  # never Java map text


def test_record_without_user_identity_still_becomes_a_message():
    message = cloudtrail_gelf(WITHOUT_USER_IDENTITY)

    assert message["short_message"] == (
        "kms.amazonaws.com:RotateKey in us-east-1 by kms.amazonaws.com / <unknown user_name>"
    )
    fields = additional(message)
    assert not [name for name in fields if name.startswith(("user_", "session_issuer_"))]
    assert fields["event_type"] == "AwsServiceEvent"
    assert fields["service_event_details"] == '{"keyId":"1234abcd-12ab-34cd-56ef-1234567890ab"}'


@pytest.mark.parametrize(
    "user_identity",
    [None, "AssumedRole", [], {"sessionContext": None}, {"sessionContext": {"sessionIssuer": "x"}}],
    ids=["null", "string", "array", "null-session", "odd-issuer"],
)
def test_odd_user_identity_loses_only_its_own_fields(user_identity):
    message = cloudtrail_gelf(with_changes(CONSOLE_LOGIN, userIdentity=user_identity))

    assert message["short_message"].endswith(" / <unknown user_name>")
    assert additional(message)["event_name"] == "ConsoleLogin"


def test_full_message_is_the_whole_record_as_compact_json_unknown_keys_too():
    record = with_changes(ASSUMED_ROLE_CALL, addendum={"reason": "DELIVERY_DELAY"}, someFutureKey=[1, 2.5])

    full_message = cloudtrail_gelf(record)["full_message"]

    assert json.loads(full_message) == record
    assert ": " not in full_message and ", " not in full_message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ({}, None),
        ([], None),
        ({"bucketName": "b", "key": "a b.pdf"}, '{"bucketName":"b","key":"a b.pdf"}'),
        ({"nested": {"list": [1, None, True]}}, '{"nested":{"list":[1,null,true]}}'),
        (["a", {"b": 1}], '["a",{"b":1}]'),
        ("plain text", '"plain text"'),
        (True, "true"),
        ({"name": "Zürich ✓"}, '{"name":"Zürich ✓"}'),
    ],
    ids=["null", "empty-object", "empty-array", "object", "nested", "array", "string", "boolean", "unicode"],
)
def test_nested_parts_of_any_json_type_become_compact_json_text(value, expected):
    fields = cloudtrail_fields(with_changes(FAILED_CALL, requestParameters=value))

    assert fields.get("request_parameters") == expected


def test_absent_null_and_empty_values_are_left_out():
    record = with_changes(
        CONSOLE_LOGIN,
        userAgent="",
        eventType=None,
        awsRegion=...,
        errorCode=None,
        userIdentity={"type": "IAMUser", "userName": None, "accountId": ""},
    )

    fields = cloudtrail_fields(record)

    assert not {"user_agent", "event_type", "aws_region", "error_code", "user_name", "user_account_id"} & set(
        fields
    )
    assert fields["user_type"] == "IAMUser"


def test_an_unexpected_object_in_a_scalar_field_is_json_text():
    fields = cloudtrail_fields(with_changes(FAILED_CALL, errorMessage={"text": "denied"}, readOnly="false"))

    assert fields["error_message"] == '{"text":"denied"}'
    assert fields["read_only"] == "false"


@pytest.mark.parametrize(
    ("mfa", "expected"),
    [
        ("true", "true"),
        ("false", "false"),
        ("TRUE", "true"),
        (True, "true"),
        (False, "false"),
        ("yes", "false"),
    ],
)
def test_mfa_authenticated_is_a_true_or_false_string(mfa, expected):
    record = copy.deepcopy(ASSUMED_ROLE_CALL)
    record["userIdentity"]["sessionContext"]["attributes"]["mfaAuthenticated"] = mfa

    assert cloudtrail_fields(record)["user_session_mfa_authenticated"] == expected


def test_mfa_and_creation_date_absent_without_session_attributes():
    record = copy.deepcopy(ASSUMED_ROLE_CALL)
    del record["userIdentity"]["sessionContext"]["attributes"]

    fields = cloudtrail_fields(record)

    assert "user_session_mfa_authenticated" not in fields
    assert "user_session_creation_date" not in fields
    assert fields["session_issuer_user_name"] == "Deployer"


def test_short_message_writes_a_dash_for_other_missing_parts():
    record = with_changes(CONSOLE_LOGIN, awsRegion=..., sourceIPAddress=None)

    assert short_message(record) == "signin.amazonaws.com:ConsoleLogin in - by - / some.user"


def test_host_defaults_to_aws_cloudtrail_and_can_be_overridden():
    assert DEFAULT_SOURCE == "aws-cloudtrail"
    assert cloudtrail_gelf(CONSOLE_LOGIN, source=None)["host"] == "aws-cloudtrail"
    assert cloudtrail_gelf(CONSOLE_LOGIN, source="cloudtrail-prod")["host"] == "cloudtrail-prod"


def test_extra_fields_are_added_and_win_on_a_clash():
    extra = {"aws_s3_bucket": "trail-bucket", "aws_s3_key": "AWSLogs/x.json.gz", "aws_source": "s3"}

    fields = additional(cloudtrail_gelf(CONSOLE_LOGIN, extra_fields=extra))

    assert (fields["aws_s3_bucket"], fields["aws_s3_key"], fields["aws_source"]) == (
        "trail-bucket",
        "AWSLogs/x.json.gz",
        "s3",
    )


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        ("2026-11-27T08:00:00Z", 1795766400.0),
        ("2026-11-27T09:00:00+01:00", 1795766400.0),
        ("2026-11-27T08:00:00.250Z", 1795766400.25),
        ("2026-11-27T08:00:00", 1795766400.0),  # no offset: UTC, as CloudTrail writes
    ],
)
def test_event_time_becomes_epoch_seconds(event_time, expected):
    record = with_changes(CONSOLE_LOGIN, eventTime=event_time)

    assert event_timestamp(record) == expected
    assert cloudtrail_gelf(record)["timestamp"] == expected


@pytest.mark.parametrize(
    ("event_time", "reason"),
    [
        (..., "eventTime is missing"),
        (None, "eventTime is missing"),
        ("yesterday", "eventTime 'yesterday' is not an ISO-8601 time"),
        (1795766400, "eventTime is a number, not an ISO-8601 time string"),
    ],
)
def test_record_without_usable_event_time_is_refused_with_the_reason(event_time, reason):
    with pytest.raises(CloudTrailRecordError, match=f"^{reason}$"):
        cloudtrail_gelf(with_changes(CONSOLE_LOGIN, eventTime=event_time))


@pytest.mark.parametrize(
    ("record", "kind"),
    [([CONSOLE_LOGIN], "an array"), ("text", "a string"), (5, "a number"), (None, "null")],
)
def test_record_that_is_not_a_json_object_is_refused(record, kind):
    with pytest.raises(CloudTrailRecordError, match=f"^record is {kind}, not a JSON object$"):
        cloudtrail_gelf(record)


def test_record_errors_are_value_errors_for_the_dead_letter_path():
    assert issubclass(CloudTrailRecordError, ValueError)
    assert issubclass(CloudTrailFileError, ValueError)


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_log_file_records_come_out_in_order(compress):
    records = list(iter_records(io.BytesIO(log_file(ALL_RECORDS, compress))))

    assert records == ALL_RECORDS


def test_numbers_come_out_as_int_and_float_and_messages_encode():
    record = with_changes(FAILED_CALL, additionalEventData={"bytesTransferredIn": 42, "ratio": 0.5})

    (parsed,) = iter_records(io.BytesIO(log_file([record])))

    numbers = parsed["additionalEventData"]
    assert (type(numbers["bytesTransferredIn"]), type(numbers["ratio"])) == (int, float)
    assert not isinstance(numbers["ratio"], Decimal)
    payload = json.loads(encode_message(cloudtrail_gelf(parsed)))
    assert payload["_additional_event_data"] == '{"bytesTransferredIn":42,"ratio":0.5}'


def test_empty_records_array_is_a_valid_empty_log_file():
    assert list(iter_records(io.BytesIO(log_file([])))) == []


def test_non_object_records_come_out_for_the_record_step_to_refuse():
    records = list(iter_records(io.BytesIO(log_file([CONSOLE_LOGIN, "oops", 7]))))

    assert records == [CONSOLE_LOGIN, "oops", 7]
    with pytest.raises(CloudTrailRecordError):
        cloudtrail_gelf(records[1])


def test_digest_file_is_refused_as_a_digest():
    digest = {
        "awsAccountId": ACCOUNT,
        "digestStartTime": "2026-11-27T07:00:00Z",
        "digestEndTime": "2026-11-27T08:00:00Z",
        "digestS3Bucket": "trail-bucket",
        "digestS3Object": f"AWSLogs/{ACCOUNT}/CloudTrail-Digest/us-east-1/2026/11/27/x.json.gz",
        "digestPublicKeyFingerprint": "0123456789abcdef0123456789abcdef",
        "digestSignatureAlgorithm": "SHA256withRSA",
        "newestEventTime": "2026-11-27T07:59:58Z",
        "oldestEventTime": "2026-11-27T07:00:01Z",
        "previousDigestS3Bucket": "trail-bucket",
        "previousDigestS3Object": None,
        "previousDigestHashValue": None,
        "previousDigestHashAlgorithm": None,
        "previousDigestSignature": None,
        "logFiles": [
            {
                "s3Bucket": "trail-bucket",
                "s3Object": f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/2026/11/27/y.json.gz",
                "hashValue": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "hashAlgorithm": "SHA-256",
                "newestEventTime": "2026-11-27T07:59:58Z",
                "oldestEventTime": "2026-11-27T07:00:01Z",
            }
        ],
    }
    data = gzip.compress(json.dumps(digest).encode())

    with pytest.raises(CloudTrailFileError, match="CloudTrail-Digest file, not a log file"):
        list(iter_records(io.BytesIO(data)))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"this is not json\n", "not valid JSON"),
        (b"<?xml version='1.0'?><Error/>", "not valid JSON"),
        (b'{"Records": {"a": 1}', "not valid JSON"),
        (b'{"Records": "none"}', "Records is a string, not an array"),
        (b"[]", "the JSON is an array, not an object with a Records array"),
        (b'{"configurationItems": []}', r"no Records array \(top-level keys: configurationItems\)"),
        (b'{"Records": [{"eventTime": "2026-11-27T08:00:00Z"}]} trailing', "not valid JSON"),
        (b'{"Records": [{"a": "\xff"}]}', "not valid JSON"),
    ],
    ids=[
        "empty",
        "text",
        "xml",
        "unclosed",
        "records-string",
        "array",
        "other-object",
        "trailing",
        "bad-utf8",
    ],
)
def test_file_that_is_not_a_log_file_is_refused_with_the_reason(content, reason):
    for data in (content, gzip.compress(content)):
        with pytest.raises(CloudTrailFileError, match=reason):
            list(iter_records(io.BytesIO(data)))


def test_truncated_gzip_yields_the_records_before_the_cut_then_fails():
    records = [
        with_changes(CONSOLE_LOGIN, eventID=f"id-{i:06d}", sourceIPAddress=f"10.0.{i // 256}.{i % 256}")
        for i in range(3000)
    ]
    data = log_file(records)
    got = []

    with pytest.raises(CloudTrailFileError, match=r"truncated gzip data \(after \d+ records\)") as error:
        for record in iter_records(io.BytesIO(data[: len(data) // 2])):
            got.append(record)

    assert 0 < len(got) < len(records)
    assert got == records[: len(got)]
    assert f"after {len(got)} records" in str(error.value)


def test_corrupt_gzip_is_refused():
    data = bytearray(log_file(ALL_RECORDS))
    data[-8] ^= 0xFF  # the CRC-32 of the content
    with pytest.raises(CloudTrailFileError, match="corrupt gzip data .*CRC check failed"):
        list(iter_records(io.BytesIO(bytes(data))))


class TrickleStream:
    """A read-only, non-seekable stream that returns at most 3 bytes per read, like a slow socket."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self._data = io.BytesIO(data)
        self._fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self._fail_after is not None and self._data.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer")
        return self._data.read(min(size, 3) if size and size > 0 else 3)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_reads_a_non_seekable_stream_with_short_reads(compress):
    assert list(iter_records(TrickleStream(log_file(ALL_RECORDS, compress)))) == ALL_RECORDS


def test_errors_reading_the_stream_pass_through_for_a_retry():
    with pytest.raises(ConnectionResetError):
        list(iter_records(TrickleStream(log_file(ALL_RECORDS), fail_after=100)))


def test_large_gzip_file_on_disk_is_read_record_by_record(tmp_path):
    count = 20_000
    path = tmp_path / "111122223333_CloudTrail_us-east-1_20261127T0800Z_large.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write('{"Records":[')
        for i in range(count):
            record = with_changes(
                ASSUMED_ROLE_CALL,
                eventID=f"event-{i:08d}",
                requestID=f"{i * 7919:016x}",
                sourceIPAddress=f"10.{i % 200}.{i // 200 % 250}.9",
            )
            out.write(("," if i else "") + json.dumps(record))
        out.write("]}")
    size = path.stat().st_size

    with path.open("rb") as file:
        records = iter_records(file)
        first = next(records)
        # Streaming: one record out, only the start of the file read.
        assert file.tell() < size // 4
        assert first["eventID"] == "event-00000000"
        seen = 1
        last = first
        for record in records:
            seen += 1
            last = record

    assert seen == count
    assert last["eventID"] == f"event-{count - 1:08d}"
    assert cloudtrail_gelf(last)["short_message"] == (
        f"ec2.amazonaws.com:DescribeInstances in eu-west-1 by {last['sourceIPAddress']} / Deployer"
    )
