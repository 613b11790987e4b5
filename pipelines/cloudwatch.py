"""Raw CloudWatch Logs events of any log group, from a Kinesis stream to Graylog over GELF.

    python -m pipelines.cloudwatch --runner=DirectRunner --stream_name=S --region=R \
        --gelf_host=graylog --gelf_port=12201 [--parse_json]
"""

from __future__ import annotations

import sys

from pipelines.common import RunOptions, main_with_errors, run_kinesis_pipeline
from transforms.aws import AwsOptions
from transforms.deadletter import DeadLetterOptions
from transforms.gelf import GelfOptions
from transforms.kinesis import KinesisOptions
from transforms.positions import PositionOptions
from transforms.rawlogs import RawLogOptions, RawLogsToGelf

NAME = "cloudwatch"
DEFAULT_SOURCE = "aws-raw-logs"
OPTIONS = (
    RunOptions,
    AwsOptions,
    KinesisOptions,
    PositionOptions,
    RawLogOptions,
    GelfOptions,
    DeadLetterOptions,
)


def make_to_gelf(options, stream):
    source = options.view_as(GelfOptions).gelf_source or DEFAULT_SOURCE
    return RawLogsToGelf(source, stream, options.view_as(RawLogOptions).parse_json)


def run(argv: list[str]) -> int:
    return run_kinesis_pipeline(
        NAME,
        "Raw CloudWatch Logs events (any log group) from Kinesis to Graylog GELF.",
        argv,
        OPTIONS,
        make_to_gelf,
    )


if __name__ == "__main__":
    sys.exit(main_with_errors(run))
