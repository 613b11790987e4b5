"""The flow-logs pipeline on the DirectRunner, bounded, reading pre-generated records (`bench.replay`)
and sending GELF over UDP to a counting receiver: its throughput against the floor loop measured in
the same invocation, and its peak memory at two sizes.

Throughput is taken between the first and the last message received (the delivering phase: start-up,
about 3 s of Beam and Python imports, is reported apart). Peak RSS is the pipeline process's own
high-water mark (VmHWM, sampled every 50 ms until it exits; the DirectRunner runs in one process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.data import Holder, estate, flow_log_payloads
from bench.floor import FloorInventory, floor
from bench.measuring import peak_rss_mib
from bench.records import write_replay_files
from bench.report import Figure
from bench.sink import CountingSink
from transforms.entities import Entity
from transforms.flowlogs import DEFAULT_FORMAT

REPO = Path(__file__).resolve().parent.parent
FILES = 4
STRETCH_EVENTS_PER_SECOND = 80_000


def prepare(events: int, folder: Path, holders: Sequence[Holder]) -> list[bytes]:
    """Writes `events` default-format events into FILES replay files; returns the payloads."""
    payloads = flow_log_payloads(events, holders, DEFAULT_FORMAT)
    write_replay_files(payloads, folder, FILES)
    return payloads


def run_pipeline(folder: Path, port: int, workdir: Path, *extra: str) -> tuple[float, float]:
    """Runs bench.replay on the DirectRunner; returns (seconds, peak RSS in MiB)."""
    args = [
        sys.executable,
        "-m",
        "bench.replay",
        "--runner=DirectRunner",
        f"--replay_dir={folder}",
        "--region=us-east-1",
        "--gelf_host=127.0.0.1",
        f"--gelf_port={port}",
        "--gelf_protocol=udp",
        f"--dead_letter_path={workdir / 'dead-letters'}",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(workdir / "pipeline.log", "ab")  # noqa: SIM115 - closed below, after the process
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    try:
        while process.poll() is None:
            peak = max(peak, peak_rss_mib(process.pid) or 0)
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"bench.replay failed ({process.returncode}): see {workdir / 'pipeline.log'}")
    return seconds, peak


def _floor_rate(payloads: list[bytes], entities: Sequence[Entity]) -> float:
    inventory = FloorInventory(entities)
    started = time.perf_counter()
    count = len(floor(payloads, DEFAULT_FORMAT, inventory))
    return count / (time.perf_counter() - started)


def measure_throughput(events: int, workdir: Path) -> list[Figure]:
    folder = workdir / f"records-{events}"
    entities, holders = estate()
    payloads = prepare(events, folder, holders)
    floor_rate = _floor_rate(payloads, entities)
    figures = [Figure("direct", "floor loop (wall clock)", floor_rate, "events/s", note="with enrichment")]
    for compression in ("gzip", "none"):
        with CountingSink() as sink:
            seconds, _ = run_pipeline(folder, sink.port, workdir, f"--gelf_compression={compression}")
            received = sink.wait_for(events, timeout=5)
            rate = sink.rate()
        ratio = rate / floor_rate
        lost = events - received
        figures.append(
            Figure(
                "direct",
                f"DirectRunner pipeline, UDP {compression}",
                rate,
                "events/s",
                ratio=ratio,
                baseline="floor",
                goal="≥ 0.5× floor" + ("; stretch ≥ 80,000/s" if compression == "gzip" else ""),
                met=ratio >= 0.5,
                note=f"{events:,} events, {events / seconds:,.0f}/s whole run, no lookups"
                + (f", {lost} lost" if lost else ""),
            )
        )
    return figures


def measure_memory(small: int, large: int, workdir: Path) -> list[Figure]:
    peaks = {}
    _, holders = estate()
    for events in (small, large):
        folder = workdir / f"records-{events}"
        if not folder.exists():
            prepare(events, folder, holders)
        with CountingSink() as sink:
            _, peaks[events] = run_pipeline(folder, sink.port, workdir, "--gelf_compression=none")
            sink.wait_for(events, timeout=5)
    ratio = peaks[large] / peaks[small]
    return [
        Figure("memory", f"peak RSS at {small:,} events", peaks[small], "MiB"),
        Figure(
            "memory",
            f"peak RSS at {large:,} events",
            peaks[large],
            "MiB",
            ratio=ratio,
            baseline=f"{small:,} events",
            goal="≤ 1.2×",
            met=ratio <= 1.2,
        ),
    ]
