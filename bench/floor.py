"""The floor: the flow-log work done in the simplest way, with the libraries the pipeline uses
(zlib and the standard json to decode, orjson to encode, ISA-L to compress), to measure the pipeline
against.

Same input (CloudWatch subscription payloads), same output (the GELF JSON the pipeline sends, field
for field, entity fields included when given an inventory): `tests/test_bench.py` checks that both give
equal messages. It validates nothing (no GELF rules, no dead letters, no VPC-scoped lookup beyond the
interface's VPC), which is what makes it a floor.

`floor` stops at the encoded messages (the `chain` section's baseline); `send_floor` goes on as the
DirectRunner runs of the `direct` section do: it reads the same replay files (`bench.records`), compresses
each message and sends it over UDP, without entity lookups, as those runs have none. Run as

    python -m bench.floor --replay_dir DIR --port PORT --flow_log_format FORMAT [--compression gzip]

it is a process of its own, like the pipeline, so that the receiver measuring both shares no GIL with it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import socket
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from isal import isal_zlib

from transforms.protocols import PROTOCOL_NAMES

if TYPE_CHECKING:  # not imported at run time: it brings Beam, which the floor process does not need
    from transforms.entities import Entity

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


def floor(
    payloads: Iterable[bytes], flow_log_format: str, inventory: FloorInventory | None, stream: str = "bench"
) -> list[bytes]:
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
            message["_aws_kinesis_stream"] = stream
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
            out.append(orjson.dumps(message))
    return out


#: The pipeline's defaults: ISA-L at level 1 (transforms.gelf.COMPRESSION_LEVEL), GELF UDP chunks of 1420.
COMPRESSION_LEVEL = 1
CHUNK_SIZE = 1420
_WBITS = {"gzip": 16 + 15, "zlib": 15}
_LENGTH = struct.Struct(">I")


def read_payloads(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as source:
        while header := source.read(_LENGTH.size):
            yield source.read(_LENGTH.unpack(header)[0])


def send_floor(
    paths: Sequence[Path], flow_log_format: str, host: str, port: int, compression: str = "gzip"
) -> int:
    """The replay files' flow logs as GELF over UDP, file by file, batch by batch; returns the count."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    sock.connect((host, port))
    wbits = _WBITS.get(compression)
    sent = 0
    for path in paths:
        for payload in read_payloads(path):
            # "replay": the stream name bench.replay's records carry, so the messages are the pipeline's
            for message in floor([payload], flow_log_format, None, stream="replay"):
                data = message if wbits is None else isal_zlib.compress(message, COMPRESSION_LEVEL, wbits)
                if len(data) > CHUNK_SIZE:  # the bench data never need chunks; the pipeline would chunk
                    raise ValueError(f"a {len(data)}-byte GELF datagram needs chunks: the floor sends none")
                sock.send(data)
                sent += 1
    sock.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--replay_dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--compression", default="gzip", choices=("gzip", "zlib", "none"))
    parser.add_argument("--flow_log_format", required=True, help="as the pipeline's --flow_log_format")
    args = parser.parse_args(argv)
    paths = sorted(args.replay_dir.glob("*.records"))
    if not paths:
        parser.error(f"--replay_dir: no *.records files in {args.replay_dir}")
    print(f"{send_floor(paths, args.flow_log_format, args.host, args.port, args.compression)} messages sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
