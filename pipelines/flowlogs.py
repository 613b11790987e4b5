"""VPC Flow Logs from a Kinesis stream (CloudWatch Logs subscription) to Graylog over GELF.

    python -m pipelines.flowlogs --runner=DirectRunner --stream_name=S --region=R \
        --gelf_host=graylog --gelf_port=12201 [--flow_log_format '${version} ${vpc-id} …']
"""

from __future__ import annotations

import sys

from pipelines.common import RunOptions, main_with_errors, run_kinesis_pipeline
from transforms.aws import AwsOptions, aws_config_from_options
from transforms.deadletter import DeadLetterOptions
from transforms.enrichment import EntityLookups, EntityOptions, lookup_config_from_options
from transforms.flowlogs import FlowLogOptions, FlowLogsToGelf
from transforms.gelf import GelfOptions
from transforms.kinesis import KinesisOptions
from transforms.positions import PositionOptions

NAME = "flowlogs"
DEFAULT_SOURCE = "aws-flowlogs"
OPTIONS = (
    RunOptions,
    AwsOptions,
    KinesisOptions,
    PositionOptions,
    FlowLogOptions,
    EntityOptions,
    GelfOptions,
    DeadLetterOptions,
)


def make_to_gelf(options, stream):
    fmt = options.view_as(FlowLogOptions).flow_log_format
    source = options.view_as(GelfOptions).gelf_source or DEFAULT_SOURCE
    lookup_config = lookup_config_from_options(options, aws_config_from_options(options))
    lookups = EntityLookups(lookup_config) if lookup_config is not None else None
    return FlowLogsToGelf(fmt, source, stream, lookups)


def run(argv: list[str]) -> int:
    from pipelines.demo import run_demo

    return run_kinesis_pipeline(
        NAME,
        "VPC Flow Logs from Kinesis (CloudWatch Logs subscription) to Graylog GELF.",
        argv,
        OPTIONS,
        make_to_gelf,
        demo=run_demo,
    )


if __name__ == "__main__":
    sys.exit(main_with_errors(run))
