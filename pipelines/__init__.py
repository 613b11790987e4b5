"""Runnable pipelines: `python -m pipelines.flowlogs`, `python -m pipelines.cloudwatch`."""

import logging


def _not_gcp_noise(record: logging.LogRecord) -> bool:
    # Importing apache_beam warns about Google Cloud client libraries this project never uses.
    return not str(record.msg).startswith("apitools not found")


logging.getLogger().addFilter(_not_gcp_noise)
