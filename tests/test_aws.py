"""AWS settings: validation at start, secrets kept out of texts, assumed roles for other accounts."""

from __future__ import annotations

import boto3
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.conftest import REGION
from transforms.aws import AwsConfig, aws_config_from_options
from transforms.kinesis import KinesisReadConfig, check_stream

OTHER_ACCOUNT = "210987654321"
ROLE = f"arn:aws:iam::{OTHER_ACCOUNT}:role/flowlog-reader"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--aws_access_key_id=AKIA1"], "--aws_access_key_id and --aws_secret_access_key go together"),
        (["--aws_session_token=t"], "--aws_session_token needs"),
        (["--aws_profile=p", "--aws_access_key_id=a", "--aws_secret_access_key=s"], "exclude each other"),
        (["--aws_external_id=x"], "--aws_external_id is only used with --aws_role_arn"),
        (["--aws_role_arn=reader"], "--aws_role_arn must be a role ARN"),
        (["--aws_endpoint_url=localhost:5000"], "--aws_endpoint_url must be a URL"),
    ],
)
def test_bad_aws_options_fail_naming_the_option(args, message):
    with pytest.raises(ValueError, match=message):
        aws_config_from_options(PipelineOptions([f"--region={REGION}", *args]))


def test_region_comes_from_the_option_or_the_environment(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ValueError, match="--region is required"):
        aws_config_from_options(PipelineOptions([]))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert aws_config_from_options(PipelineOptions([])).region == "eu-west-1"
    assert aws_config_from_options(PipelineOptions(["--region=ap-south-1"])).region == "ap-south-1"


def test_secrets_are_not_in_the_config_text():
    config = aws_config_from_options(
        PipelineOptions(
            [
                f"--region={REGION}",
                "--aws_access_key_id=AKIAVISIBLEKEYID",
                "--aws_secret_access_key=SECRET-ACCESS-KEY",
                "--aws_session_token=SECRET-TOKEN",
            ]
        )
    )
    text = repr(config) + str(config)
    assert "SECRET" not in text and "AKIAVISIBLEKEYID" not in text


def test_an_assumed_role_reads_the_other_accounts_stream(moto):
    other = boto3.client("sts", region_name=REGION, endpoint_url=moto).assume_role(
        RoleArn=ROLE, RoleSessionName="setup"
    )["Credentials"]
    boto3.client(
        "kinesis",
        region_name=REGION,
        endpoint_url=moto,
        aws_access_key_id=other["AccessKeyId"],
        aws_secret_access_key=other["SecretAccessKey"],
        aws_session_token=other["SessionToken"],
    ).create_stream(StreamName="shared-flowlogs", ShardCount=1)

    own_account = AwsConfig(region=REGION, endpoint_url=moto)
    with pytest.raises(ValueError, match="no such Kinesis stream"):
        check_stream(KinesisReadConfig(stream="shared-flowlogs", aws=own_account))

    with_role = AwsConfig(region=REGION, endpoint_url=moto, role_arn=ROLE, external_id="graylog-42")
    check_stream(KinesisReadConfig(stream="shared-flowlogs", aws=with_role))
    identity = with_role.client("sts").get_caller_identity()
    assert identity["Account"] == OTHER_ACCOUNT
    assert identity["Arn"].endswith("/aws-gelf-pipelines")


def test_missing_credentials_fail_with_the_ways_to_provide_them(monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = KinesisReadConfig(stream="s", aws=AwsConfig(region=REGION, endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="No AWS credentials found"):
        check_stream(config)
