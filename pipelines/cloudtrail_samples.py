"""Synthetic but realistic CloudTrail log files, and ways to store and announce them like AWS does.

Used by the demo, the end-to-end tests and the benchmarks of the CloudTrail pipeline. The records
have the shapes that make a parser's life hard in real logs: assumed roles that name their user only
through the session issuer, AWS services without an ARN, records with `errorCode` and null
`responseElements`, nested request parameters, numbers, and now and then no `userIdentity` at all.
The files go to S3 under the keys CloudTrail uses and are announced the ways AWS announces them:
CloudTrail's own SNS message (raw or in the SNS envelope), S3 event notifications, EventBridge.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import json
import os
import random
import string
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"

#: What CloudTrail publishes once to a topic it is given, to check that it may publish there.
VALIDATION_MESSAGE = "CloudTrail validation message."

#: gzip level of the files: what Java's GZIPOutputStream and most tools use. Level 9 costs about
#: twice the time for 1-2 % smaller files.
COMPRESS_LEVEL = 6

_UPPER_DIGITS = string.ascii_uppercase + string.digits
_ALPHANUMERIC = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"
_POLICY_VERSION = "2012-10-17"

#: Record keys in the order CloudTrail writes them.
_KEY_ORDER = (
    "eventVersion",
    "userIdentity",
    "eventTime",
    "eventSource",
    "eventName",
    "awsRegion",
    "sourceIPAddress",
    "userAgent",
    "errorCode",
    "errorMessage",
    "requestParameters",
    "responseElements",
    "additionalEventData",
    "requestID",
    "eventID",
    "readOnly",
    "resources",
    "eventType",
    "managementEvent",
    "recipientAccountId",
    "sharedEventID",
    "vpcEndpointId",
    "vpcEndpointAccountId",
    "eventCategory",
    "tlsDetails",
    "sessionCredentialFromConsole",
)


# --------------------------------------------------------------------------------------------------------
# Small formatting helpers
# --------------------------------------------------------------------------------------------------------


def iso_time(when: float) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ` in UTC, the only time format CloudTrail writes in `eventTime`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _uuid(bits: int) -> str:
    """A version 4 UUID text from 128 random bits (faster than uuid.UUID, which the bulk writer feels)."""
    bits = (bits & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _code(rng: random.Random, length: int, alphabet: str = _UPPER_DIGITS) -> str:
    return "".join(rng.choices(alphabet, k=length))


def _hex(rng: random.Random, length: int) -> str:
    return f"{rng.getrandbits(4 * length):0{length}x}"


def _java_date(when: float) -> str:
    """The `Jan 12, 2026, 5:01:44 PM` format STS writes for credential expirations."""
    t = time.gmtime(when)
    hour = t.tm_hour % 12 or 12
    return f"{time.strftime('%b', t)} {t.tm_mday}, {t.tm_year}, {hour}:{t.tm_min:02d}:{t.tm_sec:02d} " + (
        "PM" if t.tm_hour >= 12 else "AM"
    )


def log_file_suffix(rng: random.Random) -> str:
    """The 16-character random part CloudTrail puts at the end of each log file name."""
    return _code(rng, 16, _ALPHANUMERIC)


# --------------------------------------------------------------------------------------------------------
# Who calls: IAM users, assumed roles, the root user
# --------------------------------------------------------------------------------------------------------

_BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
_FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
_CLI = (
    "aws-cli/2.22.{v} md/awscrt#0.22.0 ua/2.0 os/linux#6.8.0-49-generic md/arch#x86_64 lang/python#3.12.6 "
    "md/pyimpl#CPython cfg/retry-mode#standard md/installer#exe md/distrib#ubuntu.24 md/prompt#off "
    "md/command#{command}"
)
_BOTO3 = (
    "Boto3/1.35.{v} md/Botocore#1.35.{v} ua/2.0 os/linux#5.10.227-239.884.amzn2.x86_64 md/arch#x86_64 "
    "lang/python#3.12.7 md/pyimpl#CPython exec-env/AWS_Lambda_python3.12 cfg/retry-mode#legacy "
    "Botocore/1.35.{v}"
)
_TERRAFORM = (
    "APN/1.0 HashiCorp/1.0 Terraform/1.9.{v} (+https://www.terraform.io) terraform-provider-aws/5.7{v}.0 "
    "(+https://registry.terraform.io/providers/hashicorp/aws) aws-sdk-go-v2/1.32.{v} ua/2.1 os/linux "
    "lang/go#1.23.2 "
    "md/GOOS#linux md/GOARCH#amd64 api/{service}#1.18{v}.0"
)
_GO_SDK = "aws-sdk-go/1.55.{v} (go1.22.8; linux; amd64)"
_CONSOLE = "AWS Internal"
_S3_CONSOLE = "[S3Console/0.4, aws-internal/3 aws-sdk-java/1.12.779 Linux/5.10.228 OpenJDK_64-Bit_Server_VM]"


@dataclass(frozen=True)
class _Actor:
    """One principal of the fake account, with where it calls from and what it usually does."""

    kind: str  # IAMUser, AssumedRole or Root
    name: str  # user name, or role name for an assumed role
    principal_id: str
    session: str = ""
    path: str = "/"
    addresses: tuple[str, ...] = ()
    agent: str = _CLI
    operations: tuple[str, ...] = ()
    console: bool = False
    mfa: bool = False
    vpc_endpoint: str | None = None
    weight: float = 1.0


def _public_ip(rng: random.Random) -> str:
    first = rng.choice((198, 203, 81, 92, 176, 212))
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _aws_ip(rng: random.Random) -> str:
    first = rng.choice((3, 18, 34, 44, 52, 54))
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _actors(rng: random.Random) -> list[_Actor]:
    """A small cast that calls again and again, as in a real account (not a new user per event)."""
    office = tuple(_public_ip(rng) for _ in range(2))
    admin_apis = (
        "DescribeInstances",
        "DescribeSecurityGroups",
        "ListBuckets",
        "ListUsers",
        "GetCallerIdentity",
    )
    deploy_apis = ("RunInstances", "CreateBucket", "PutObject", "AttachRolePolicy", "DescribeInstances")
    sso_role = f"AWSReservedSSO_AdministratorAccess_{_hex(rng, 16)}"
    node = f"i-{_hex(rng, 17)}"
    return [
        _Actor(
            "IAMUser",
            "alice",
            "AIDA" + _code(rng, 17),
            addresses=office,
            agent=_CLI,
            operations=admin_apis + ("CreateBucket", "RunInstances"),
            mfa=True,
            weight=6,
        ),
        _Actor(
            "IAMUser",
            "bob",
            "AIDA" + _code(rng, 17),
            addresses=(_public_ip(rng),),
            agent=_CLI,
            operations=admin_apis + ("GetObject", "AttachRolePolicy"),
            weight=4,
        ),
        _Actor(
            "IAMUser",
            "ci-deployer",
            "AIDA" + _code(rng, 17),
            addresses=(_aws_ip(rng),),
            agent=_BOTO3,
            operations=deploy_apis + ("GetParameter",),
            weight=5,
        ),
        _Actor(
            "IAMUser",
            "terraform",
            "AIDA" + _code(rng, 17),
            addresses=office,
            agent=_TERRAFORM,
            operations=deploy_apis + ("DescribeSecurityGroups",),
            weight=4,
        ),
        _Actor(
            "AssumedRole",
            sso_role,
            "AROA" + _code(rng, 17),
            session="carol@example.com",
            path="/aws-reserved/sso.amazonaws.com/",
            addresses=office,
            agent=_CONSOLE,
            operations=admin_apis + ("RunInstances", "CreateBucket", "AttachRolePolicy"),
            console=True,
            mfa=True,
            weight=9,
        ),
        _Actor(
            "AssumedRole",
            "GitHubActionsDeploy",
            "AROA" + _code(rng, 17),
            session="GitHubActions",
            addresses=tuple(_aws_ip(rng) for _ in range(3)),
            agent=_TERRAFORM,
            operations=deploy_apis,
            weight=8,
        ),
        _Actor(
            "AssumedRole",
            "orders-api-lambda",
            "AROA" + _code(rng, 17),
            session="orders-api",
            path="/service-role/",
            addresses=tuple(_aws_ip(rng) for _ in range(4)),
            agent=_BOTO3,
            operations=("PutObject", "GetObject", "GetObject", "Decrypt", "GetParameter", "CreateLogStream"),
            weight=16,
        ),
        _Actor(
            "AssumedRole",
            "eks-node-group",
            "AROA" + _code(rng, 17),
            session=node,
            addresses=(f"10.0.{rng.randint(0, 3)}.{rng.randint(4, 250)}",),
            agent=_GO_SDK,
            operations=("DescribeInstances", "GetObject", "Decrypt"),
            vpc_endpoint=f"vpce-{_hex(rng, 17)}",
            weight=10,
        ),
        _Actor(
            "AssumedRole",
            "OrganizationAccountAccessRole",
            "AROA" + _code(rng, 17),
            session="audit",
            addresses=(_public_ip(rng),),
            agent=_CLI,
            operations=admin_apis,
            mfa=True,
            weight=3,
        ),
    ]


# --------------------------------------------------------------------------------------------------------
# What they call: one builder per API, returning the event-specific part of the record
# --------------------------------------------------------------------------------------------------------

_BUCKETS = ("orders-exports-prod", "app-assets-prod", "data-lake-raw", "terraform-state-shared")
_INSTANCE_TYPES = ("t3.micro", "t3.medium", "m6i.large", "c7g.xlarge", "r6i.2xlarge")
_PARAMETERS = (
    "/orders/prod/db-password",
    "/orders/prod/api-url",
    "/shared/datadog-api-key",
    "/eks/cluster-name",
)
_POLICIES = (
    "ReadOnlyAccess",
    "AmazonS3ReadOnlyAccess",
    "AmazonSSMManagedInstanceCore",
    "CloudWatchAgentServerPolicy",
)


class _Context:
    """The per-seed state that builders share: rng, account, region and a few long-lived resources."""

    def __init__(self, rng: random.Random, account: str, region: str) -> None:
        self.rng = rng
        self.account = account
        self.region = region
        self.buckets = tuple(f"{name}-{account}" for name in _BUCKETS)
        self.amis = tuple(f"ami-{_hex(rng, 17)}" for _ in range(3))
        self.subnets = tuple(f"subnet-{_hex(rng, 17)}" for _ in range(3))
        self.groups = tuple(f"sg-{_hex(rng, 17)}" for _ in range(3))
        self.vpc = f"vpc-{_hex(rng, 17)}"
        self.key_id = _uuid(rng.getrandbits(128))
        self.key_arn = f"arn:aws:kms:{region}:{account}:key/{self.key_id}"


def _object_key(rng: random.Random) -> str:
    day = f"2026/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}"
    return rng.choice(
        (
            f"exports/{day}/orders-{rng.randint(1, 99999):05d}.csv",
            f"images/products/{rng.randint(1000, 9999)}/{_hex(rng, 12)}.jpg",
            f"raw/events/{day}/part-{rng.randint(0, 63):05d}.parquet",
            "env/prod/terraform.tfstate",
        )
    )


def _s3_object_call(c: _Context, name: str) -> dict[str, Any]:
    bucket = c.rng.choice(c.buckets)
    key = _object_key(c.rng)
    size = c.rng.randint(200, 4_000_000)
    put = name == "PutObject"
    return {
        "eventSource": "s3.amazonaws.com",
        "eventName": name,
        "requestParameters": {
            "bucketName": bucket,
            "Host": f"{bucket}.s3.{c.region}.amazonaws.com",
            "key": key,
        },
        "responseElements": {"x-amz-server-side-encryption": "AES256"} if put else None,
        "additionalEventData": {
            "SignatureVersion": "SigV4",
            "CipherSuite": "TLS_AES_128_GCM_SHA256",
            "bytesTransferredIn": size if put else 0,
            "SSEApplied": "Default_SSE_S3",
            "AuthenticationMethod": "AuthHeader",
            "x-amz-id-2": _code(c.rng, 56, _ALPHANUMERIC),
            "bytesTransferredOut": 0 if put else size,
        },
        "readOnly": not put,
        "resources": [
            {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/{key}"},
            {"accountId": c.account, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"},
        ],
        "eventCategory": "Data",
        "_request_id": "s3",
    }


def _create_bucket(c: _Context, name: str) -> dict[str, Any]:
    bucket = f"{c.rng.choice(('scratch', 'backups', 'reports', 'ml-features'))}-{_hex(c.rng, 8)}"
    parameters: dict[str, Any] = {"bucketName": bucket, "Host": "s3.amazonaws.com"}
    if c.region != "us-east-1":
        parameters["CreateBucketConfiguration"] = {
            "LocationConstraint": c.region,
            "xmlns": "http://s3.amazonaws.com/doc/2006-03-01/",
        }
    return {
        "eventSource": "s3.amazonaws.com",
        "eventName": name,
        "requestParameters": parameters,
        "responseElements": None,
        "additionalEventData": {
            "SignatureVersion": "SigV4",
            "CipherSuite": "TLS_AES_128_GCM_SHA256",
            "bytesTransferredIn": 0,
            "AuthenticationMethod": "AuthHeader",
            "x-amz-id-2": _code(c.rng, 56, _ALPHANUMERIC),
            "bytesTransferredOut": 0,
        },
        "readOnly": False,
        "resources": [{"accountId": c.account, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"}],
        "_request_id": "s3",
    }


def _list_buckets(c: _Context, name: str) -> dict[str, Any]:
    return {
        "eventSource": "s3.amazonaws.com",
        "eventName": name,
        "requestParameters": {"Host": f"s3.{c.region}.amazonaws.com"},
        "responseElements": None,
        "readOnly": True,
        "_request_id": "s3",
    }


def _run_instances(c: _Context, name: str) -> dict[str, Any]:
    rng = c.rng
    count = rng.choice((1, 1, 1, 2, 3))
    image = rng.choice(c.amis)
    instance_type = rng.choice(_INSTANCE_TYPES)
    subnet = rng.choice(c.subnets)
    group = rng.choice(c.groups)
    zone = c.region + "abc"[c.subnets.index(subnet)]
    instances = [
        {
            "instanceId": f"i-{_hex(rng, 17)}",
            "imageId": image,
            "instanceState": {"code": 0, "name": "pending"},
            "privateDnsName": "",
            "amiLaunchIndex": index,
            "productCodes": {},
            "instanceType": instance_type,
            "launchTime": 0,  # the event time in milliseconds, set by the caller
            "placement": {"availabilityZone": zone, "tenancy": "default"},
            "monitoring": {"state": "disabled"},
            "subnetId": subnet,
            "vpcId": c.vpc,
            "privateIpAddress": f"10.0.{c.subnets.index(subnet)}.{rng.randint(4, 250)}",
            "stateReason": {"code": "pending", "message": "pending"},
            "architecture": "arm64" if instance_type.startswith("c7g") else "x86_64",
            "rootDeviceType": "ebs",
            "rootDeviceName": "/dev/xvda",
            "groupSet": {"items": [{"groupId": group, "groupName": "app-servers"}]},
            "cpuOptions": {"coreCount": 1, "threadsPerCore": 2},
        }
        for index in range(count)
    ]
    return {
        "eventSource": "ec2.amazonaws.com",
        "eventName": name,
        "requestParameters": {
            "instancesSet": {"items": [{"imageId": image, "minCount": 1, "maxCount": count}]},
            "instanceType": instance_type,
            "blockDeviceMapping": {},
            "monitoring": {"enabled": False},
            "disableApiTermination": False,
            "disableApiStop": False,
            "clientToken": _uuid(rng.getrandbits(128)),
            "networkInterfaceSet": {
                "items": [{"deviceIndex": 0, "subnetId": subnet, "groupSet": {"items": [{"groupId": group}]}}]
            },
            "tagSpecificationSet": {
                "items": [
                    {
                        "resourceType": "instance",
                        "tags": [{"key": "Name", "value": f"app-{rng.randint(1, 40)}"}],
                    }
                ]
            },
        },
        "responseElements": {
            "requestId": "",  # EC2 repeats the request ID here; filled in with it
            "reservationId": f"r-{_hex(rng, 17)}",
            "ownerId": c.account,
            "groupSet": {},
            "instancesSet": {"items": instances},
        },
        "readOnly": False,
        "_launch_time": True,
    }


def _describe_instances(c: _Context, name: str) -> dict[str, Any]:
    filters = c.rng.choice(
        (
            {},
            {"items": [{"name": "instance-state-name", "valueSet": {"items": [{"value": "running"}]}}]},
            {"items": [{"name": "tag:Name", "valueSet": {"items": [{"value": "app-*"}]}}]},
        )
    )
    return {
        "eventSource": "ec2.amazonaws.com",
        "eventName": name,
        "requestParameters": {"instancesSet": {}, "filterSet": filters},
        "responseElements": None,
        "readOnly": True,
    }


def _describe_security_groups(c: _Context, name: str) -> dict[str, Any]:
    return {
        "eventSource": "ec2.amazonaws.com",
        "eventName": name,
        "requestParameters": {
            "securityGroupSet": {},
            "securityGroupIdSet": {"items": [{"groupId": c.rng.choice(c.groups)}]},
            "filterSet": {},
        },
        "responseElements": None,
        "readOnly": True,
    }


def _list_users(c: _Context, name: str) -> dict[str, Any]:
    return {
        "eventSource": "iam.amazonaws.com",
        "eventName": name,
        "awsRegion": "us-east-1",  # IAM is global: its events are recorded in us-east-1
        "requestParameters": None,
        "responseElements": None,
        "readOnly": True,
    }


def _attach_role_policy(c: _Context, name: str) -> dict[str, Any]:
    role = c.rng.choice(("orders-api-lambda", "eks-node-group", "reporting-batch"))
    return {
        "eventSource": "iam.amazonaws.com",
        "eventName": name,
        "awsRegion": "us-east-1",
        "requestParameters": {
            "roleName": role,
            "policyArn": f"arn:aws:iam::aws:policy/{c.rng.choice(_POLICIES)}",
        },
        "responseElements": None,
        "readOnly": False,
    }


def _get_caller_identity(c: _Context, name: str) -> dict[str, Any]:
    return {
        "eventSource": "sts.amazonaws.com",
        "eventName": name,
        "requestParameters": None,
        "responseElements": None,
        "readOnly": True,
    }


def _decrypt(c: _Context, name: str) -> dict[str, Any]:
    return {
        "eventSource": "kms.amazonaws.com",
        "eventName": name,
        "requestParameters": {
            "encryptionContext": {
                "aws:lambda:FunctionArn": f"arn:aws:lambda:{c.region}:{c.account}:function:orders-api"
            }
            if c.rng.random() < 0.5
            else {"aws:s3:arn": f"arn:aws:s3:::{c.rng.choice(c.buckets)}"},
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
        },
        "responseElements": None,
        "readOnly": True,
        "resources": [{"accountId": c.account, "type": "AWS::KMS::Key", "ARN": c.key_arn}],
    }


def _get_parameter(c: _Context, name: str) -> dict[str, Any]:
    return {
        "eventSource": "ssm.amazonaws.com",
        "eventName": name,
        "requestParameters": {"name": c.rng.choice(_PARAMETERS), "withDecryption": c.rng.random() < 0.7},
        "responseElements": None,
        "readOnly": True,
    }


def _create_log_stream(c: _Context, name: str) -> dict[str, Any]:
    return {
        "eventSource": "logs.amazonaws.com",
        "eventName": name,
        "requestParameters": {
            "logGroupName": "/aws/lambda/orders-api",
            "logStreamName": f"2026/01/{c.rng.randint(1, 28):02d}/[$LATEST]{_hex(c.rng, 32)}",
        },
        "responseElements": None,
        "readOnly": False,
    }


_OPERATIONS: dict[str, Callable[[_Context, str], dict[str, Any]]] = {
    "PutObject": _s3_object_call,
    "GetObject": _s3_object_call,
    "CreateBucket": _create_bucket,
    "ListBuckets": _list_buckets,
    "RunInstances": _run_instances,
    "DescribeInstances": _describe_instances,
    "DescribeSecurityGroups": _describe_security_groups,
    "ListUsers": _list_users,
    "AttachRolePolicy": _attach_role_policy,
    "GetCallerIdentity": _get_caller_identity,
    "Decrypt": _decrypt,
    "GetParameter": _get_parameter,
    "CreateLogStream": _create_log_stream,
}


def _error(service: str, action: str, arn: str, c: _Context) -> tuple[str, str]:
    """The errorCode and errorMessage AWS writes when the caller may not do `action`."""
    if service == "s3":
        return "AccessDenied", "Access Denied"
    if service == "ec2":
        return (
            "Client.UnauthorizedOperation",
            f"You are not authorized to perform this operation. User: {arn} is not authorized to perform:"
            f" ec2:{action} on resource: arn:aws:ec2:{c.region}:{c.account}:instance/* because no"
            f" identity-based policy allows the ec2:{action} action. Encoded authorization failure"
            f" message: {_code(c.rng, 48, _ALPHANUMERIC)}",
        )
    code = "AccessDeniedException" if service in ("kms", "ssm", "logs") else "AccessDenied"
    return (
        code,
        f"User: {arn} is not authorized to perform: {service}:{action} because no identity-based policy"
        f" allows the {service}:{action} action",
    )


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


def _identity(actor: _Actor, c: _Context, when: float) -> dict[str, Any]:
    if actor.kind == "Root":
        return {
            "type": "Root",
            "principalId": c.account,
            "arn": f"arn:aws:iam::{c.account}:root",
            "accountId": c.account,
            "accessKeyId": "ASIA" + _code(c.rng, 16),
        }
    if actor.kind == "IAMUser":
        return {
            "type": "IAMUser",
            "principalId": actor.principal_id,
            "arn": f"arn:aws:iam::{c.account}:user/{actor.name}",
            "accountId": c.account,
            "accessKeyId": "AKIA" + _code(c.rng, 16),
            "userName": actor.name,
        }
    # An assumed role names its user only through the session issuer: no userName here, as AWS writes it.
    created = when - c.rng.randint(30, 3500)
    return {
        "type": "AssumedRole",
        "principalId": f"{actor.principal_id}:{actor.session}",
        "arn": f"arn:aws:sts::{c.account}:assumed-role/{actor.name}/{actor.session}",
        "accountId": c.account,
        "accessKeyId": "ASIA" + _code(c.rng, 16),
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": actor.principal_id,
                "arn": f"arn:aws:iam::{c.account}:role{actor.path}{actor.name}",
                "accountId": c.account,
                "userName": actor.name,
            },
            "webIdFederationData": {},
            "attributes": {
                "creationDate": iso_time(created),
                "mfaAuthenticated": "true" if actor.mfa else "false",
            },
        },
    }


def _tls(host: str, rng: random.Random) -> dict[str, str]:
    if rng.random() < 0.8:
        return {
            "tlsVersion": "TLSv1.3",
            "cipherSuite": "TLS_AES_128_GCM_SHA256",
            "clientProvidedHostHeader": host,
        }
    return {
        "tlsVersion": "TLSv1.2",
        "cipherSuite": "ECDHE-RSA-AES128-GCM-SHA256",
        "clientProvidedHostHeader": host,
    }


def _api_call(c: _Context, actor: _Actor, when: float) -> dict[str, Any]:
    rng = c.rng
    name = rng.choice(actor.operations)
    part = _OPERATIONS[name](c, name)
    service = part["eventSource"].split(".", 1)[0]
    identity = _identity(actor, c, when)
    region = part.pop("awsRegion", c.region)
    request_kind = part.pop("_request_id", "uuid")
    request_id = _code(rng, 16, "0123456789ABCDEF") if request_kind == "s3" else _uuid(rng.getrandbits(128))
    if part.pop("_launch_time", False):
        for instance in part["responseElements"]["instancesSet"]["items"]:
            instance["launchTime"] = int(when) * 1000
        part["responseElements"]["requestId"] = request_id
    agent = actor.agent.format(v=rng.randint(0, 9), command=f"{service}.{name.lower()}", service=service)
    if actor.console and service == "s3":
        agent = _S3_CONSOLE
    record: dict[str, Any] = {
        "eventVersion": rng.choice(("1.08", "1.09", "1.09")),
        "userIdentity": identity,
        "eventTime": iso_time(when),
        "awsRegion": region,
        "sourceIPAddress": rng.choice(actor.addresses),
        "userAgent": agent,
        "requestID": request_id,
        "eventID": _uuid(rng.getrandbits(128)),
        "eventType": "AwsApiCall",
        "managementEvent": part.get("eventCategory", "Management") == "Management",
        "recipientAccountId": c.account,
        "eventCategory": "Management",
        **part,
    }
    host = part["requestParameters"]["Host"] if service == "s3" and part["requestParameters"] else None
    record["tlsDetails"] = _tls(host or f"{service}.{region}.amazonaws.com", rng)
    if actor.vpc_endpoint:
        record["vpcEndpointId"] = actor.vpc_endpoint
        record["vpcEndpointAccountId"] = c.account
    if actor.console:
        record["sessionCredentialFromConsole"] = "true"
    if rng.random() < 0.07:
        record["errorCode"], record["errorMessage"] = _error(service, name, identity["arn"], c)
        record["responseElements"] = None
        if service != "s3":
            record.pop("resources", None)
    return record


def _console_login(c: _Context, actor: _Actor, when: float) -> dict[str, Any]:
    """An IAM user's (or the root user's) console sign-in: no request ID, the result in responseElements."""
    rng = c.rng
    failed = rng.random() < 0.15
    identity = _identity(actor, c, when)
    identity.pop("accessKeyId")
    mfa = actor.mfa and not failed
    if failed and actor.kind == "IAMUser" and rng.random() < 0.4:
        # A mistyped user name: AWS hides what was typed.
        identity = {
            "type": "IAMUser",
            "principalId": c.account,
            "accountId": c.account,
            "accessKeyId": "",
            "userName": "HIDDEN_DUE_TO_SECURITY_REASONS",
        }
    additional: dict[str, Any] = {
        "LoginTo": "https://console.aws.amazon.com/console/home?hashArgs=%23&isauthcode=true&state=hashArgsFromTB",
        "MobileVersion": "No",
        "MFAUsed": "Yes" if mfa else "No",
    }
    if mfa:
        device = "root-account-mfa-device" if actor.kind == "Root" else actor.name
        additional["MFAIdentifier"] = f"arn:aws:iam::{c.account}:mfa/{device}"
    record: dict[str, Any] = {
        "eventVersion": "1.09" if rng.random() < 0.6 else "1.08",
        "userIdentity": identity,
        "eventTime": iso_time(when),
        "eventSource": "signin.amazonaws.com",
        "eventName": "ConsoleLogin",
        "awsRegion": c.region,
        "sourceIPAddress": rng.choice(actor.addresses),
        "userAgent": rng.choice((_BROWSER, _FIREFOX)),
        "requestParameters": None,
        "responseElements": {"ConsoleLogin": "Failure" if failed else "Success"},
        "additionalEventData": additional,
        "eventID": _uuid(rng.getrandbits(128)),
        "readOnly": False,
        "eventType": "AwsConsoleSignIn",
        "managementEvent": True,
        "recipientAccountId": c.account,
        "eventCategory": "Management",
        "tlsDetails": _tls("signin.aws.amazon.com", rng),
    }
    if failed:
        record["errorMessage"] = "Failed authentication"
    return record


def _service_assume_role(c: _Context, actors: Sequence[_Actor], when: float) -> dict[str, Any]:
    """An AWS service taking a role for its work (Lambda for a function, EC2 for a node): no user, no IP."""
    rng = c.rng
    services = {"orders-api-lambda": "lambda.amazonaws.com", "eks-node-group": "ec2.amazonaws.com"}
    actor = rng.choice([a for a in actors if a.name in services])
    principal = services[actor.name]
    role_arn = f"arn:aws:iam::{c.account}:role{actor.path}{actor.name}"
    when_expires = when + 3600 * rng.choice((1, 1, 6, 12))
    return {
        "eventVersion": "1.08",
        "userIdentity": {"type": "AWSService", "invokedBy": principal},
        "eventTime": iso_time(when),
        "eventSource": "sts.amazonaws.com",
        "eventName": "AssumeRole",
        "awsRegion": c.region,
        "sourceIPAddress": principal,
        "userAgent": principal,
        "requestParameters": {"roleArn": role_arn, "roleSessionName": actor.session},
        "responseElements": {
            "credentials": {"accessKeyId": "ASIA" + _code(rng, 16), "expiration": _java_date(when_expires)},
            "assumedRoleUser": {
                "assumedRoleId": f"{actor.principal_id}:{actor.session}",
                "arn": f"arn:aws:sts::{c.account}:assumed-role/{actor.name}/{actor.session}",
            },
        },
        "requestID": _uuid(rng.getrandbits(128)),
        "eventID": _uuid(rng.getrandbits(128)),
        "readOnly": True,
        "resources": [{"accountId": c.account, "type": "AWS::IAM::Role", "ARN": role_arn}],
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": c.account,
        "sharedEventID": _uuid(rng.getrandbits(128)),
        "eventCategory": "Management",
    }


def _service_event(c: _Context, when: float) -> dict[str, Any]:
    """Something an AWS service did on its own (a KMS key rotation): AwsServiceEvent, no request."""
    return {
        "eventVersion": "1.08",
        "userIdentity": {"type": "AWSService", "invokedBy": "kms.amazonaws.com", "accountId": c.account},
        "eventTime": iso_time(when),
        "eventSource": "kms.amazonaws.com",
        "eventName": "RotateKey",
        "awsRegion": c.region,
        "sourceIPAddress": "kms.amazonaws.com",
        "userAgent": "kms.amazonaws.com",
        "requestParameters": None,
        "responseElements": None,
        "additionalEventData": {"keyId": c.key_id},
        "eventID": _uuid(c.rng.getrandbits(128)),
        "readOnly": False,
        "resources": [{"accountId": c.account, "type": "AWS::KMS::Key", "ARN": c.key_arn}],
        "eventType": "AwsServiceEvent",
        "managementEvent": True,
        "recipientAccountId": c.account,
        "eventCategory": "Management",
    }


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in _KEY_ORDER if key in record}


def cloudtrail_records(
    count: int,
    seed: int = 11,
    start_time: float | None = None,
    account: str = ACCOUNT,
    region: str = REGION,
) -> Iterator[dict]:
    """`count` CloudTrail records with a realistic mix of callers, APIs and errors, JSON-serialisable.

    The same seed and start time give the same records (start_time defaults to now, so pass it when the
    times must match too). eventTime starts at start_time and never goes back (0-2 s apart). Callers:
    about 57 % assumed roles, 28 % IAM users, 13 % AWS services, 1 % the root user; 4.5 % of records
    are console sign-ins (15 % of them failed), 19 % S3 data events; 7 % of API calls fail
    (AccessDenied and the like) and 1 in 200 records has no userIdentity at all, as real logs have.
    """
    rng = random.Random(seed)
    c = _Context(rng, account, region)
    actors = _actors(rng)
    root = _Actor(
        "Root",
        "root",
        account,
        addresses=(_public_ip(rng),),
        agent=_CONSOLE,
        operations=("ListUsers", "ListBuckets", "DescribeInstances"),
        console=True,
        mfa=True,
    )
    users = [a for a in actors if a.kind == "IAMUser"]
    callers = actors + [root]
    weights = [a.weight for a in actors] + [0.4]
    when = time.time() if start_time is None else start_time
    for _ in range(count):
        roll = rng.random()
        if roll < 0.04:
            record = _console_login(c, rng.choice(users), when)
        elif roll < 0.045:
            record = _console_login(c, root, when)
        elif roll < 0.165:
            record = _service_assume_role(c, actors, when)
        elif roll < 0.18:
            record = _service_event(c, when)
        else:
            record = _api_call(c, rng.choices(callers, weights)[0], when)
        if rng.random() < 0.005:
            del record["userIdentity"]
        yield _ordered(record)
        when += rng.random() * 2


# --------------------------------------------------------------------------------------------------------
# Keys and files
# --------------------------------------------------------------------------------------------------------


def cloudtrail_key(when: float, account: str = ACCOUNT, region: str = REGION, *, unique: str) -> str:
    """The key CloudTrail gives a log file delivered at `when` (UTC); `unique` is its random last part."""
    t = time.gmtime(when)
    return (
        f"AWSLogs/{account}/CloudTrail/{region}/{time.strftime('%Y/%m/%d', t)}/"
        f"{account}_CloudTrail_{region}_{time.strftime('%Y%m%dT%H%MZ', t)}_{unique}.json.gz"
    )


def digest_key(
    when: float,
    account: str = ACCOUNT,
    region: str = REGION,
    trail: str = "management-events",
    home_region: str | None = None,
) -> str:
    """The key of a CloudTrail-Digest file (log file validation hashes), which a reader should skip.

    `home_region` is the trail's own region (the second region in the name); default `region`.
    """
    t = time.gmtime(when)
    return (
        f"AWSLogs/{account}/CloudTrail-Digest/{region}/{time.strftime('%Y/%m/%d', t)}/"
        f"{account}_CloudTrail-Digest_{region}_{trail}_{home_region or region}_"
        f"{time.strftime('%Y%m%dT%H%M%SZ', t)}.json.gz"
    )


def _dumps(value: Any) -> str:
    """Compact JSON, as CloudTrail writes its files (one line, no spaces)."""
    return json.dumps(value, separators=(",", ":"))


def cloudtrail_file(records: Iterable[dict], compress: bool = True) -> bytes:
    """A log file's content, `{"Records":[...]}`, gzip-compressed (as CloudTrail stores it) if `compress`."""
    data = _dumps({"Records": list(records)}).encode()
    return gzip.compress(data, compresslevel=COMPRESS_LEVEL, mtime=0) if compress else data


def cloudtrail_log_files(
    files: int,
    records_per_file: int,
    seed: int = 11,
    start_time: float | None = None,
    account: str = ACCOUNT,
    region: str = REGION,
    compress: bool = True,
) -> list[tuple[str, bytes]]:
    """(key, content) of `files` consecutive log files, each keyed by the time of its last record."""
    rng = random.Random(seed ^ 0x5EED)
    records = list(cloudtrail_records(files * records_per_file, seed, start_time, account, region))
    out = []
    for index in range(files):
        chunk = records[index * records_per_file : (index + 1) * records_per_file]
        when = calendar.timegm(time.strptime(chunk[-1]["eventTime"], "%Y-%m-%dT%H:%M:%SZ")) if chunk else 0
        key = cloudtrail_key(when, account, region, unique=log_file_suffix(rng))
        out.append((key, cloudtrail_file(chunk, compress)))
    return out


# The bulk writer reuses a pool of generated records as text templates, with fresh event and request
# IDs and times in each copy: a few microseconds a record instead of building and encoding a record.
# The pool is far larger than gzip's 32 KiB window, so the compression ratio stays that of real logs.
_POOL_SIZE = 1024
_BULK_SPACING = 0.005  # seconds between records: 200 events/s, a busy account
_MARK_EVENT_ID = "@@EVENT-ID@@"
_MARK_REQUEST_ID = "@@REQUEST-ID@@"
_MARK_TIME = "@@EVENT-TIME@@"


def _templates(seed: int, start_time: float, account: str, region: str) -> list[str]:
    """Records as JSON text with %-format fields where each copy gets its own IDs and time."""
    templates = []
    for record in cloudtrail_records(_POOL_SIZE, seed, start_time, account, region):
        request_id = record.get("requestID")
        s3_style = isinstance(request_id, str) and len(request_id) == 16
        record["eventID"] = _MARK_EVENT_ID
        record["eventTime"] = _MARK_TIME
        text = _dumps(record).replace("%", "%%")
        if request_id:
            # Also where a service repeats it (EC2's responseElements.requestId).
            text = text.replace(f'"{request_id}"', '"%(rid_s3)s"' if s3_style else '"%(rid)s"')
        text = text.replace(_MARK_EVENT_ID, "%(eid)s").replace(_MARK_TIME, "%(time)s")
        templates.append(text)
    return templates


def write_cloudtrail_file(
    path: str | os.PathLike[str],
    target_bytes: int,
    seed: int = 13,
    compress: bool = True,
    *,
    start_time: float | None = None,
    account: str = ACCOUNT,
    region: str = REGION,
) -> int:
    """Streams a log file of about `target_bytes` (the file's size, compressed or not) to `path`.

    For large test objects (tens of MB): nothing is held in memory, and the file ends at the first
    record that brings its size to `target_bytes` (gzip: within a few bytes plus one record; a
    target smaller than an empty file gives `{"Records":[]}`). Returns the number of records.
    """
    rng = random.Random(seed)
    start = time.time() if start_time is None else start_time
    # Pool records lie before `start` (0-2 s apart), so their session creation dates do too.
    templates = _templates(seed, start - 2 * _POOL_SIZE, account, region)
    mask = _POOL_SIZE - 1
    fields: dict[str, str] = {}
    last_second = -1
    index = 0

    def next_record() -> str:
        nonlocal last_second, index
        when = start + index * _BULK_SPACING
        second = int(when)
        if second != last_second:
            fields["time"] = iso_time(second)
            last_second = second
        bits = rng.getrandbits(128)
        fields["eid"] = _uuid(rng.getrandbits(128))
        fields["rid"] = _uuid(bits)
        fields["rid_s3"] = f"{bits >> 64:016X}"
        text = templates[rng.getrandbits(16) & mask] % fields
        index += 1
        return text if index == 1 else "," + text

    head, tail = '{"Records":[', "]}"
    with open(path, "wb") as raw:
        if not compress:
            size = len(head) + len(tail)
            raw.write(head.encode())
            while size < target_bytes:
                text = next_record()
                raw.write(text.encode())
                size += len(text)
            raw.write(tail.encode())
            return index
        # The compressor keeps output back, so the file size is only known after a sync flush (a few
        # bytes each): flush after batches that each cover half the estimated rest, then record by record.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL, mtime=0) as out:
            out.write(head.encode())
            out.flush()
            base = raw.tell()
            closing = 16  # "]}" compressed, the final block and the gzip trailer
            batch = 64
            while raw.tell() + closing < target_bytes:
                out.write("".join(next_record() for _ in range(batch)).encode())
                out.flush()
                per_record = (raw.tell() - base) / index
                batch = max(1, int((target_bytes - closing - raw.tell()) / per_record / 2))
                batch = min(batch, 4096)
            out.write(tail.encode())
    return index


# --------------------------------------------------------------------------------------------------------
# S3, SQS, SNS and EventBridge as a CloudTrail setup has them
# --------------------------------------------------------------------------------------------------------


def ensure_bucket(s3, bucket: str) -> None:
    """Creates `bucket` in the client's region unless it exists."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    region = s3.meta.region_name
    if region and region != "us-east-1":
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        s3.create_bucket(Bucket=bucket)


def put_cloudtrail_files(s3, bucket: str, files: Sequence[tuple[str, bytes]]) -> None:
    """Stores (key, content) pairs as CloudTrail does, creating the bucket if missing.

    Gzip content gets `Content-Encoding: gzip` and `Content-Type: application/json` like CloudTrail's
    objects: a reader must not count on a client to decompress (botocore does not, others may).
    """
    ensure_bucket(s3, bucket)
    for key, content in files:
        extra = {"ContentEncoding": "gzip"} if content[:2] == b"\x1f\x8b" else {}
        s3.put_object(Bucket=bucket, Key=key, Body=content, ContentType="application/json", **extra)


def create_notification_queue(sqs, name: str, visibility_timeout: int = 30) -> tuple[str, str]:
    """A standard queue for notifications; returns (queue URL, queue ARN)."""
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout)})[
        "QueueUrl"
    ]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def allow_to_send(sqs, queue_url: str, queue_arn: str, service: str, source_arn: str, sid: str) -> None:
    """Adds (or replaces, by `sid`) a queue policy statement letting `service` send from `source_arn`.

    AWS drops SNS deliveries and refuses S3 notification setups without it; moto checks neither, but
    the setup stays the one that works on AWS. Other statements of the policy are kept.
    """
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["Policy"]).get("Attributes", {})
    policy = json.loads(attributes["Policy"]) if attributes.get("Policy") else {}
    statements = [s for s in policy.get("Statement", []) if s.get("Sid") != sid]
    statements.append(
        {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn": source_arn}},
        }
    )
    policy = {
        "Version": _POLICY_VERSION,
        "Id": policy.get("Id", f"{queue_arn}/policy"),
        "Statement": statements,
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})


def subscribe_queue_to_topic(
    sns, sqs, topic_name: str, queue_url: str, queue_arn: str, raw: bool = False
) -> str:
    """Creates the topic (if needed) and subscribes the queue, as for a trail's SNS notifications.

    With `raw`, SNS raw message delivery: the queue gets CloudTrail's message without the SNS envelope.
    Returns the topic ARN.
    """
    topic_arn = sns.create_topic(Name=topic_name)["TopicArn"]
    allow_to_send(sqs, queue_url, queue_arn, "sns.amazonaws.com", topic_arn, f"sns-{topic_name}")
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true" if raw else "false"},
        ReturnSubscriptionArn=True,
    )
    return topic_arn


def cloudtrail_notification(bucket: str, keys: Sequence[str]) -> str:
    """What CloudTrail publishes to SNS after delivering log files: `{"s3Bucket":…,"s3ObjectKey":[…]}`."""
    return _dumps({"s3Bucket": bucket, "s3ObjectKey": list(keys)})


def announce_cloudtrail_via_sns(sns, topic_arn: str, bucket: str, keys: Sequence[str]) -> None:
    """Publishes one CloudTrail notification naming `keys` (CloudTrail names one or more files)."""
    if not keys:
        raise ValueError("CloudTrail never announces zero log files")
    sns.publish(TopicArn=topic_arn, Message=cloudtrail_notification(bucket, keys))


def cloudtrail_validation_message() -> str:
    """What CloudTrail publishes once to the topic of a new trail; it names no file."""
    return VALIDATION_MESSAGE


def enable_s3_event_notifications(
    s3, bucket: str, queue_arn: str, prefix: str = "AWSLogs/", *, sqs=None
) -> None:
    """S3 → SQS event notifications for objects created under `prefix` (the bucket is created if missing).

    Replaces the bucket's notification configuration. With `sqs` (a client of the queue's account), the
    queue policy first gets the statement AWS requires for S3. Like AWS, moto then sends an
    `s3:TestEvent` message to the queue: the first message a consumer sees is not an object.
    """
    ensure_bucket(s3, bucket)
    if sqs is not None:
        queue_url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
        allow_to_send(sqs, queue_url, queue_arn, "s3.amazonaws.com", f"arn:aws:s3:::{bucket}", f"s3-{bucket}")
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "cloudtrail-log-files",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )


def eventbridge_object_created(
    bucket: str,
    key: str,
    size: int,
    region: str = REGION,
    account: str = ACCOUNT,
    *,
    when: float | None = None,
    etag: str | None = None,
    requester: str | None = None,
    source_ip: str = "10.11.12.13",
) -> str:
    """The JSON of an EventBridge "Object Created" event from aws.s3, as a rule targeting SQS delivers it.

    Deterministic for its arguments (with `when`): the id and sequencer derive from them. `etag` is
    the object's (put_object returns it quoted; quotes are dropped); default a hash of the key.
    `requester` is the account (default) or the AWS service principal that wrote the object.
    """
    when = time.time() if when is None else when
    digest = hashlib.sha256(f"{bucket}\n{key}\n{size}\n{when!r}".encode()).hexdigest()
    event = {
        "version": "0",
        "id": _uuid(int(digest[:32], 16)),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": account,
        "time": iso_time(when),
        "region": region,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {
                "key": key,
                "size": size,
                "etag": (etag or hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()).strip('"'),
                "sequencer": f"{int(when * 1_000_000):018X}",
            },
            "request-id": digest[32:48].upper(),
            "requester": requester or account,
            "source-ip-address": source_ip,
            "reason": "PutObject",
        },
    }
    return _dumps(event)
