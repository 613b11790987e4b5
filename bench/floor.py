"""The floor: the flow-log work done in the simplest way with the standard library, to measure the
transform chain against.

Same input (CloudWatch subscription payloads), same output (the GELF JSON the pipeline sends, field
for field, entity fields included): `tests/test_bench.py` checks that both give equal messages. What
it leaves out is what a real pipeline cannot: nothing. It validates nothing either (no GELF rules, no
dead letters, no VPC-scoped lookup beyond the interface's VPC), which is what makes it a floor.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable

from transforms.entities import Entity
from transforms.protocols import PROTOCOL_NAMES

INTEGERS = {
    "version", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end", "tcp-flags",
    "traffic-path",
}  # fmt: skip
RENAMED = {
    "srcaddr": "src_addr", "dstaddr": "dst_addr", "srcport": "src_port", "dstport": "dst_port",
    "protocol": "protocol_number", "pkt-srcaddr": "pkt_src_addr", "pkt-dstaddr": "pkt_dst_addr",
}  # fmt: skip
ADDRESSES = ("src_addr", "dst_addr", "pkt_src_addr", "pkt_dst_addr")


class FloorInventory:
    """Address → holders, and interface → VPC, in plain dicts."""

    def __init__(self, entities: Iterable[Entity], tag_keys: tuple[str, ...] = ("Team",)):
        self.holders: dict[str, list[tuple[str, dict]]] = {}
        self.vpc_of: dict[str, str] = {}
        for entity in sorted(entities, key=lambda e: (e.account_id, e.region, e.vpc_id, e.interface_id)):
            tags = dict(entity.tags)
            fields = {
                "entity": entity.entity,
                "entity_description": entity.description,
                "entity_aws_type": entity.aws_type,
                "entity_name": entity.name,
                "entity_vpc_id": entity.vpc_id,
                "entity_account_id": entity.account_id,
            }
            fields.update({f"entity_tag_{key}": tags[key] for key in tag_keys if key in tags})
            for address in entity.addresses:
                self.holders.setdefault(address, []).append((entity.vpc_id, fields))
            self.vpc_of[entity.interface_id] = entity.vpc_id

    def find(self, address: str, interface_id: str) -> tuple[dict, bool] | None:
        holders = self.holders.get(address)
        if not holders:
            return None
        if len(holders) == 1:
            return holders[0][1], False
        local = [fields for vpc, fields in holders if vpc == self.vpc_of.get(interface_id)]
        if len(local) == 1:
            return local[0], False
        return (local or [fields for _, fields in holders])[0], True


def floor(payloads: Iterable[bytes], flow_log_format: str, inventory: FloorInventory | None) -> list[bytes]:
    names = [token[2:-1] for token in flow_log_format.split()]
    out = []
    for payload in payloads:
        batch = json.loads(gzip.decompress(payload))
        for event in batch["logEvents"]:
            record = {}
            for name, value in zip(names, event["message"].split(), strict=False):
                if value != "-":
                    key = RENAMED.get(name, name.replace("-", "_"))
                    record[key] = int(value) if name in INTEGERS else value
            if "protocol_number" in record:
                record["protocol"] = PROTOCOL_NAMES.get(record["protocol_number"], "UNKNOWN")
            if "start" in record and "end" in record:
                record["capture_window_duration_seconds"] = record["end"] - record["start"]
            if record.get("log_status") in ("NODATA", "SKIPDATA"):
                short = f"{record['interface_id']} {record['log_status']}"
            else:
                short = (
                    f"{record['interface_id']} {record['action']} {record['protocol']} "
                    f"{record['src_addr']}:{record['src_port']} -> {record['dst_addr']}:{record['dst_port']}"
                )
            message = {
                "version": "1.1",
                "host": "aws-flowlogs",
                "short_message": short,
                "timestamp": event["timestamp"] / 1000,
            }
            for key, value in record.items():
                message["_" + key] = value
            message["_aws_log_group"] = batch["logGroup"]
            message["_aws_log_stream"] = batch["logStream"]
            message["_aws_source"] = "true"
            message["_aws_kinesis_stream"] = "bench"
            message["_aws_owner"] = batch["owner"]
            if inventory is not None:
                for field in ADDRESSES:
                    found = inventory.find(record.get(field), record.get("interface_id"))
                    if found:
                        fields, ambiguous = found
                        for key, value in fields.items():
                            message[f"_{field}_{key}"] = value
                        if ambiguous:
                            message[f"_{field}_entity_ambiguous"] = "true"
            out.append(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode())
    return out
