"""What entity enrichment adds to the flow-log transform chain, per event, with 10,000 known IPs.

    .venv/bin/python -m bench.enrichment_overhead [--events 100000] [--repeat 5]

Both sides run the same chain in one process on the same CloudWatch subscription payloads (decode →
parse → GELF build → encode), one with `Enricher.encoded` added for src/dst (and the record's
interface, so the VPC-scoped lookup is the one measured), one Kinesis record's messages at a time, as
the pipeline holds them (`bench.chain.count_chain`: keeping all of a run's messages measured the chain
without lookups slower than with them). Runs alternate, and the figure is the median of each pair's
ratio: the extra cost per event as a fraction of the chain's, not an absolute rate.
About half of the addresses are in the inventory, as in a VPC whose flows mostly stay inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.chain import count_chain
from bench.data import flow_log_payloads, inventory
from bench.report import machine
from transforms.enrichment import Enricher
from transforms.flowlogs import DEFAULT_FORMAT

RESULTS = Path(__file__).resolve().parent / "results"


def rate(data: list[bytes], enricher: Enricher | None) -> float:
    """Events per CPU second of decode → parse → (enrich) → build → encode (CPU time, so that other
    processes on a shared machine count less)."""
    started = time.process_time()
    events = count_chain(data, DEFAULT_FORMAT, enricher)
    return events / (time.process_time() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enrichment_overhead", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--addresses", type=int, default=10_000)
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()  # the machine is shared: the result says how busy it was

    built = time.perf_counter()
    known, holders = inventory(args.addresses)
    build_seconds = time.perf_counter() - built
    data = flow_log_payloads(args.events, holders)
    enricher = Enricher(known, tag_keys=("Team",))
    plain_rates, enriched_rates = [], []
    for _ in range(args.repeat):
        plain_rates.append(rate(data, None))
        enriched_rates.append(rate(data, enricher))
    plain, enriched = statistics.median(plain_rates), statistics.median(enriched_rates)
    # Each enriched run against the plain run just before it, so that slow phases cancel out.
    overhead = statistics.median(p / e for p, e in zip(plain_rates, enriched_rates, strict=True)) - 1
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.enrichment_overhead "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average_at_start": [round(load, 2) for load in load_at_start],
        "machine": machine(),
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
