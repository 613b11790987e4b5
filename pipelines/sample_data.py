"""Synthetic but realistic VPC flow log lines, and a way to deliver them like AWS does.

Used by the demo, the end-to-end tests and the benchmarks: the lines go through CloudWatch Logs
`PutLogEvents` into a log group whose subscription filter writes to Kinesis, so the stream holds the
real subscription format (gzip JSON DATA_MESSAGE records).
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Iterator, Sequence

ACCOUNT = "123456789012"
V2_FIELDS = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end "
    "action log-status"
).split()

_PROTOCOLS = ((6, 0.70), (17, 0.24), (1, 0.05), (47, 0.01))
_SERVICE_PORTS = (443, 80, 22, 3306, 5432, 53, 123, 8080, 6379, 9200)


def flow_log_records(count: int, seed: int = 7, end_time: float | None = None) -> Iterator[dict[str, str]]:
    """`count` flow log records as AWS field name → text, about 1 % of them NODATA."""
    rng = random.Random(seed)
    end_time = int(end_time or time.time())
    interfaces = [f"eni-{rng.getrandbits(68):017x}" for _ in range(8)]
    protocols, weights = zip(*_PROTOCOLS, strict=True)
    for i in range(count):
        eni = interfaces[i % len(interfaces)]
        end = end_time - rng.randint(0, 600)
        start = end - rng.randint(1, 60)
        if rng.random() < 0.01:
            yield dict.fromkeys(V2_FIELDS, "-") | {
                "version": "2",
                "account-id": ACCOUNT,
                "interface-id": eni,
                "start": str(start),
                "end": str(end),
                "log-status": "NODATA",
            }
            continue
        protocol = rng.choices(protocols, weights)[0]
        inbound = rng.random() < 0.5
        local = f"10.0.{rng.randint(0, 3)}.{rng.randint(4, 250)}"
        if rng.random() < 0.6:
            remote = f"10.0.{rng.randint(0, 3)}.{rng.randint(4, 250)}"
        else:
            first = rng.choice((52, 54, 3, 18, 203))
            remote = f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        service = rng.choice(_SERVICE_PORTS)
        ephemeral = rng.randint(1024, 65535)
        if protocol == 1:
            service = ephemeral = 0
        src, dst, sport, dport = (
            (remote, local, ephemeral, service) if inbound else (local, remote, ephemeral, service)
        )
        packets = rng.randint(1, 400)
        yield {
            "version": "2",
            "account-id": ACCOUNT,
            "interface-id": eni,
            "srcaddr": src,
            "dstaddr": dst,
            "srcport": str(sport),
            "dstport": str(dport),
            "protocol": str(protocol),
            "packets": str(packets),
            "bytes": str(packets * rng.randint(40, 1500)),
            "start": str(start),
            "end": str(end),
            "action": "REJECT" if rng.random() < 0.15 else "ACCEPT",
            "log-status": "OK",
        }


def flow_log_lines(count: int, seed: int = 7, fields: Sequence[str] = V2_FIELDS) -> list[str]:
    """Lines in the format given by `fields` (AWS names); fields a record lacks are written `-`."""
    return [" ".join(r.get(f, "-") for f in fields) for r in flow_log_records(count, seed)]


# What PutLogEvents accepts (AWS and moto alike): events from the last 14 days and at most 2 hours ahead.
# Older or later events are dropped with only a note in the answer (`rejectedLogEventsInfo`).
CLOUDWATCH_MAX_AGE_MS = 14 * 86400 * 1000
CLOUDWATCH_MAX_AHEAD_MS = 2 * 3600 * 1000


def cloudwatch_start_ms(age_seconds: float = 3600) -> int:
    """A first event time `age_seconds` before now, in milliseconds: inside the window PutLogEvents takes."""
    return int((time.time() - age_seconds) * 1000)


def check_cloudwatch_window(first_ms: int, last_ms: int, now_ms: int | None = None) -> None:
    """Refuses event times CloudWatch Logs would drop, instead of a test that later finds 0 events."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    oldest, latest = now_ms - CLOUDWATCH_MAX_AGE_MS, now_ms + CLOUDWATCH_MAX_AHEAD_MS
    if first_ms < oldest or last_ms > latest:
        raise ValueError(
            f"log event times {first_ms}..{last_ms} ms fall outside what CloudWatch Logs accepts now "
            f"({oldest}..{latest} ms: the last 14 days to 2 hours ahead); it would drop them. "
            "Derive them from the clock, e.g. start_ms=cloudwatch_start_ms()."
        )


def deliver_through_cloudwatch(
    logs_client,
    log_group: str,
    lines: Sequence[str],
    batch_size: int = 250,
    log_stream: str = "eni-all",
    start_ms: int | None = None,
) -> int:
    """Puts the lines as log events in `batch_size` calls; returns the number of calls made.

    With a subscription filter on the group, each call becomes one Kinesis record (moto and AWS). Event
    times run from `start_ms` (default: now) one millisecond apart; times CloudWatch Logs would drop, and
    any event it reports as rejected, raise ValueError.
    """
    now_ms = start_ms if start_ms is not None else int(time.time() * 1000)
    check_cloudwatch_window(now_ms, now_ms + max(len(lines) - 1, 0))
    try:
        logs_client.create_log_stream(logGroupName=log_group, logStreamName=log_stream)
    except logs_client.exceptions.ResourceAlreadyExistsException:
        pass
    calls = 0
    for offset in range(0, len(lines), batch_size):
        batch = lines[offset : offset + batch_size]
        events = [{"timestamp": now_ms + offset + i, "message": line} for i, line in enumerate(batch)]
        answer = logs_client.put_log_events(
            logGroupName=log_group, logStreamName=log_stream, logEvents=events
        )
        if answer.get("rejectedLogEventsInfo"):
            raise ValueError(
                f"CloudWatch Logs rejected events of the batch at line {offset}: "
                f"{answer['rejectedLogEventsInfo']} (too old, too new or expired)"
            )
        calls += 1
    return calls


def create_flow_log_stream(kinesis_client, logs_client, stream: str, log_group: str, shards: int = 2) -> str:
    """A Kinesis stream fed by a log group's subscription filter, as AWS users set it up."""
    kinesis_client.create_stream(StreamName=stream, ShardCount=shards)
    kinesis_client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
    arn = kinesis_client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    logs_client.create_log_group(logGroupName=log_group)
    logs_client.put_subscription_filter(
        logGroupName=log_group,
        filterName="to-kinesis",
        filterPattern="",
        destinationArn=arn,
        roleArn=f"arn:aws:iam::{ACCOUNT}:role/CWLtoKinesisRole",
    )
    return arn


def subscription_payload(
    lines: Sequence[str],
    log_group: str = "/vpc/flowlogs",
    log_stream: str = "eni-all",
    start_ms: int | None = None,
    first_id: int = 0,
) -> bytes:
    """A CloudWatch Logs subscription DATA_MESSAGE as AWS writes it to Kinesis (gzip JSON, string ids)."""
    start_ms = start_ms or int(time.time() * 1000)
    message = {
        "messageType": "DATA_MESSAGE",
        "owner": ACCOUNT,
        "logGroup": log_group,
        "logStream": log_stream,
        "subscriptionFilters": ["to-kinesis"],
        "logEvents": [
            {"id": f"{first_id + i:056d}", "timestamp": start_ms + i, "message": line}
            for i, line in enumerate(lines)
        ],
    }
    return gzip.compress(json.dumps(message).encode())
