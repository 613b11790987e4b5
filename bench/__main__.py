"""`make bench`: every benchmark, each figure a ratio to a baseline measured in the same run.

    .venv/bin/python -m bench [--only chain,direct,...] [--quick]

Sections: chain (transform chain vs the floor loop), direct (DirectRunner pipeline from pre-generated
records vs the floor sending the same messages, and per-event costs), memory (peak RSS at 100k and 1M
events), cloudtrail (records/s from pre-generated files), moto (end to end from moto's Kinesis,
reported), flink (parallelism 1 and 2 on the local cluster, and 2 with Beam's default of one SDK
worker), latency (streaming at 1,000 events/s). Prints a table and writes bench/results/<date>.json.
`--quick` runs every section at a tenth of its size or less, to check that it works, not to measure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import chain, cloudtrail_path, direct, flink_scaling, latency, moto_e2e
from bench.report import RESULTS, Figure, table, write

#: name -> (full size, quick size)
SIZES = {
    "chain": (100_000, 4_000),
    "direct": (200_000, 10_000),
    "memory": ((100_000, 1_000_000), (2_000, 20_000)),
    "cloudtrail": (20, 2),
    "moto": (50_000, 2_000),
    "flink": (400_000, 20_000),
    "latency": (30, 5),
}


def sections(quick: bool, workdir: Path) -> dict[str, Callable[[], list[Figure]]]:
    size = {name: sizes[1] if quick else sizes[0] for name, sizes in SIZES.items()}
    floor_rate: dict[str, float] = {}

    def run_direct() -> list[Figure]:
        figures = direct.measure_throughput(size["direct"], workdir / "direct")
        # moto's run sends gzip over UDP without lookups: the floor doing that work is its baseline.
        floor_rate["wall"] = next(f.value for f in figures if f.name == "floor, UDP gzip")
        return figures

    return {
        "chain": lambda: chain.measure(size["chain"], repeat=2 if quick else 5),
        "direct": run_direct,
        "memory": lambda: direct.measure_memory(*size["memory"], workdir / "direct"),
        "cloudtrail": lambda: cloudtrail_path.measure(size["cloudtrail"], repeat=1 if quick else 3),
        "moto": lambda: moto_e2e.measure(size["moto"], workdir / "moto", floor_rate.get("wall")),
        "flink": lambda: flink_scaling.measure(size["flink"], workdir=workdir / "flink"),
        "latency": lambda: latency.measure(size["latency"], workdir=workdir / "latency"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SIZES), help=f"comma-separated sections of {list(SIZES)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the benchmarks run")
    parser.add_argument("--no-write", action="store_true", help=f"do not write a result to {RESULTS}")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SIZES)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {list(SIZES)}")
    figures: list[Figure] = []
    load_at_start = [
        round(load, 2) for load in os.getloadavg()
    ]  # the machine is shared: the result says how busy it was
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        available = sections(args.quick, Path(tmp))
        for name in chosen:
            print(f"== {name}", flush=True)
            found = available[name]()
            figures.extend(found)
            print(table(found), flush=True)
    print("\n" + table(figures))
    if not args.no_write:
        path = write(
            figures,
            {"quick": args.quick, "sections": chosen, "sizes": SIZES, "load_average_at_start": load_at_start},
        )
        print(f"\nWritten to {path.relative_to(RESULTS.parent.parent)}")
    unmet = [f"{f.section}: {f.name}" for f in figures if f.met is False]
    if unmet:
        print("Goals not met: " + "; ".join(unmet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
