"""What entity enrichment adds to the flow-log transform chain, per event, with 10,000 known IPs.

    .venv/bin/python -m bench.enrichment_overhead [--events 100000] [--repeat 5]

Both sides run the same chain in one process on the same CloudWatch subscription payloads (decode →
parse → GELF build → encode), one with `Enricher.encoded` added for src/dst (and the record's
interface, so the VPC-scoped lookup is the one measured). Runs alternate, and the
figure is the median of each pair's ratio: the extra cost per event as a fraction of the chain's, not an
absolute rate.
About half of the addresses are in the inventory, as in a VPC whose flows mostly stay inside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from pipelines.sample_data import ACCOUNT, subscription_payload
from transforms.cloudwatch import decode_subscription
from transforms.enrichment import Enricher
from transforms.entities import Entity, Inventory
from transforms.flowlogs import (
    DEFAULT_FORMAT,
    address_fields,
    flow_log_gelf,
    parse_flow_log,
    parse_format,
)
from transforms.gelf import encode_message

RESULTS = Path(__file__).resolve().parent / "results"
EVENTS_PER_PAYLOAD = 200  # about what AWS puts in one subscription record


def inventory(addresses: int, seed: int = 3) -> tuple[Inventory, list[tuple[str, str]]]:
    """`addresses` distinct instance IPs over 5 VPCs, a tenth of them also held in a second VPC (the
    same private ranges reused, as estates do), and the (address, interface id) pairs that hold them."""
    rng = random.Random(seed)
    entities, held = [], []
    overlaps = addresses // 10
    for index in range(addresses + overlaps):
        slot = index if index < addresses else rng.randrange(addresses)
        vpc = f"vpc-{(slot + (index >= addresses)) % 5:017x}"
        address = f"10.{slot // 62500}.{(slot // 250) % 250}.{slot % 250 + 1}"
        eni = f"eni-{index:017x}"
        entities.append(
            Entity(
                entity=f"ec2:i-{index:017x}",
                aws_type="EC2",
                name=f"web-{index}",
                description=f"web-{index}",
                vpc_id=vpc,
                account_id=ACCOUNT,
                region="eu-west-1",
                interface_id=eni,
                tags=(("Team", f"team-{index % 7}"),),
                addresses=(address,),
            )
        )
        held.append((address, eni))
    return Inventory(entities), held


def payloads(events: int, held: list[tuple[str, str]], seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for _ in range(events):
        address, eni = rng.choice(held)
        other = (
            rng.choice(held)[0] if rng.random() < 0.5 else f"52.{rng.randrange(256)}.{rng.randrange(256)}.9"
        )
        lines.append(
            f"2 {ACCOUNT} {eni} {address} {other} {rng.randrange(1024, 65535)} 443 6 10 840 "
            f"1700000000 1700000060 ACCEPT OK"
        )
    return [
        subscription_payload(lines[start : start + EVENTS_PER_PAYLOAD], first_id=start)
        for start in range(0, len(lines), EVENTS_PER_PAYLOAD)
    ]


def chain(data: list[bytes], enricher: Enricher | None) -> float:
    """Events per CPU second of decode → parse → (enrich) → build → encode (CPU time, so that other
    processes on a shared machine count less)."""
    fmt = parse_format(DEFAULT_FORMAT)
    addresses = address_fields(fmt)
    events = 0
    started = time.process_time()
    for payload in data:
        batch = decode_subscription(payload)
        for event in batch.events:
            record = parse_flow_log(event.message, fmt)
            message = flow_log_gelf(record, event, batch, "aws-flowlogs", "bench")
            if enricher is None:
                encode_message(message)
            else:
                encode_message(message, enricher.encoded(record, addresses))
            events += 1
    return events / (time.process_time() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enrichment_overhead", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--addresses", type=int, default=10_000)
    args = parser.parse_args(argv)

    built = time.perf_counter()
    known, held = inventory(args.addresses)
    build_seconds = time.perf_counter() - built
    data = payloads(args.events, held)
    enricher = Enricher(known, tag_keys=("Team",))
    plain_rates, enriched_rates = [], []
    for _ in range(args.repeat):
        plain_rates.append(chain(data, None))
        enriched_rates.append(chain(data, enricher))
    plain, enriched = statistics.median(plain_rates), statistics.median(enriched_rates)
    # Each enriched run against the plain run just before it, so that slow phases cancel out.
    overhead = statistics.median(p / e for p, e in zip(plain_rates, enriched_rates, strict=True)) - 1
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "events": args.events,
        "repeat": args.repeat,
        "inventory_addresses": known.size,
        "inventory_build_seconds": round(build_seconds, 3),
        "addresses_enriched_per_event": round(enricher.enriched / (args.events * args.repeat), 3),
        "chain_events_per_second": round(plain),
        "with_enrichment_events_per_second": round(enriched),
        "extra_cost_per_event": round(overhead, 3),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"enrichment-overhead-{datetime.now(UTC):%Y-%m-%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{known.size} addresses in the inventory (built in {build_seconds:.2f} s), {args.events} events × "
        f"{args.repeat}: chain {plain:,.0f} events/s, with enrichment {enriched:,.0f} events/s → "
        f"+{overhead:.1%} per event ({result['addresses_enriched_per_event']} addresses enriched per event). "
        f"Written to {out.relative_to(RESULTS.parent.parent)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
