"""Deterministic benchmark data: an estate of 10,000 known addresses, flow logs between them and the
Internet as CloudWatch Logs subscription payloads (~200 events a record, as AWS batches them) in the
default format and a custom version-5 format, and CloudTrail log files of ~1,000 records.

The same seed gives the same bytes, so two runs (or two sides of one comparison) read the same input.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.cloudtrail_samples import cloudtrail_log_files
from pipelines.sample_data import ACCOUNT, subscription_payload
from transforms.entities import Entity, Inventory
from transforms.flowlogs import DEFAULT_FORMAT

EVENTS_PER_RECORD = 200
#: A fixed clock for the generated events (2026-11-27T00:00:00Z), so payloads do not depend on the day.
START_MS = 1_795_737_600_000

V5_FORMAT = (
    "${version} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${account-id} ${type} ${srcaddr} "
    "${dstaddr} ${srcport} ${dstport} ${pkt-srcaddr} ${pkt-dstaddr} ${protocol} ${bytes} ${packets} "
    "${start} ${end} ${action} ${tcp-flags} ${log-status} ${region} ${az-id} ${sublocation-type} "
    "${sublocation-id} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${flow-direction} ${traffic-path}"
)
FORMATS = {"default": DEFAULT_FORMAT, "v5": V5_FORMAT}


@dataclass(frozen=True)
class Holder:
    address: str
    interface_id: str
    vpc_id: str
    instance_id: str


def estate(addresses: int = 10_000, seed: int = 3) -> tuple[list[Entity], list[Holder]]:
    """`addresses` distinct instance IPs over 5 VPCs, a tenth of them also held in a second VPC (the
    same private ranges reused, as estates do); the entities and who holds each address."""
    rng = random.Random(seed)
    entities, holders = [], []
    overlaps = addresses // 10
    for index in range(addresses + overlaps):
        slot = index if index < addresses else rng.randrange(addresses)
        vpc = f"vpc-{(slot + (index >= addresses)) % 5:017x}"
        address = f"10.{slot // 62500}.{(slot // 250) % 250}.{slot % 250 + 1}"
        holder = Holder(address, f"eni-{index:017x}", vpc, f"i-{index:017x}")
        entities.append(
            Entity(
                entity=f"ec2:{holder.instance_id}",
                aws_type="EC2",
                name=f"web-{index}",
                description=f"web-{index}",
                vpc_id=vpc,
                subnet_id=f"subnet-{vpc[4:]}",
                account_id=ACCOUNT,
                region="eu-west-1",
                interface_id=holder.interface_id,
                tags=(("Team", f"team-{index % 7}"),),
                addresses=(address,),
            )
        )
        holders.append(holder)
    return entities, holders


def inventory(addresses: int = 10_000) -> tuple[Inventory, list[Holder]]:
    entities, holders = estate(addresses)
    return Inventory(entities), holders


_PROTOCOLS = (6, 6, 6, 6, 6, 6, 6, 17, 17, 1)


def flow_log_fields(events: int, holders: Sequence[Holder], seed: int = 5) -> list[dict[str, str]]:
    """Flow log records (AWS field name → text) from known interfaces; half of them talk to another
    known address, half to the Internet; 1 % NODATA."""
    rng = random.Random(seed)
    records = []
    for index in range(events):
        local = rng.choice(holders)
        start = START_MS // 1000 + index // 1000
        base = {
            "version": "5",
            "account-id": ACCOUNT,
            "interface-id": local.interface_id,
            "vpc-id": local.vpc_id,
            "subnet-id": f"subnet-{local.vpc_id[4:]}",
            "instance-id": local.instance_id,
            "region": "eu-west-1",
            "az-id": "euw1-az1",
            "start": str(start),
            "end": str(start + 60),
        }
        if rng.random() < 0.01:
            records.append(base | {"log-status": "NODATA"})
            continue
        if rng.random() < 0.5:
            remote = rng.choice(holders).address
        else:
            octets = (rng.choice((52, 54, 3, 18)), rng.randrange(256), rng.randrange(256), rng.randrange(255))
            remote = ".".join(map(str, octets))
        inbound = rng.random() < 0.5
        src, dst = (remote, local.address) if inbound else (local.address, remote)
        protocol = rng.choice(_PROTOCOLS)
        packets = rng.randint(1, 400)
        records.append(
            base
            | {
                "type": "IPv4",
                "srcaddr": src,
                "dstaddr": dst,
                "pkt-srcaddr": src,
                "pkt-dstaddr": dst,
                "srcport": str(rng.choice((443, 80, 22, 5432)) if inbound else rng.randint(1024, 65535)),
                "dstport": str(rng.randint(1024, 65535) if inbound else rng.choice((443, 80, 22, 5432))),
                "protocol": str(protocol),
                "packets": str(packets),
                "bytes": str(packets * rng.randint(40, 1500)),
                "action": "REJECT" if rng.random() < 0.15 else "ACCEPT",
                "tcp-flags": str(rng.choice((2, 18, 19, 3))),
                "log-status": "OK",
                "flow-direction": "ingress" if inbound else "egress",
                "traffic-path": "-" if inbound else str(rng.choice((1, 8))),
            }
        )
    return records


def flow_log_lines(
    events: int, holders: Sequence[Holder], flow_log_format: str = DEFAULT_FORMAT, seed: int = 5
) -> list[str]:
    """The records of `flow_log_fields` written in `flow_log_format`."""
    names = [token[2:-1] for token in flow_log_format.split()]
    return [
        " ".join(record.get(name, "-") for name in names) for record in flow_log_fields(events, holders, seed)
    ]


def flow_log_payloads(
    events: int, holders: Sequence[Holder], flow_log_format: str = DEFAULT_FORMAT, seed: int = 5
) -> list[bytes]:
    """`flow_log_lines` as subscription payloads of EVENTS_PER_RECORD events."""
    lines = flow_log_lines(events, holders, flow_log_format, seed)
    return [
        subscription_payload(
            lines[start : start + EVENTS_PER_RECORD], start_ms=START_MS + start, first_id=start
        )
        for start in range(0, len(lines), EVENTS_PER_RECORD)
    ]


def cloudtrail_files(files: int, records_per_file: int = 1000, seed: int = 11) -> list[bytes]:
    """Gzip CloudTrail log files of `records_per_file` records, as CloudTrail writes them to S3."""
    return [
        data for _, data in cloudtrail_log_files(files, records_per_file, seed, start_time=START_MS / 1000)
    ]
