"""The flow-logs pipeline on the DirectRunner, bounded, reading pre-generated records (`bench.replay`)
and sending GELF over UDP to a counting receiver: its throughput against the floor doing the same work
(`bench.floor.send_floor`: the same files read, the same messages compressed the same way and sent to
the same kind of receiver, no entity lookups on either side), measured in the same invocation; what
each step costs per event on one core; and the pipeline's peak memory at two sizes.

Throughput is taken between the first and the last message received, for the floor as for the
pipeline (the delivering phase: start-up, about 3 s of Beam and Python imports, is reported apart).
Peak RSS is the pipeline process's own high-water mark (VmHWM, sampled every 50 ms until it exits; the
DirectRunner runs in one process).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from bench.chain import chain, count_chain
from bench.data import EVENTS_PER_RECORD, Holder, estate, flow_log_payloads
from bench.floor import floor
from bench.measuring import peak_rss_mib
from bench.records import write_replay_files
from bench.report import Figure
from bench.sink import CountingSink
from transforms.flowlogs import DEFAULT_FORMAT
from transforms.gelf import compress

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


def run_floor(folder: Path, port: int, workdir: Path, compression: str) -> float:
    """Runs the floor (`python -m bench.floor`) on the same files in a process of its own; returns seconds."""
    args = [
        sys.executable,
        "-m",
        "bench.floor",
        f"--replay_dir={folder}",
        f"--port={port}",
        f"--compression={compression}",
        f"--flow_log_format={DEFAULT_FORMAT}",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.perf_counter()
    with open(workdir / "floor.log", "ab") as log:
        status = subprocess.run(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise RuntimeError(f"bench.floor failed ({status}): see {workdir / 'floor.log'}")
    return time.perf_counter() - started


def check_same_messages(payloads: Sequence[bytes]) -> None:
    """The floor must send what the pipeline sends (no lookups on either side), or the ratio means
    nothing; `tests/test_bench.py` checks the same with entity fields."""
    sample = list(payloads[:20])
    ours = [orjson.loads(m) for m in chain(sample, DEFAULT_FORMAT, None)]
    theirs = [orjson.loads(m) for m in floor(sample, DEFAULT_FORMAT, None)]
    if ours != theirs:
        raise RuntimeError("the floor's messages differ from the transform chain's: fix bench/floor.py")


def _received(sink: CountingSink, events: int) -> tuple[float, int]:
    received = sink.wait_for(events, timeout=5)
    return sink.rate(), events - received


def measure_throughput(events: int, workdir: Path) -> list[Figure]:
    """Floor and pipeline on the same replay files, each in its own process, each measured by the same
    counting receiver (first to last arrival): the same work, neither with entity lookups."""
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / f"records-{events}"
    _, holders = estate()
    payloads = prepare(events, folder, holders)
    check_same_messages(payloads)
    figures = []
    for compression in ("gzip", "none"):
        with CountingSink() as sink:
            floor_seconds = run_floor(folder, sink.port, workdir, compression)
            floor_rate, floor_lost = _received(sink, events)
        figures.append(
            Figure(
                "direct",
                f"floor, UDP {compression}",
                floor_rate,
                "events/s",
                note=f"{events:,} events, {events / floor_seconds:,.0f}/s whole run, no lookups"
                + (f", {floor_lost} lost" if floor_lost else ""),
            )
        )
        with CountingSink() as sink:
            seconds, _ = run_pipeline(folder, sink.port, workdir, f"--gelf_compression={compression}")
            rate, lost = _received(sink, events)
        ratio = rate / floor_rate
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
    figures += measure_costs(payloads)
    return figures


def _cpu_microseconds(work: Callable[[], int], repeat: int = 3) -> float:
    """CPU µs per item of this thread alone (the receiver's thread is not counted), median of `repeat`."""
    runs = []
    for _ in range(repeat):
        started = time.thread_time()
        count = work()
        runs.append((time.thread_time() - started) / count * 1e6)
    return statistics.median(runs)


def measure_costs(payloads: Sequence[bytes], events: int = 50_000) -> list[Figure]:
    """What one event costs on one core, step by step: the transform chain without lookups, the
    pipeline's gzip (ISA-L, level 1) against zlib's default level 6, and the UDP `send` to a receiver."""
    sample = list(payloads[: max(1, events // EVENTS_PER_RECORD)])
    messages = chain(sample, DEFAULT_FORMAT, None)
    count = len(messages)
    chain_us = _cpu_microseconds(lambda: count_chain(sample, DEFAULT_FORMAT, None))
    isal_us = _cpu_microseconds(lambda: sum(1 for m in messages if compress(m, "gzip")))
    zlib_us = _cpu_microseconds(lambda: sum(1 for m in messages if zlib.compress(m, 6, 16 + 15)))
    compressed = [compress(m, "gzip") for m in messages]
    with CountingSink() as sink, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", sink.port))
        send_us = _cpu_microseconds(lambda: sum(1 for data in compressed if sock.send(data)))
        sink.wait_for(count, timeout=2)
    total = chain_us + isal_us + send_us
    note = f"CPU of one thread, {count:,} messages, median of 3"
    return [
        Figure("direct", "per event: transform chain, no lookups", chain_us, "µs", note=note),
        Figure("direct", "per message: gzip by zlib, level 6", zlib_us, "µs", note=note),
        Figure(
            "direct",
            "per message: gzip by ISA-L, level 1 (the pipeline's)",
            isal_us,
            "µs",
            ratio=isal_us / zlib_us,
            baseline="zlib",
            note=note,
        ),
        Figure("direct", "per message: UDP send", send_us, "µs", note=note),
        Figure(
            "direct",
            "one core's ceiling: 1 / (chain + gzip + send)",
            1e6 / total,
            "events/s",
            note=f"{total:.1f} µs per event; Beam, reading and the receiver not counted",
        ),
    ]


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
