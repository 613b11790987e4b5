"""AWS credentials, region and endpoint for every client the pipelines open.

Credentials come from explicit options or, by default, the AWS default chain (environment, profile,
instance or task role); an optional role is then assumed (with an external id for cross-account
access), refreshed before it expires. Secrets are never part of a repr, a log line or an error text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import boto3
import botocore.session
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

USER_AGENT = "aws-gelf-pipelines"


class AwsOptions(PipelineOptions):
    """AWS connection options. The region is Beam's own `--region` option."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("AWS")
        group.add_argument(
            "--aws_profile",
            default=None,
            help="Named profile from ~/.aws/config to take credentials from (default: the default chain).",
        )
        group.add_argument(
            "--aws_access_key_id",
            default=None,
            help="Access key id; prefer the default chain (environment, profile, role) over this option.",
        )
        group.add_argument(
            "--aws_secret_access_key",
            default=None,
            help="Secret access key, with --aws_access_key_id. Never logged.",
        )
        group.add_argument(
            "--aws_session_token", default=None, help="Session token for temporary keys. Never logged."
        )
        group.add_argument(
            "--aws_endpoint_url",
            default=None,
            help="Endpoint for every AWS service, e.g. http://127.0.0.1:5000 for moto or LocalStack, "
            "or a VPC endpoint.",
        )
        group.add_argument(
            "--aws_role_arn",
            default=None,
            help="Role to assume with the credentials above (cross-account reading).",
        )
        group.add_argument(
            "--aws_external_id", default=None, help="External id required by the role's trust policy."
        )
        group.add_argument(
            "--aws_role_session_name",
            default="aws-gelf-pipelines",
            help="Session name when assuming --aws_role_arn (shows in CloudTrail).",
        )


@dataclass(frozen=True)
class AwsConfig:
    """Everything needed to open a client on any worker; picklable, with secrets out of its repr."""

    region: str
    profile: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    role_arn: str | None = None
    external_id: str | None = field(default=None, repr=False)
    role_session_name: str = "aws-gelf-pipelines"
    #: The identity that assumes `role_arn`, when it is not the credentials above (a role chain).
    assumed_by: AwsConfig | None = None

    def session(self) -> boto3.Session:
        if self.assumed_by is not None:
            base = self.assumed_by.session()
        else:
            base = boto3.Session(
                profile_name=self.profile,
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                aws_session_token=self.session_token,
                region_name=self.region,
            )
        if not self.role_arn:
            return base
        return self._assumed_role_session(base)

    def assuming(self, role_arn: str) -> AwsConfig:
        """The identity of `role_arn`, assumed with this one's credentials: through `--aws_role_arn`'s
        role when there is one, as AWS's role chaining does."""
        return replace(self, role_arn=role_arn, external_id=None, assumed_by=self)

    def client(self, service: str, **config_kwargs):
        """A client for `service`; `config_kwargs` go to botocore's Config (retries, timeouts)."""
        config = Config(user_agent_extra=USER_AGENT, **config_kwargs)
        return self.session().client(
            service, region_name=self.region, endpoint_url=self.endpoint_url, config=config
        )

    def _assumed_role_session(self, base: boto3.Session) -> boto3.Session:
        sts = base.client("sts", region_name=self.region, endpoint_url=self.endpoint_url)

        def fetch() -> dict:
            kwargs = {"RoleArn": self.role_arn, "RoleSessionName": self.role_session_name}
            if self.external_id:
                kwargs["ExternalId"] = self.external_id
            credentials = sts.assume_role(**kwargs)["Credentials"]
            return {
                "access_key": credentials["AccessKeyId"],
                "secret_key": credentials["SecretAccessKey"],
                "token": credentials["SessionToken"],
                "expiry_time": credentials["Expiration"].isoformat(),
            }

        refreshable = RefreshableCredentials.create_from_metadata(
            metadata=fetch(), refresh_using=fetch, method="assume-role"
        )
        botocore_session = botocore.session.Session()
        botocore_session._credentials = refreshable
        botocore_session.set_config_variable("region", self.region)
        return boto3.Session(botocore_session=botocore_session, region_name=self.region)


def region_from_options(options: PipelineOptions) -> str | None:
    """Beam's --region, else the AWS SDK's environment variables."""
    return (
        options.view_as(GoogleCloudOptions).region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )


def aws_config_from_options(options: PipelineOptions) -> AwsConfig:
    """Validated AWS settings; a wrong combination fails at start, naming the option."""
    aws = options.view_as(AwsOptions)
    region = region_from_options(options)
    if not region:
        raise ValueError(
            "--region is required: the AWS region of the stream or queue to read, e.g. --region=eu-west-1 "
            "(or set AWS_REGION)."
        )
    if bool(aws.aws_access_key_id) != bool(aws.aws_secret_access_key):
        raise ValueError(
            "--aws_access_key_id and --aws_secret_access_key go together: give both, or neither to use "
            "the AWS default credential chain."
        )
    if aws.aws_session_token and not aws.aws_access_key_id:
        raise ValueError("--aws_session_token needs --aws_access_key_id and --aws_secret_access_key.")
    if aws.aws_profile and aws.aws_access_key_id:
        raise ValueError("--aws_profile and --aws_access_key_id exclude each other: choose one.")
    if aws.aws_external_id and not aws.aws_role_arn:
        raise ValueError("--aws_external_id is only used with --aws_role_arn: add the role to assume.")
    if aws.aws_role_arn and not aws.aws_role_arn.startswith("arn:"):
        raise ValueError(
            f"--aws_role_arn must be a role ARN such as arn:aws:iam::123456789012:role/reader, "
            f"not {aws.aws_role_arn!r}."
        )
    if aws.aws_endpoint_url and not aws.aws_endpoint_url.startswith(("http://", "https://")):
        raise ValueError(
            f"--aws_endpoint_url must be a URL such as http://127.0.0.1:5000, not {aws.aws_endpoint_url!r}."
        )
    return AwsConfig(
        region=region,
        profile=aws.aws_profile,
        access_key_id=aws.aws_access_key_id,
        secret_access_key=aws.aws_secret_access_key,
        session_token=aws.aws_session_token,
        endpoint_url=aws.aws_endpoint_url,
        role_arn=aws.aws_role_arn,
        external_id=aws.aws_external_id,
        role_session_name=aws.aws_role_session_name,
    )
