"""The CloudTrail path on pre-generated log files: records/s from gzip file to GELF bytes, as the S3
reader does it (streamed record by record, every CloudTrail field, the whole record as full_message),
against a baseline that only decompresses, loads and re-encodes each file's records with the standard
library: the least any reader must do."""

from __future__ import annotations

import gzip
import io
import json
import statistics
import time

from bench.data import cloudtrail_files
from bench.report import Figure
from transforms.gelf import encode_message
from transforms.s3_notifications import S3Object
from transforms.sqs_s3 import CloudTrailFormat


def reader(files: list[bytes]) -> int:
    trail = CloudTrailFormat()
    obj = S3Object("bench-trail", "AWSLogs/123456789012/CloudTrail/eu-west-1/2026/11/27/x.json.gz")
    count = 0
    for data in files:
        for record in trail.records(io.BytesIO(data)):
            encode_message(trail.to_gelf(record, obj))
            count += 1
    return count


def baseline(files: list[bytes]) -> int:
    count = 0
    for data in files:
        for record in json.loads(gzip.decompress(data))["Records"]:
            json.dumps(record).encode()
            count += 1
    return count


def measure(files: int = 20, records_per_file: int = 1000, repeat: int = 3) -> list[Figure]:
    data = cloudtrail_files(files, records_per_file)
    reader_rates, baseline_rates = [], []
    for _ in range(repeat):
        for work, rates in ((reader, reader_rates), (baseline, baseline_rates)):
            started = time.process_time()
            count = work(data)
            rates.append(count / (time.process_time() - started))
    ratio = statistics.median(r / b for r, b in zip(reader_rates, baseline_rates, strict=True))
    return [
        Figure("cloudtrail", "load + re-encode", statistics.median(baseline_rates), "records/s (CPU)"),
        Figure(
            "cloudtrail",
            f"files of {records_per_file:,} records to GELF",
            statistics.median(reader_rates),
            "records/s (CPU)",
            ratio=ratio,
            baseline="baseline",
        ),
    ]
