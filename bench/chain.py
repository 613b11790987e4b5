"""The flow-log transform chain alone (decode → parse → enrich → GELF encode) against the floor loop.

Both run in this process on the same payloads, alternating, on CPU time; the figure is the median of
each pair's ratio. The chain is exactly what the pipeline's DoFns run per Kinesis record
(`decode_subscription`, then `flow_logs_to_gelf` with an `Enricher`), without Beam around it.

Timed runs keep one Kinesis record's messages at a time and count them (`count_chain`, `count_floor`),
as the pipeline sends a record's batch and lets it go: keeping every message of a run alive charges
each side for fresh heap pages instead of its own work (with all 50,000 kept, the chain without
lookups measured slower than with them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from bench.data import FORMATS, estate, flow_log_payloads
from bench.floor import FloorInventory, floor
from bench.report import Figure
from transforms.cloudwatch import decode_subscription
from transforms.enrichment import Enricher
from transforms.entities import Entity, Inventory
from transforms.flowlogs import address_fields, flow_logs_to_gelf, parse_format

TAG_KEYS = ("Team",)


def chain(payloads: list[bytes], flow_log_format: str, enricher: Enricher | None) -> list[bytes]:
    fmt = parse_format(flow_log_format)
    addresses = address_fields(fmt)
    out: list[bytes] = []
    for payload in payloads:
        batch = decode_subscription(payload)
        out.extend(flow_logs_to_gelf(batch, fmt, "aws-flowlogs", "bench", enricher, addresses).payloads)
    return out


def count_chain(payloads: list[bytes], flow_log_format: str, enricher: Enricher | None) -> int:
    """`chain`, one Kinesis record's messages at a time: the number of messages."""
    fmt = parse_format(flow_log_format)
    addresses = address_fields(fmt)
    count = 0
    for payload in payloads:
        batch = decode_subscription(payload)
        count += len(flow_logs_to_gelf(batch, fmt, "aws-flowlogs", "bench", enricher, addresses).payloads)
    return count


def count_floor(payloads: list[bytes], flow_log_format: str, inventory: FloorInventory | None) -> int:
    """`floor`, one Kinesis record's messages at a time: the number of messages."""
    return sum(len(floor([payload], flow_log_format, inventory)) for payload in payloads)


def _cpu_rate(work: Callable[[], int]) -> float:
    started = time.process_time()
    events = work()
    return events / (time.process_time() - started)


def compare(
    payloads: list[bytes], flow_log_format: str, entities: Sequence[Entity], repeat: int
) -> tuple[float, float, float]:
    """(chain events/s, floor events/s, median ratio) with `entities` known."""
    enricher = Enricher(Inventory(entities), TAG_KEYS)
    floor_inventory = FloorInventory(entities, TAG_KEYS)
    chain(payloads, flow_log_format, enricher)  # warm: the enricher's memo fills, as it does in a run
    floor(payloads, flow_log_format, floor_inventory)
    chain_rates, floor_rates = [], []
    for _ in range(repeat):
        chain_rates.append(_cpu_rate(lambda: count_chain(payloads, flow_log_format, enricher)))
        floor_rates.append(_cpu_rate(lambda: count_floor(payloads, flow_log_format, floor_inventory)))
    ratio = statistics.median(c / f for c, f in zip(chain_rates, floor_rates, strict=True))
    return statistics.median(chain_rates), statistics.median(floor_rates), ratio


def measure(events: int = 100_000, repeat: int = 5) -> list[Figure]:
    entities, holders = estate()
    figures = []
    for name, flow_log_format in FORMATS.items():
        payloads = flow_log_payloads(events, holders, flow_log_format)
        chain_rate, floor_rate, ratio = compare(payloads, flow_log_format, entities, repeat)
        figures.append(
            Figure("chain", f"{name} format, floor loop", floor_rate, "events/s (CPU)", note="10,000 IPs")
        )
        figures.append(
            Figure(
                "chain",
                f"{name} format, transform chain",
                chain_rate,
                "events/s (CPU)",
                ratio=ratio,
                baseline="floor",
                goal="≥ 1.0× floor",
                met=ratio >= 1.0,
            )
        )
    return figures
